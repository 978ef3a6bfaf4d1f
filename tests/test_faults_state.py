"""State files of DIP and EDIP (DIP checkpoints, pretrained models, pretraining checkpoints, synthetic-pair caches)
are verified before they are trusted; resuming respects the budget and reports the time of every session; half
precision DIP is refused before any work."""

from __future__ import annotations

import io
import struct
import time
import zipfile
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from invprior import GaussianNoise, InverseProblem, registry
from invprior.cli import main
from invprior.data.synthetic import SyntheticPairs
from invprior.errors import ConfigError, NotSupportedError, StateFileError
from invprior.io import load_torch_state
from invprior.methods import pretrain as pretrain_module
from invprior.methods.dip import DIP
from invprior.methods.edip import EDIP
from invprior.methods.pretrain import pretrain
from invprior.methods.pretrained import Pretrained, load_pretrained

SIZE = 16
NET = {"preset": "small", "channels": 8}
PAIR_NOISE = GaussianNoise(relative=0.05)
# input noise draws from the checkpointed noise generator, so an exact resume needs its state too
SETTINGS = dict(generator_params=NET, weight=0.01, init="none", lr=1e-2, input_noise=0.05, stopping="fixed",
                log_every=2, checkpoint_every=4, max_iterations=12)


@pytest.fixture(scope="module")
def problem() -> InverseProblem:
    op = registry.get("operators", "denoising", size=SIZE)
    x = registry.get("datasets", "ellipses", size=SIZE, seed=0)
    return InverseProblem.simulate(op, x, GaussianNoise(std=0.1), seed=0)


@pytest.fixture(scope="module")
def full(problem):
    """The uninterrupted 12-iteration fit."""
    return DIP(**SETTINGS).reconstruct(problem, progress=False)


def _pairs(problem: InverseProblem, count: int, seed: int) -> SyntheticPairs:
    return SyntheticPairs(problem.operator, count, PAIR_NOISE, seed=seed, input="pseudo_inverse")


def _interrupted_pretraining(problem: InverseProblem, out: Path, monkeypatch) -> tuple[SyntheticPairs, ...]:
    """Pretraining for 2 epochs stopped in its second: ``<out>.partial`` holds epoch 1."""
    training, validation = _pairs(problem, 4, 0).cache_in_memory(), _pairs(problem, 2, 1).cache_in_memory()
    calls = {"n": 0}
    original = pretrain_module.validation_psnr

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "validation_psnr", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain(training, validation, "unet", NET, epochs=2, batch_size=4, amp="off", out=out, progress=False)
    monkeypatch.setattr(pretrain_module, "validation_psnr", original)
    return training, validation


# -- every kind of state file: writer and reader ---------------------------------------------------------------

def _dip_checkpoint(problem, tmp_path, monkeypatch) -> tuple[Path, Callable]:
    path, settings = tmp_path / "run.pt", {**SETTINGS, "max_iterations": 4}
    DIP(checkpoint=path, **settings).reconstruct(problem, progress=False)
    return path, lambda: DIP(checkpoint=path, resume=True, **settings).reconstruct(problem, progress=False)


def _pretrained_model(problem, tmp_path, monkeypatch) -> tuple[Path, Callable]:
    path = tmp_path / "model.pt"
    Pretrained(registry.get("generators", "unet", **NET), "unet", NET, {"count": 8}, {"epoch": [1]}).save(path)
    return path, lambda: load_pretrained(path)


def _pretrain_checkpoint(problem, tmp_path, monkeypatch) -> tuple[Path, Callable]:
    out = tmp_path / "model.pt"
    training, validation = _interrupted_pretraining(problem, out, monkeypatch)
    return Path(f"{out}.partial"), lambda: pretrain(training, validation, "unet", NET, epochs=2, batch_size=4,
                                                    amp="off", out=out, progress=False)


def _synthetic_cache(problem, tmp_path, monkeypatch) -> tuple[Path, Callable]:
    path = tmp_path / "pairs.pt"
    _pairs(problem, 6, 2).cache(path)
    return path, lambda: _pairs(problem, 6, 2).cache(path)


KINDS = {"dip checkpoint": _dip_checkpoint, "pretrained model": _pretrained_model,
         "pretrain checkpoint": _pretrain_checkpoint, "synthetic pairs": _synthetic_cache}


def _payload_start(data: bytes) -> int:
    return data.index(b"\n") + 1  # after the one-line header


