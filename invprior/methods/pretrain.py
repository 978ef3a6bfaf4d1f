"""Supervised pretraining of a generator on synthetic pairs (the first half of Educated DIP).

Minimises ``mean ||G_theta(A^+ y_i) - x_i||^2`` over ``SyntheticPairs``
with Adam under a one-cycle or cosine learning-rate schedule, reports the validation PSNR on held-out
pairs after every epoch (next to the PSNR of the input ``A^+ y`` itself), checkpoints every epoch
atomically and resumes from the checkpoint (bit-identically on the CPU: the random state of dropout,
if any, is seeded and checkpointed too).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from invprior import registry
from invprior.core.interfaces import Generator
from invprior.data.synthetic import SyntheticPairs, operator_signature
from invprior.errors import ConfigError
from invprior.io import content_hash, load_torch_state, save_torch_state
from invprior.methods.base import seeded_global_rng
from invprior.methods.pretrained import Pretrained
from invprior.metrics import psnr
from invprior.threads import follow_load
from invprior.validation import choice, positive_int, real

SCHEDULES = ("onecycle", "cosine", "constant")
AMP = ("auto", "on", "off")


def native_cpu_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX), so autocast pays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """The reduced precision autocast uses for ``amp`` on ``device``, ``None`` for float32 throughout.

    ``"auto"``: bfloat16 on GPUs that have it (float16 on older ones) and on CPUs with native bfloat16.
    """
    if amp == "off" or (amp == "auto" and device.type not in ("cuda", "cpu")):
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "auto" and not (device.type == "cpu" and native_cpu_bfloat16()):
        return None
    return torch.bfloat16


def _autocast(device: torch.device, amp: str) -> tuple[Any, torch.amp.GradScaler | None]:
    """The autocast context and gradient scaler (float16 only) for ``amp`` on ``device``."""
    dtype = autocast_dtype(device, amp)
    if dtype is None:
        return contextlib.nullcontext, None
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def _schedule(optimizer: torch.optim.Optimizer, kind: str, lr: float, total: int):
    if kind == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


@torch.no_grad()
def validation_psnr(generator: Generator, validation: SyntheticPairs, batch_size: int = 32,
                    device: torch.device | str = "cpu") -> tuple[float, float]:
    """Mean PSNR of ``G(A^+ y)`` and of the input ``A^+ y`` itself over the held-out pairs."""
    network_values, input_values = [], []
    was_training = generator.training
    generator.eval()
    dtype = next(generator.parameters()).dtype
    for start in range(0, len(validation), batch_size):
        inputs, targets = validation.batch(range(start, min(start + batch_size, len(validation))))
        inputs, targets = inputs.to(device=device, dtype=dtype), targets.to(device=device, dtype=dtype)
        network_values.append(psnr(generator(inputs), targets))
        input_values.append(psnr(inputs, targets))
    generator.train(was_training)
    return float(torch.cat(network_values).mean()), float(torch.cat(input_values).mean())


def pretrain(training: SyntheticPairs, validation: SyntheticPairs, generator: str = "unet",
             generator_params: dict[str, Any] | None = None, *, epochs: int = 20, batch_size: int = 16,
             lr: float = 1e-3, schedule: str = "onecycle", weight_decay: float = 0.0, amp: str = "auto",
             device: torch.device | str = "cpu", seed: int = 0, out: str | Path | None = None,
             resume: bool = True, progress: bool = True) -> Pretrained:
    """Train ``generator`` (registry name and parameters; its input is set to the pairs' ``input``)
    to map ``A^+ y`` to ``x``. With ``out`` the model is written there (atomically) and a checkpoint
    ``<out>.partial`` after every epoch, both checksummed state files; with ``resume`` a matching checkpoint is
    continued, and an empty, truncated, damaged or foreign one is refused (``StateFileError``).
    ``amp``: mixed precision (``"auto"``: where the device computes in reduced precision natively, see
    ``autocast_dtype``). Returns the ``Pretrained`` model.
    """
    if not isinstance(training, SyntheticPairs) or not isinstance(validation, SyntheticPairs):
        raise ConfigError("pretrain: training and validation must be SyntheticPairs")
    if training.metadata["operator"] != validation.metadata["operator"] or training.input != validation.input:
        raise ConfigError("pretrain: training and validation pairs must come from the same operator and input")
    if training.seed == validation.seed:
        raise ConfigError("pretrain: validation pairs must be held out (use a different seed than training)")
    epochs = positive_int(epochs, "pretrain: epochs")
    batch_size = positive_int(batch_size, "pretrain: batch_size")
    lr = real(lr, "pretrain: lr", minimum=0.0, strict=True)
    weight_decay = real(weight_decay, "pretrain: weight_decay", minimum=0.0)
    choice(schedule, SCHEDULES, "pretrain: schedule")
    choice(amp, AMP, "pretrain: amp")
    params = dict(generator_params or {})
    if params.get("input", training.input) != training.input:
        raise ConfigError(f"pretrain: generator input {params['input']!r} differs from the pairs' input "
                          f"{training.input!r}")
    params["input"] = training.input
    try:
        factory = registry.load("generators", generator)
    except (KeyError, ImportError) as exc:
        raise ConfigError(f"pretrain: {exc}") from None
    accepted = inspect.signature(factory).parameters
    if "out_channels" in accepted:  # saved with the model, so loading rebuilds the same network
        params.setdefault("out_channels", training.channels)
    device = torch.device(device)
    with seeded_global_rng(seed, device):
        try:
            network: Generator = factory(**params)
        except TypeError as exc:
            raise ConfigError(f"pretrain: cannot build generator '{generator}' with {params}: {exc}") from None
    network = network.to(device=device, dtype=training.dtype).train()
    steps_per_epoch = math.ceil(len(training) / batch_size)
    optimizer = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = _schedule(optimizer, schedule, lr, epochs * steps_per_epoch)
    autocast, scaler = _autocast(device, amp)
    settings = {"generator": generator, "generator_params": params, "epochs": epochs, "batch_size": batch_size,
                "lr": lr, "schedule": schedule, "weight_decay": weight_decay, "seed": seed, "amp": amp}
    precision = str(autocast_dtype(device, amp) or training.dtype).removeprefix("torch.")
    identity = {"settings": settings, "training": training.metadata, "validation": validation.metadata,
                "device": device.type, "precision": precision}
    fingerprint = content_hash(identity, digits=64)
    history: dict[str, list[float]] = {"epoch": [], "train_loss": [], "val_psnr": [], "val_input_psnr": [],
                                       "seconds": []}
    checkpoint = None if out is None else Path(f"{out}.partial")
    first = 0
    if checkpoint is not None and resume and checkpoint.exists():
        state = load_torch_state(checkpoint, "pretrain_checkpoint",
                                 "Delete it to pretrain from the first epoch, or pass resume=False")
        if state.get("fingerprint") != fingerprint:
            raise ConfigError(f"pretrain: checkpoint {checkpoint} belongs to other settings or data; delete it")
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history, first = state["history"], state["epoch"] + 1
    with seeded_global_rng(seed + 1, device):  # dropout draws from a seeded, checkpointed stream
        if first > 0:
            torch.set_rng_state(state["torch_rng"])
            if device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], device)
        _train(network, optimizer, scheduler, autocast, scaler, training, validation, history, first, epochs,
               batch_size, seed, device, checkpoint, fingerprint, progress)
    network.eval()
    metadata = {**training.metadata, "validation": validation.metadata, "settings": settings, "precision": precision,
                "signature": operator_signature(training.operator, training.input)}
    model = Pretrained(network, generator, params, metadata, history)
    if out is not None:
        model.save(out)
        assert checkpoint is not None  # set whenever out is
        checkpoint.unlink(missing_ok=True)
    return model


def _train(network, optimizer, scheduler, autocast, scaler, training: SyntheticPairs, validation: SyntheticPairs,
           history: dict[str, list[float]], first: int, epochs: int, batch_size: int, seed: int,
           device: torch.device, checkpoint: Path | None, fingerprint: str, progress: bool) -> None:
    """Epochs ``first .. epochs - 1`` of ``pretrain``, each ending with validation and a checkpoint."""
    steps_per_epoch = math.ceil(len(training) / batch_size)
    bar = tqdm(total=epochs * steps_per_epoch, initial=first * steps_per_epoch, desc="pretrain",
               disable=not progress, leave=False)
    for epoch in range(first, epochs):
        start, total, seen = time.perf_counter(), 0.0, 0
        order = torch.randperm(len(training), generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        for batch in order.split(batch_size):
            follow_load()
            inputs, targets = training.batch(batch.tolist())
            inputs, targets = inputs.to(device), targets.to(device)
            with autocast():
                loss = (network(inputs).float() - targets.float()).pow(2).mean()
            if not torch.isfinite(loss):
                raise ConfigError(f"pretrain: the loss became non-finite in epoch {epoch + 1} (lower lr)")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            total, seen = total + float(loss.detach()) * len(batch), seen + len(batch)
            bar.update(1)
        val, val_input = validation_psnr(network, validation, device=device)
        for key, value in zip(history, (epoch + 1, total / seen, val, val_input, time.perf_counter() - start)):
            history[key].append(value)
        bar.set_postfix(loss=f"{total / seen:.3g}", val_psnr=f"{val:.2f}", input_psnr=f"{val_input:.2f}")
        if checkpoint is not None:
            state = {"fingerprint": fingerprint, "epoch": epoch, "network": network.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "scaler": scaler.state_dict() if scaler is not None else None, "history": history,
                     "torch_rng": torch.get_rng_state(),
                     "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
            save_torch_state(checkpoint, "pretrain_checkpoint", state)
    bar.close()
