"""Deep Image Prior: fit ``x = G_theta(z)`` to ``y`` by Adam, stopped by a :class:`StoppingRule`.

Loss: ``mean((A G(z) - y)^2) + weight * R(G(z))`` (the mean runs over the entries of ``y``,
``R`` is summed over pixels, e.g. anisotropic TV).
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from invprior import registry
from invprior.core.interfaces import Generator, IterationState, Regularizer, StoppingRule
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError, FitDivergedError, ShapeError
from invprior.io import atomic_write
from invprior.methods.base import Method
from invprior.methods.classical import TVLeastSquares
from invprior.metrics import psnr, ssim
from invprior.validation import positive_int, real


def _component(kind: str, value: Any, params: dict | None, interface: type, defaults: dict) -> Any:
    """A registered component by name (constructed with ``params``), or an instance passed through."""
    if isinstance(value, interface):
        if params:
            raise ConfigError(f"dip: {kind} parameters were given for an already built {type(value).__name__}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"dip: {kind} must be a registry name or a {interface.__name__}, got {value!r}")
    from invprior.config import ComponentSpec
    from invprior.experiment import build

    built = build(kind, ComponentSpec(value, dict(params or {})), f"method.params.{kind}", **defaults)
    if not isinstance(built, interface):
        raise ConfigError(f"dip: {kind} '{value}' is not a {interface.__name__}")
    return built


class DIP(Method):
    """Deep Image Prior with a stopping rule that picks the iterate (no hand-tuned iteration count).

    ``generator``, ``regularizer`` and ``stopping`` are registry names (with ``*_params``) or
    built objects. ``weight`` multiplies the regularizer: a number, or ``"auto"`` (from TV least
    squares with the discrepancy principle, see :meth:`_weights`). ``optimizer`` is ``"adam"`` (the
    default) or ``"gd"`` (plain gradient descent, as in the theory of DIP), with step ``lr``; ``input_noise`` adds ``N(0, input_noise^2)``
    to the input at every iteration; ``grad_clip`` clips the gradient norm. The fit ends when the
    rule says so or after ``max_iterations``. Each image of a batch gets its own network.

    With ``checkpoint`` set, the state is written atomically every ``checkpoint_every`` iterations;
    with ``resume=True`` a run whose checkpoint exists continues from it and reproduces the
    uninterrupted run exactly on the CPU.
    """

    name = "dip"
    OPTIMIZERS = {"adam": torch.optim.Adam, "gd": torch.optim.SGD}

    def __init__(self, generator: str | Generator = "unet", generator_params: dict | None = None,
                 regularizer: str | Regularizer = "tv_anisotropic", weight: float | str = 0.0,
                 stopping: str | StoppingRule = "eswmv", stopping_params: dict | None = None,
                 lr: float = 1e-3, optimizer: str = "adam", max_iterations: int = 5000, input_noise: float = 0.0,
                 grad_clip: float | None = None, log_every: int = 10, seed: int = 0,
                 checkpoint: str | Path | None = None, checkpoint_every: int = 500, resume: bool = False,
                 auto_weight_fraction: float = 0.3) -> None:
        self.lr = real(lr, "dip: lr", minimum=0.0, strict=True)
        if optimizer not in self.OPTIMIZERS:
            raise ConfigError(f"dip: optimizer must be one of {tuple(self.OPTIMIZERS)}, got {optimizer!r}")
        self.optimizer = optimizer
        self.input_noise = real(input_noise, "dip: input_noise", minimum=0.0)
        self.grad_clip = None if grad_clip is None else real(grad_clip, "dip: grad_clip", minimum=0.0, strict=True)
        if weight != "auto":
            weight = real(weight, "dip: weight (a number >= 0 or 'auto')", minimum=0.0)
        self.auto_weight_fraction = real(auto_weight_fraction, "dip: auto_weight_fraction", minimum=0.0, strict=True)
        self.max_iterations = positive_int(max_iterations, "dip: max_iterations")
        self.log_every = positive_int(log_every, "dip: log_every")
        self.checkpoint_every = positive_int(checkpoint_every, "dip: checkpoint_every")
        if isinstance(generator, str):
            try:
                registry.load("generators", generator)
            except (KeyError, ImportError) as exc:
                raise ConfigError(f"method.params.generator: {exc}") from None
        elif not isinstance(generator, Generator):
            raise ConfigError(f"dip: generator must be a registry name or a Generator, got {generator!r}")
        self.generator, self.generator_params = generator, dict(generator_params or {})
        self.regularizer = _component("regularizers", regularizer, None, Regularizer, {})
        self.stopping = _component("stopping", stopping, stopping_params, StoppingRule, {})
        self.weight = weight
        self.seed = int(seed)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.resume = bool(resume)
        self.params = {"generator": generator if isinstance(generator, str) else type(generator).__name__,
                       "generator_params": self.generator_params, "regularizer": type(self.regularizer).__name__,
                       "weight": self.weight, "stopping": type(self.stopping).__name__,
                       "stopping_params": dict(stopping_params or {}), "lr": self.lr, "optimizer": optimizer,
                       "max_iterations": max_iterations, "input_noise": self.input_noise,
                       "grad_clip": self.grad_clip, "seed": self.seed,
                       "auto_weight_fraction": self.auto_weight_fraction}

    # -- set-up -----------------------------------------------------------------------
    def _build_generator(self, problem: InverseProblem) -> Generator:
        """A freshly initialised generator (weights drawn from ``seed``, global RNG untouched)."""
        c, h, w = problem.operator.domain_shape[-3:]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            if isinstance(self.generator, Generator):
                generator = copy.deepcopy(self.generator)  # every image starts from the same untrained network
            else:
                generator = _component("generators", self.generator, self.generator_params, Generator,
                                       {"size": (h, w), "out_channels": c})
        return generator.to(device=problem.y.device, dtype=problem.y.dtype)

    def _checkpoint_path(self, index: int, batch: int) -> Path | None:
        if self.checkpoint is None:
            return None
        return self.checkpoint if batch == 1 else self.checkpoint.with_name(f"{self.checkpoint.stem}-{index}{self.checkpoint.suffix}")

    def _fingerprint(self, problem: InverseProblem) -> str:
        """Identifies the run a checkpoint belongs to; raising max_iterations may continue a run."""
        settings = {k: v for k, v in self.params.items() if k != "max_iterations"}
        digest = hashlib.sha256(repr(sorted(settings.items())).encode())
        digest.update(problem.y.detach().cpu().double().numpy().tobytes())
        return digest.hexdigest()

    # -- fitting ----------------------------------------------------------------------
    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        start = time.perf_counter()
        if self.stopping.requires_noise_level and problem.noise_norm is None:
            raise ConfigError(f"dip: the stopping rule {type(self.stopping).__name__} needs the noise level "
                              "(noise_std or noise_norm on the problem)")
        weights = self._weights(problem)
        fits = [self._fit(problem.select(b), weights[b], self._checkpoint_path(b, problem.batch_size), progress)
                for b in range(problem.batch_size)]
        first = fits[0]
        return Reconstruction(
            image=torch.cat([f.image for f in fits]), method=self.name, params={**self.params, "weight": weights},
            trace=first.trace,
            iterations=first.iterations, stop_reason=first.stop_reason, wall_time=time.perf_counter() - start,
            generator_state=first.generator_state, generator_input=torch.cat([f.generator_input for f in fits]),
            extras={"best_iteration": [f.extras["best_iteration"] for f in fits],
                    "per_image": [{"iterations": f.iterations, "stop_reason": f.stop_reason, "trace": f.trace,
                                   "generator_state": f.generator_state} for f in fits] if len(fits) > 1 else None})

    def _weights(self, problem: InverseProblem) -> list[float]:
        """The TV weight per image. ``"auto"``: ``auto_weight_fraction * 2 lambda / m``, where ``lambda`` is
        the weight the discrepancy principle picks for TV least squares ``1/2 ||Ax - y||^2 + lambda TV``,
        ``2 / m`` rescales it to this mean-squared loss (``m`` entries in ``y``) and the fraction (0.3)
        leaves room for the network's own regularisation, which TV alone does not have."""
        if self.weight != "auto":
            return [float(self.weight)] * problem.batch_size
        if not problem.operator.is_linear:
            raise ConfigError("dip: weight='auto' needs a linear operator (it solves TV least squares); give a number")
        tv = TVLeastSquares(weight="discrepancy").reconstruct(problem, progress=False)
        return [self.auto_weight_fraction * 2.0 * w / problem.y[0].numel() for w in tv.params["weight"]]

    def _fit(self, problem: InverseProblem, weight: float, checkpoint: Path | None, progress: bool) -> Reconstruction:
        op, y = problem.operator, problem.y
        generator = self._build_generator(problem)
        z = generator.make_input(problem, self.seed)
        with torch.no_grad():
            shape = tuple(generator(z).shape)
        if shape != (1, *op.domain_shape):
            raise ShapeError(f"dip: the generator outputs images of shape {shape}, but {op.name} expects "
                             f"(1, {', '.join(map(str, op.domain_shape))}); fix the generator's size/channels")
        rule = self.stopping
        rule.reset()
        optimizer = self.OPTIMIZERS[self.optimizer](generator.parameters(), lr=self.lr)
        noise_rng = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        record = Reconstruction(y.new_zeros(0), self.name, params=self.params, generator_input=z)
        best_state: dict[str, Tensor] | None = None
        first, torch_rng = 1, None
        fingerprint = self._fingerprint(problem)
        if checkpoint is not None and self.resume and checkpoint.exists():
            first, best_state, torch_rng = self._load(checkpoint, fingerprint, generator, optimizer, rule,
                                                      noise_rng, record)
        watch = getattr(rule, "monitor", None)
        last_good: Tensor | None = None
        iteration = first - 1
        # the global RNG (dropout, if any) is forked, seeded and restored: the caller's state is untouched
        with torch.random.fork_rng(devices=[]), tqdm(total=self.max_iterations, initial=first - 1, desc="DIP",
                                                      disable=not progress, leave=False) as bar:
            if torch_rng is None:
                torch.manual_seed(self.seed + 2)
            else:
                torch.set_rng_state(torch_rng)
            for iteration in range(first, self.max_iterations + 1):
                z_in = z
                if self.input_noise > 0:
                    z_in = z + self.input_noise * torch.randn(z.shape, generator=noise_rng, dtype=torch.float64).to(z)
                x = generator(z_in)
                residual = op(x) - y
                loss = residual.pow(2).mean()
                if weight > 0:
                    loss = loss + weight * self.regularizer(x).sum()
                if not torch.isfinite(loss):
                    self._diverged(record, rule, last_good, iteration)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(generator.parameters(), self.grad_clip)
                image = x.detach()
                last_good = image
                extras = {}
                if watch in ("psnr", "ssim") and problem.x_true is not None:
                    extras[watch] = float((psnr if watch == "psnr" else ssim)(image, problem.x_true))
                state = IterationState(iteration, image, float(loss.detach()), residual.detach().flatten(1).norm(dim=1),
                                       problem.noise_norm, extras)
                stop = rule.update(state)
                if rule.best_iteration == iteration:
                    best_state = {k: v.detach().clone() for k, v in generator.state_dict().items()}
                if stop or iteration % self.log_every == 0 or iteration == self.max_iterations:
                    self._log(record, problem, state, rule)
                    bar.set_postfix({k: f"{v[-1]:.4g}" for k, v in record.trace.items() if k in ("loss", "psnr")})
                bar.update(1)
                if stop:
                    break
                optimizer.step()
                if checkpoint is not None and iteration % self.checkpoint_every == 0:
                    self._save(checkpoint, fingerprint, iteration, generator, optimizer, rule, noise_rng,
                               record, best_state)
        if rule.best is None or not rule.reason:
            if rule.best is None:
                rule._keep(IterationState(iteration, last_good, math.nan, torch.zeros(1)))
                best_state = {k: v.detach().clone() for k, v in generator.state_dict().items()}
            record.stop_reason = (f"max_iterations = {self.max_iterations} reached before the stopping rule fired; "
                                  f"kept iteration {rule.best_iteration}")
        else:
            record.stop_reason = rule.reason
        record.image, record.iterations = rule.best, iteration
        record.generator_state = best_state
        record.extras["best_iteration"] = rule.best_iteration
        return record

    def _log(self, record: Reconstruction, problem: InverseProblem, state: IterationState, rule: StoppingRule) -> None:
        values = {"iteration": state.iteration, "loss": state.loss, "residual": float(state.residual_norm[0])}
        if problem.x_true is not None:
            values["psnr"] = float(psnr(state.image, problem.x_true)[0])
            values["ssim"] = float(ssim(state.image, problem.x_true)[0]) if min(state.image.shape[-2:]) >= 11 else math.nan
        values["statistic"] = math.nan if rule.statistic is None else float(rule.statistic)
        record.log(**values)

    def _diverged(self, record: Reconstruction, rule: StoppingRule, last_good: Tensor | None, iteration: int) -> None:
        kept = rule.best if rule.best is not None else last_good
        record.image = kept
        record.iterations = iteration - 1
        record.stop_reason = f"the loss became non-finite at iteration {iteration}"
        where = f"iteration {rule.best_iteration}" if rule.best is not None else f"iteration {iteration - 1}"
        raise FitDivergedError(
            f"dip: the loss became NaN/inf at iteration {iteration} (try a smaller lr or grad_clip); "
            f"the last good iterate ({where}) is kept in the error's .reconstruction", record)

    # -- checkpoints ------------------------------------------------------------------
    def _save(self, path: Path, fingerprint: str, iteration: int, generator: Generator, optimizer, rule: StoppingRule,
              noise_rng: torch.Generator, record: Reconstruction, best_state: dict | None) -> None:
        payload = {"fingerprint": fingerprint, "iteration": iteration, "generator": generator.state_dict(),
                   "optimizer": optimizer.state_dict(), "rule": rule.state_dict(), "noise_rng": noise_rng.get_state(),
                   "torch_rng": torch.get_rng_state(), "trace": record.trace, "best_state": best_state}
        atomic_write(path, lambda f: torch.save(payload, f))

    def _load(self, path: Path, fingerprint: str, generator: Generator, optimizer, rule: StoppingRule,
              noise_rng: torch.Generator, record: Reconstruction) -> tuple[int, dict | None, Tensor]:
        """Restore a checkpoint; returns the next iteration, the kept network state and the torch RNG state."""
        payload = torch.load(path, map_location=next(iter(generator.state_dict().values())).device, weights_only=False)
        if payload.get("fingerprint") != fingerprint:
            raise ConfigError(f"dip: checkpoint {path} belongs to another problem or other settings; "
                              "delete it or point 'checkpoint' elsewhere")
        generator.load_state_dict(payload["generator"])
        optimizer.load_state_dict(payload["optimizer"])
        rule.load_state_dict(payload["rule"])
        noise_rng.set_state(payload["noise_rng"])
        record.trace = payload["trace"]
        return payload["iteration"] + 1, payload["best_state"], payload["torch_rng"]