def _flip_a_bit_in_tensor_data(path: Path) -> bytes:
    """Flip one bit in the middle of the largest tensor stored in the file; returns the damaged torch.save bytes."""
    data = bytearray(path.read_bytes())
    start = _payload_start(data)
    archive = zipfile.ZipFile(io.BytesIO(bytes(data[start:])))
    entry = max((e for e in archive.infolist() if "/data/" in e.filename), key=lambda e: e.file_size)
    local = start + entry.header_offset  # the entry's local header: 30 bytes, then its name and extra field
    name_length, extra_length = struct.unpack("<HH", data[local + 26:local + 30])
    data[local + 30 + name_length + extra_length + entry.file_size // 2] ^= 0x04
    path.write_bytes(bytes(data))
    return bytes(data[start:])


def _tensors(value: object) -> list[torch.Tensor]:
    """Every tensor in a nest of dictionaries and sequences, in order."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    if isinstance(value, (list, tuple, deque)):
        return [t for v in value for t in _tensors(v)]
    return []


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (NaN-safe for comparisons)."""
    return tensor.detach().contiguous().reshape(-1).view(torch.uint8)


def _refused(use: Callable, path: Path, fault: str) -> None:
    """``use()`` raises a one-line StateFileError that starts with the file's name and states ``fault``."""
    with pytest.raises(StateFileError) as caught:
        use()
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and fault in message and "\n" not in message, message


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_state_file_is_refused_naming_the_file(kind, problem, tmp_path, monkeypatch):
    path, use = KINDS[kind](problem, tmp_path, monkeypatch)
    intact = path.read_bytes()
    assert intact.startswith(f"invprior-state {kind.replace(' ', '_')} ".encode())

    path.write_bytes(b"")
    _refused(use, path, f"empty {kind} file")

    path.write_bytes(intact[:len(intact) // 2])
    _refused(use, path, f"truncated or extended {kind} file")

    path.write_bytes(intact)
    damaged = _flip_a_bit_in_tensor_data(path)
    # without the checksum the damage would pass unseen: torch reads the flipped tensor without complaint
    original = torch.load(io.BytesIO(intact[_payload_start(intact):]), weights_only=False)
    flipped = torch.load(io.BytesIO(damaged), weights_only=False)
    changed = [not torch.equal(_bytes(a), _bytes(b)) for a, b in zip(_tensors(flipped), _tensors(original))]
    assert any(changed), kind
    _refused(use, path, f"damaged {kind} file (SHA-256 checksum mismatch)")

    torch.save(original, path)  # the same content without the header: a plain torch.save file
    _refused(use, path, f"not an invprior {kind} file (no invprior-state header)")
    path.write_text("weights\n")
    _refused(use, path, f"not an invprior {kind} file")

    other = "pretrained model" if kind != "pretrained model" else "dip checkpoint"
    path.write_bytes(intact.replace(kind.replace(" ", "_").encode(), other.replace(" ", "_").encode(), 1))
    _refused(use, path, f"holds a {other}, not a {kind}")

    path.write_bytes(intact)
    use()  # the intact file is still read


def test_an_intact_checkpoint_resumes_to_the_uninterrupted_result_and_counts_every_session(problem, full, tmp_path,
                                                                                           monkeypatch):
    path = tmp_path / "run.pt"
    original_save = DIP._save

    def killed_after_the_first_checkpoint(self, where, fingerprint, seconds, iteration, *rest):
        original_save(self, where, fingerprint, seconds, iteration, *rest)
        if iteration == 4:
            raise KeyboardInterrupt

    monkeypatch.setattr(DIP, "_save", killed_after_the_first_checkpoint)
    method = DIP(checkpoint=path, **SETTINGS)
    began = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        method.reconstruct(problem, progress=False)
    first_session = time.perf_counter() - began
    monkeypatch.setattr(DIP, "_save", original_save)
    stored = load_torch_state(path, "dip_checkpoint", "", weights_only=False)
    assert stored["iteration"] == 4 and 0 < stored["seconds"] <= first_session
    # unfinished at iteration 4: a budget of 4 cannot finish it as an uninterrupted run would (it logs and keeps
    # iteration 4 from the weights before its last step), so it needs one iteration more
    with pytest.raises(ConfigError, match=r"is at iteration 4 of a run with a larger budget than max_iterations=4; "
                                          r"raise max_iterations to at least 5 "):
        DIP(checkpoint=path, resume=True, **{**SETTINGS, "max_iterations": 4}).reconstruct(problem, progress=False)
    assert load_torch_state(path, "dip_checkpoint", "", weights_only=False)["iteration"] == 4  # left as it was

    method = DIP(checkpoint=path, resume=True, **SETTINGS)
    began = time.perf_counter()
    resumed = method.reconstruct(problem, progress=False)
    second_session = time.perf_counter() - began
    assert torch.equal(resumed.image, full.image) and resumed.iterations == full.iterations == 12
    assert resumed.trace.keys() == full.trace.keys()
    for key in full.trace:  # NaN-aware (the fixed budget has no statistic)
        assert torch.equal(torch.tensor(resumed.trace[key]).nan_to_num(-1.0),
                           torch.tensor(full.trace[key]).nan_to_num(-1.0)), key
    for key, value in full.networks[0].state.items():
        assert torch.equal(resumed.networks[0].state[key], value), key
    # the total: this session's time plus what the checkpoint recorded of the first (up to its last save)
    assert second_session < resumed.wall_time <= second_session + stored["seconds"]
    assert resumed.wall_time >= first_session  # the resumed session redid more work than the first one lost
    finished = load_torch_state(path, "dip_checkpoint", "", weights_only=False)
    assert finished["result"] is not None and stored["seconds"] < finished["seconds"] <= resumed.wall_time


def test_resuming_with_a_smaller_budget_is_refused_and_a_larger_one_continues(problem, full, tmp_path):
    path = tmp_path / "run.pt"
    first = DIP(checkpoint=path, **{**SETTINGS, "max_iterations": 8}).reconstruct(problem, progress=False)
    with pytest.raises(ConfigError) as caught:
        DIP(checkpoint=path, resume=True, **{**SETTINGS, "max_iterations": 5}).reconstruct(problem, progress=False)
    assert str(caught.value) == (f"dip: checkpoint {path} is at iteration 8 of a run with a larger budget than "
                                 "max_iterations=5; raise max_iterations to at least 8 to continue it, or delete it "
                                 "to fit afresh")
    again = DIP(checkpoint=path, resume=True, **{**SETTINGS, "max_iterations": 8}).reconstruct(problem, progress=False)
    assert torch.equal(again.image, first.image) and again.iterations == 8  # the same budget: the stored result
    assert again.wall_time >= load_torch_state(path, "dip_checkpoint", "", weights_only=False)["seconds"]
    longer = DIP(checkpoint=path, resume=True, **SETTINGS).reconstruct(problem, progress=False)
    assert longer.iterations == 12 and torch.equal(longer.image, full.image)  # as if run with 12 from the start


def test_a_run_the_rule_stopped_is_returned_within_any_budget_that_reaches_its_stop(problem, tmp_path):
    path = tmp_path / "run.pt"
    settings = {**SETTINGS, "stopping_params": {"iterations": 3}}
    stopped = DIP(checkpoint=path, **settings).reconstruct(problem, progress=False)
    assert stopped.iterations == 3 and "fixed budget of 3" in stopped.stop_reason
    again = DIP(checkpoint=path, resume=True, **{**settings, "max_iterations": 3}).reconstruct(problem, progress=False)
    assert torch.equal(again.image, stopped.image) and again.iterations == 3
    with pytest.raises(ConfigError, match="is at iteration 3 of a run with a larger budget than max_iterations=2; "
                                          "raise max_iterations to at least 3 "):
        DIP(checkpoint=path, resume=True, **{**settings, "max_iterations": 2}).reconstruct(problem, progress=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_dip_is_refused_before_any_work(problem, dtype, tmp_path, monkeypatch):
    half = problem.to(dtype=dtype)
    name = str(dtype).removeprefix("torch.")
    expected = (f"dip: {name} is not supported: float16 is too narrow for Adam's second moments and the squared data "
                "and TV losses (they underflow or overflow and the fit diverges) and bfloat16 keeps 8 significant "
                "bits, too few for the small weight steps; use float32 or float64 (problem.to(dtype=torch.float32), "
                "or --dtype float32)")

    def no_fit(*args, **kwargs):
        raise AssertionError("fitting started")

    monkeypatch.setattr(DIP, "_fit", no_fit)
    monkeypatch.setattr(DIP, "_reference", no_fit)  # the TV start and weight come first in a fit
    with pytest.raises(NotSupportedError) as caught:
        DIP(checkpoint=tmp_path / "run.pt", **SETTINGS).reconstruct(half, progress=False)
    assert str(caught.value) == expected and not (tmp_path / "run.pt").exists()
    edip = {k: v for k, v in SETTINGS.items() if k not in ("generator_params", "init")}
    with pytest.raises(NotSupportedError) as caught:  # EDIP: before the model is pretrained (or loaded)
        EDIP(pretrained=tmp_path / "model.pt", pretrain={"count": 8}, **edip).reconstruct(half, progress=False)
    assert str(caught.value) == expected.replace("dip:", "edip:", 1)
    assert not list(tmp_path.iterdir())


CONFIG = """
[problem]
operator = "denoising"
image = "ellipses"
size = 16
noise = { std = 0.1 }
[method]
name = "dip"
[method.params]
generator_params = { preset = "small", channels = 8 }
weight = 0.01
init = "none"
stopping = "fixed"
max_iterations = 8
checkpoint_every = 4
"""


def test_a_damaged_checkpoint_in_the_output_folder_stops_the_command_with_one_line(tmp_path, capsys):
    config = tmp_path / "dip.toml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--keep-checkpoint"]) == 0
    checkpoint = out / "checkpoint-dip.pt"
    metrics = (out / "metrics.json").read_bytes()
    _flip_a_bit_in_tensor_data(checkpoint)
    capsys.readouterr()
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err
    assert error == (f"invprior: error: {checkpoint}: damaged dip checkpoint file (SHA-256 checksum mismatch); it is "
                     "not used. Delete it to fit afresh, or choose another output folder (invprior run --out) or "
                     "'checkpoint' path\n")
    assert checkpoint.exists() and (out / "metrics.json").read_bytes() == metrics  # nothing replaced or removed
