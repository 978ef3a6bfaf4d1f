"""Deep Image Prior: fit ``x = G_theta(z)`` to ``y`` by Adam, stopped by a ``StoppingRule``.

Loss: ``mean((A G(z) - y)^2) + weight * R(G(z))`` (the mean runs over the entries of ``y``,
``R`` is summed over pixels, e.g. anisotropic TV), computed in normalised units: ``y`` divided by
the data scale ``s`` (``invprior.core.scaling.data_scale``), the image ``x = s P(G(z))`` with ``P``
the projection onto the problem's constraints, so that data in other units give the same image
up to that scale.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import time
from collections import deque
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from invprior import registry
from invprior.core.interfaces import Generator, IterationState, Method, Regularizer, StoppingRule
from invprior.core.problem import InverseProblem, ensure_noise_level
from invprior.core.reconstruction import FittedNetwork, Reconstruction, WarmStart
from invprior.core.scaling import data_scale
from invprior.errors import ConfigError, FitDivergedError, NotSupportedError, ShapeError
from invprior.generators.output_map import OutputMap
from invprior.io import load_torch_state, save_torch_state
from invprior.methods.base import seeded_global_rng
from invprior.methods.classical import TVLeastSquares
from invprior.metrics import psnr, ssim
from invprior.regularizers.tv import IsotropicTV
from invprior.regularizers.zero import NoRegularizer
from invprior.stopping.rules import FixedBudget
from invprior.threads import follow_load
from invprior.validation import choice, nonnegative_int, positive_int, real


def _configuration(component: object) -> list:
    """The plain settings of a component (numbers, strings, booleans), for fingerprints."""
    return sorted((k, v) for k, v in vars(component).items()
                  if not k.startswith("_") and isinstance(v, (bool, int, float, str, type(None))))


def _component(kind: str, value: Any, params: dict | None, interface: type, defaults: dict | None = None) -> Any:
    """A registered component by name (built with ``params`` and, where it takes them, ``defaults``), or an
    instance passed through."""
    if isinstance(value, interface):
        if params:
            raise ConfigError(f"dip: {kind} parameters were given for an already built {type(value).__name__}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"dip: {kind} must be a registry name or a {interface.__name__}, got {value!r}")
    return registry.build(kind, value, params, defaults=defaults, where=f"method.params.{kind}")


class DIP(Method):
    """Deep Image Prior regularised by TV, with the weight chosen from the data and averaged weights.

    ``generator``, ``regularizer`` and ``stopping`` are registry names (with ``*_params``) or
    built objects. ``weight`` multiplies the regularizer: a number, or ``"auto"`` (the weight that
    held-out cross-validation picks for TV least squares, see ``_reference``). ``optimizer`` is ``"adam"`` (the
    default) or ``"gd"`` (plain gradient descent, as in the theory of DIP), with step ``lr``; ``input_noise`` adds
    ``N(0, input_noise^2)`` to the input at every iteration; ``grad_clip`` clips the gradient norm. The fit ends when
    the rule says so or after ``max_iterations``. Each image of a batch gets its own network.

    With ``init="tv"`` (the default) the network first learns to output the TV image of the same
    cross-validated weight (``init_iterations`` Adam steps on ``mean((G(z) - x_TV)^2)``, the data unused),
    then the DIP+TV fit starts from there with a fresh optimiser whose step ramps up linearly over the first
    ``warmup`` iterations (``lr min(1, k / warmup)``: Adam's first steps have size ``lr`` whatever the gradient,
    which would throw the network far from the start): the fit refines the best classical image instead of
    growing edges from noise, which a U-Net does slowly. ``init="none"``, and every nonlinear
    operator (no TV least squares), start from the generator's initial weights.

    The default rule (``"fixed"``) runs the whole budget: with the weight chosen by cross-validation the
    regularised loss itself keeps the network from fitting the noise, so no early stop is needed. With
    ``average`` (the default 0.99) the kept network is an exponential moving average of the weights,
    ``theta_bar_k = b_k theta_bar_{k-1} + (1 - b_k) theta_{k-1}``, ``b_k = min(average, 1 - 1/k)`` (a plain
    mean for the first ``1 / (1 - average)`` iterations): it removes the optimiser's jitter from the kept
    image ``G_theta_bar(z)`` at no extra cost. A rule that keeps an earlier iterate (ES-WMV, the
    discrepancy principle) keeps the average at that iterate. ``average = 0`` keeps the raw weights.

    With ``normalise`` (the default) the fit runs on ``y / s`` with ``s`` the data scale and the
    result is multiplied by ``s``: ``lr``, ``weight`` (when a number) and the generator's input
    scale act on normalised images of order one, whatever the data's units; the trace's
    residuals and losses are in those normalised units. The fitted networks
    (``Reconstruction.networks``, their generator an ``OutputMap``) give the image in the data's units. The
    problem's ``constraints`` (bounds, support) are enforced through the generator's output.

    With ``restarts > 0`` a fit that leaves the data unexplained (its kept iterate's misfit
    ``||A x - y|| > restart_misfit * ||noise||``: a missed feature, a poor local minimum) is
    refitted from seed ``seed + 1``, ``seed + 2``, ... up to ``restarts`` more times, and the fit with
    the smallest misfit is kept (``extras["restarts"]`` lists every attempt). Without a noise level
    every restart runs. The data alone decide; the default (0) fits once.

    With ``checkpoint`` set, the state is written atomically every ``checkpoint_every`` iterations, in a
    checksummed file (``invprior.io.save_torch_state``); with ``resume=True`` a run whose checkpoint exists
    continues from it and reproduces the uninterrupted run exactly on the CPU. An empty, truncated, damaged or
    foreign checkpoint is refused (``StateFileError``), never used. ``max_iterations`` may be raised to continue
    a finished run. A checkpoint written by a run with a larger budget is refused (``ConfigError``, naming the
    ``max_iterations`` it needs) when it is past ``max_iterations``, or unfinished at it; a fit that finished
    within ``max_iterations`` (its rule stopped it, or it ran this very budget) returns its stored result.
    ``wall_time`` of a resumed run is the total over all sessions: the seconds each fit had run when its
    checkpoint was last written (stored in it) plus this session's.

    The fit runs in the problem's dtype, float32 or float64; half precision (float16, bfloat16) is refused
    up front (``NotSupportedError``).
    """

    name = "dip"
    OPTIMIZERS = {"adam": torch.optim.Adam, "gd": torch.optim.SGD}
    INITS = ("tv", "none")

    def __init__(self, generator: str | Generator = "unet", generator_params: dict | None = None,
                 regularizer: str | Regularizer = "tv_anisotropic", weight: float | str = "auto",
                 stopping: str | StoppingRule = "fixed", stopping_params: dict | None = None,
                 lr: float = 1e-3, optimizer: str = "adam", max_iterations: int = 1000, input_noise: float = 0.0,
                 grad_clip: float | None = None, log_every: int = 10, seed: int = 0,
                 checkpoint: str | Path | None = None, checkpoint_every: int = 500, resume: bool = False,
                 auto_weight_fraction: float = 1.0, normalise: bool = True, restarts: int = 0,
                 restart_misfit: float = 2.0, average: float = 0.99, init: str = "tv",
                 init_iterations: int = 300, warmup: int = 200) -> None:
        self.lr = real(lr, "dip: lr", minimum=0.0, strict=True)
        choice(optimizer, self.OPTIMIZERS, "dip: optimizer")
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
        self.regularizer = _component("regularizers", regularizer, None, Regularizer)
        self.stopping = _component("stopping", stopping, stopping_params, StoppingRule)
        self.weight = weight
        self.seed = int(seed)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.resume = bool(resume)
        self.normalise = bool(normalise)
        self.restarts = nonnegative_int(restarts, "dip: restarts")
        self.restart_misfit = real(restart_misfit, "dip: restart_misfit", minimum=0.0, strict=True)
        init = "none" if init is None else init
        choice(init, self.INITS, "dip: init")
        self.init = init
        self.init_iterations = positive_int(init_iterations, "dip: init_iterations")
        self.warmup = nonnegative_int(warmup, "dip: warmup (0: no warm-up)")
        self.average = real(average, "dip: average", minimum=0.0)
        if self.average >= 1:
            raise ConfigError(f"dip: average must be in [0, 1) (0 keeps the raw weights), got {average!r}")
        self.params = {"generator": generator if isinstance(generator, str) else type(generator).__name__,
                       "generator_params": self.generator_params, "regularizer": type(self.regularizer).__name__,
                       "weight": self.weight, "stopping": type(self.stopping).__name__,
                       "stopping_params": dict(stopping_params or {}), "lr": self.lr, "optimizer": optimizer,
                       "max_iterations": max_iterations, "input_noise": self.input_noise,
                       "grad_clip": self.grad_clip, "seed": self.seed,
                       "auto_weight_fraction": self.auto_weight_fraction, "normalise": self.normalise,
                       "restarts": self.restarts, "restart_misfit": self.restart_misfit, "average": self.average,
                       "init": self.init, "init_iterations": self.init_iterations, "warmup": self.warmup}
        self.warm_start: WarmStart | None = None

    def reseeded(self, seed: int) -> DIP:
        """A copy that fits from ``seed`` with its own stopping rule; this DIP is left as it is."""
        twin = copy.copy(self)
        twin.seed = int(seed)
        twin.params = {**self.params, "seed": twin.seed}
        twin.stopping = copy.deepcopy(self.stopping)
        return twin

    def warm_started(self, start: WarmStart) -> DIP:
        """A copy whose fit starts from ``start`` (an earlier fit's weights, input and data scale) instead of
        fresh weights and the TV start, with the step ramp-up ``warmup``: a refit after more measurements of the
        same object refines the earlier image. It fits one image per problem; this DIP is left as it is."""
        warm = copy.copy(self)
        warm.warm_start = start
        warm.init = "none"
        warm.params = {**self.params, "init": "none", "warm_start": True}
        return warm

    # -- set-up -----------------------------------------------------------------------
    @torch.no_grad()
    def _check_output_shape(self, generator: Generator, z: Tensor, op) -> None:
        """Refuse a generator whose output ``G(z)`` is not one image of the operator's domain shape."""
        shape = tuple(generator(z).shape)
        if shape != (1, *op.domain_shape):
            raise ShapeError(f"dip: the generator outputs images of shape {shape}, but {op.name} expects "
                             f"(1, {', '.join(map(str, op.domain_shape))}); fix the generator's size/channels")

    def _build_generator(self, problem: InverseProblem) -> OutputMap:
        """A freshly initialised generator (weights drawn from ``seed``, global RNG untouched), its output
        projected onto the problem's constraints."""
        c, h, w = problem.operator.domain_shape[-3:]
        with seeded_global_rng(self.seed, problem.y.device):
            if isinstance(self.generator, Generator):
                generator = copy.deepcopy(self.generator)  # every image starts from the same untrained network
            else:
                generator = _component("generators", self.generator, self.generator_params, Generator,
                                       {"size": (h, w), "out_channels": c, "seed": self.seed})
        network = generator.to(device=problem.y.device, dtype=problem.y.dtype)
        return OutputMap(network, 1.0, problem.constraints)

    def checkpoint_files(self, batch: int) -> list[Path]:
        paths = [self._checkpoint_path(index, batch) for index in range(batch)]
        return [path for path in paths if path is not None]

    def _checkpoint_path(self, index: int, batch: int) -> Path | None:
        if self.checkpoint is None:
            return None
        path = self.checkpoint
        return path if batch == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")

    def _fingerprint(self, problem: InverseProblem) -> str:
        """Identifies the run a checkpoint belongs to: settings (except ``max_iterations``, which may be
        raised to continue a run), the configuration of the components, the operator, the constraints and
        ``y``."""
        settings = {k: v for k, v in self.params.items() if k != "max_iterations"}
        parts = [settings, self.log_every, repr(problem.operator), _configuration(self.stopping),
                 _configuration(self.regularizer)]
        constraints = problem.constraints
        if constraints is not None:
            parts.append((constraints.lower, constraints.upper))
        digest = hashlib.sha256(repr(parts).encode())
        if constraints is not None and constraints.support is not None:
            digest.update(constraints.support.cpu().numpy().tobytes())
        if isinstance(self.generator, Generator):
            for tensor in self.generator.state_dict().values():
                digest.update(tensor.detach().cpu().double().numpy().tobytes())
        if self.warm_start is not None:
            for tensor in (*self.warm_start.state.values(), self.warm_start.input):
                digest.update(tensor.detach().cpu().double().numpy().tobytes())
        digest.update(problem.y.detach().cpu().double().numpy().tobytes())
        return digest.hexdigest()

    # -- fitting ----------------------------------------------------------------------
    def check_precision(self, problem: InverseProblem) -> None:
        """Refuse a problem in half precision (float16, bfloat16), before any work is done."""
        if problem.y.dtype in (torch.float16, torch.bfloat16):
            raise NotSupportedError(
                f"{self.name}: {str(problem.y.dtype).removeprefix('torch.')} is not supported: float16 is too narrow "
                "for Adam's second moments and the squared data and TV losses (they underflow or overflow and the "
                "fit diverges) and bfloat16 keeps 8 significant bits, too few for the small weight steps; use "
                "float32 or float64 (problem.to(dtype=torch.float32), or --dtype float32)")

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        start = time.perf_counter()
        self.check_precision(problem)
        if self._auto_weight() and not problem.operator.is_linear:
            raise ConfigError(f"dip: weight='auto' cross-validates TV least squares, which needs a linear operator "
                              f"({problem.operator.name} is not); give a number as weight")
        if self.stopping.requires_noise_level or self._needs_tv(problem):  # TV: it centres the weight grid
            problem = ensure_noise_level(problem, self.name)
        if self.warm_start is not None and problem.batch_size != 1:
            raise ConfigError(f"{self.name}: a warm-started fit refits one image, the problem holds "
                              f"{problem.batch_size}")
        if self.warm_start is not None:  # the earlier fit's units: its weights mean the same image
            scales = torch.full((1,), self.warm_start.scale, dtype=torch.float64)
        else:
            scales = data_scale(problem) if self.normalise else torch.ones(problem.batch_size, dtype=torch.float64)
        normalised = [problem.select(b).scaled(1.0 / float(scales[b])) for b in range(problem.batch_size)]
        generator = self._build_generator(normalised[0])  # checked before the TV reference, which takes seconds
        with seeded_global_rng(self.seed + 2, problem.y.device):
            self._check_output_shape(generator, generator.make_input(normalised[0], self.seed), problem.operator)
        references = [self._reference(part) for part in normalised]
        weights = [weight for weight, _ in references]
        fits, origin = [], start  # each fit's clock starts where the previous one stopped (the first's: here)
        for b, part in enumerate(normalised):
            fit = self._restarted_fit(part, *references[b], self._checkpoint_path(b, problem.batch_size), progress,
                                      float(scales[b]), origin)
            fits.append(self._in_user_units(fit, float(scales[b]), problem.constraints))
            origin = time.perf_counter()
        first = fits[0]
        earlier = sum(f.extras["earlier_seconds"] for f in fits)  # recorded by the checkpoints of earlier sessions
        return Reconstruction(
            image=torch.cat([f.image for f in fits]), method=self.name, params={**self.params, "weight": weights},
            trace=first.trace, iterations=first.iterations, stop_reason=first.stop_reason,
            wall_time=time.perf_counter() - start + earlier,
            networks=[network for f in fits for network in f.networks], fitted_by=self,
            extras={"best_iteration": [f.extras["best_iteration"] for f in fits],
                    "restarts": [f.extras["restarts"] for f in fits], "data_scale": scales.tolist(),
                    "per_image": [{"iterations": f.iterations, "stop_reason": f.stop_reason, "trace": f.trace}
                                  for f in fits] if len(fits) > 1 else None})

    def _restarted_fit(self, problem: InverseProblem, weight: float, start: Tensor | None, checkpoint: Path | None,
                       progress: bool, scale: float, origin: float) -> Reconstruction:
        """Fit one image of the problem normalised by ``scale``, refitting from the next seeds while the kept
        iterate leaves the data unexplained (see ``restarts``); the attempt with the smallest misfit
        ``||A x - y||``, reported in the data's units. ``origin`` (a ``time.perf_counter`` reading) starts the
        first attempt's clock; ``extras["earlier_seconds"]`` sums the attempts' time in earlier sessions."""
        delta = problem.noise_norm  # None, or one value per image after InverseProblem's checks
        limit = self.restart_misfit * float(delta[0]) * scale if isinstance(delta, Tensor) else None
        attempts: list[Reconstruction] = []
        for attempt in range(self.restarts + 1):
            method = self if attempt == 0 else self.reseeded(self.seed + attempt)
            path = checkpoint if checkpoint is None or attempt == 0 else checkpoint.with_name(
                f"{checkpoint.stem}-restart{attempt}{checkpoint.suffix}")
            fit = method._fit(problem, weight, start, path, progress, origin)
            origin = time.perf_counter()
            with torch.no_grad():
                fit.extras["misfit"] = scale * float((problem.operator(fit.image) - problem.y).norm())
            attempts.append(fit)
            if limit is not None and fit.extras["misfit"] <= limit:
                break
        index = min(range(len(attempts)), key=lambda k: attempts[k].extras["misfit"])
        kept = attempts[index]
        kept.extras["earlier_seconds"] = sum(fit.extras["earlier_seconds"] for fit in attempts)
        kept.extras["restarts"] = [{"seed": self.seed + k, "misfit": fit.extras["misfit"], "iterations": fit.iterations}
                                   for k, fit in enumerate(attempts)]
        if len(attempts) > 1:
            misfits = ", ".join(f"{fit.extras['misfit']:.3g}" for fit in attempts)
            above = "" if limit is None else f", refit above {limit:.3g}"
            kept.stop_reason += (f"; kept the fit from seed {self.seed + index} of {len(attempts)} attempts "
                                 f"(misfits {misfits}{above})")
        return kept

    @staticmethod
    def _in_user_units(record: Reconstruction, scale: float, constraints) -> Reconstruction:
        """A fit of the normalised problem, answered in the data's units: the image times ``scale`` and the
        generator's output map with that scale and the original constraints (the same images)."""
        record.image = record.image * scale
        record.networks = [dataclasses.replace(network, generator=_output_map(network).rescaled(scale, constraints))
                           for network in record.networks]
        return record

    def _needs_tv(self, problem: InverseProblem) -> bool:
        """Whether the fit needs TV least squares: for the weight, or for the start (linear operators only)."""
        return self._auto_weight() or (self.init == "tv" and problem.operator.is_linear)

    def _auto_weight(self) -> bool:
        return self.weight == "auto" and not isinstance(self.regularizer, NoRegularizer)

    def _reference(self, problem: InverseProblem) -> tuple[float, Tensor | None]:
        """The TV weight and the start image (``init="tv"``, else None) for one image.

        ``weight="auto"``: ``auto_weight_fraction * 2 lambda / m``, where ``lambda`` is the weight held-out
        cross-validation picks for TV least squares ``1/2 ||Ax - y||^2 + lambda TV``
        (``TVLeastSquares(weight="cv")``: the weight that best predicts left-out measurements) and ``2 / m``
        rescales it to this mean-squared loss (``m`` entries in ``y``). The start image minimises the same
        loss over all images (TV least squares with ``lambda = weight m / 2``); without TV in the loss, the
        cross-validated TV image. TV is nonnegative unless the problem's constraints allow negative values.
        """
        m = problem.y[0].numel()
        weight = 0.0 if isinstance(self.regularizer, NoRegularizer) or self.weight == "auto" else float(self.weight)
        if not self._needs_tv(problem):
            return weight, None
        bounds = problem.constraints
        settings = {"nonnegative": bounds is None or bounds.lower is None or bounds.lower >= 0,
                    "isotropic": isinstance(self.regularizer, IsotropicTV)}
        if self._auto_weight() or (self.init == "tv" and weight == 0.0):
            tv = TVLeastSquares(weight="cv", **settings).reconstruct(problem, progress=False)
            if self._auto_weight():
                weight = self.auto_weight_fraction * 2.0 * tv.params["weight"][0] / m
        if self.init != "tv":
            return weight, None
        if weight > 0.0 and (not self._auto_weight() or self.auto_weight_fraction != 1.0):
            tv = TVLeastSquares(weight=weight * m / 2.0, **settings).reconstruct(problem, progress=False)
        return weight, tv.image

    def _fit_to(self, generator: Generator, z: Tensor, target: Tensor) -> None:
        """``init_iterations`` Adam steps (step ``lr``) on ``mean((G(z) - target)^2)``."""
        optimizer = torch.optim.Adam(generator.parameters(), lr=self.lr)
        for _ in range(self.init_iterations):
            loss = (generator(z) - target).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def _fit(self, problem: InverseProblem, weight: float, start: Tensor | None, checkpoint: Path | None,
             progress: bool, origin: float) -> Reconstruction:
        """One fit; ``origin`` (a ``time.perf_counter`` reading) starts its clock in this session, and
        ``extras["earlier_seconds"]`` holds the time its checkpoint recorded in earlier sessions."""
        op, y = problem.operator, problem.y
        generator = self._build_generator(problem)
        z = generator.make_input(problem, self.seed)
        if self.warm_start is not None:
            warm = self.warm_start.to(z.device, problem.y.dtype)
            generator.load_state_dict(warm.state)
            z = warm.input
        rule = self.stopping
        rule.reset()
        # the global RNG (dropout, if any) is forked, seeded and restored: the caller's state is untouched
        with seeded_global_rng(self.seed + 2, y.device):
            self._check_output_shape(generator, z, op)
            resuming = checkpoint is not None and self.resume and checkpoint.exists()
            if start is not None and not resuming:  # a resumed run restores the weights instead
                self._fit_to(generator, z, start)
            optimizer = self.OPTIMIZERS[self.optimizer](generator.parameters(), lr=self.lr)
            noise_rng = torch.Generator(device="cpu").manual_seed(self.seed + 1)
            record = Reconstruction(y.new_zeros(0), self.name, params=self.params)
            record.extras["earlier_seconds"] = 0.0
            best_state: dict[str, Tensor] | None = None
            average = _clone(generator.state_dict()) if self.average > 0 else None
            first = 1
            fingerprint = self._fingerprint(problem)
            if resuming:
                assert checkpoint is not None  # resuming needs one
                payload = self._load(checkpoint, fingerprint, y.device)
                record.extras["earlier_seconds"] = payload["seconds"]
                # a finished fit is returned at its own budget; an unfinished one needs one more iteration
                needed = payload["iteration"] + (payload["result"] is None)
                if self.max_iterations < needed:
                    raise ConfigError(
                        f"{self.name}: checkpoint {checkpoint} is at iteration {payload['iteration']} of a run with "
                        f"a larger budget than max_iterations={self.max_iterations}; raise max_iterations to at "
                        f"least {needed} to continue it, or delete it to fit afresh")
                if payload["result"] is not None and (payload["result"]["stopped"]
                                                      or payload["iteration"] == self.max_iterations):
                    return self._finished(record, payload, generator, z)
                first, best_state, average = self._restore(payload, generator, optimizer, rule, noise_rng, record,
                                                           y.device)
            warmup = self.warmup if start is not None or self.warm_start is not None else 0
            return self._iterate(problem, weight, generator, z, rule, optimizer, noise_rng, record, best_state,
                                 average, first, checkpoint, fingerprint, progress, warmup, origin)

    def _iterate(self, problem: InverseProblem, weight: float, generator: Generator, z: Tensor, rule: StoppingRule,
                 optimizer, noise_rng: torch.Generator, record: Reconstruction, best_state: dict | None,
                 average: dict | None, first: int, checkpoint: Path | None, fingerprint: str,
                 progress: bool, warmup: int, origin: float) -> Reconstruction:
        op, y = problem.operator, problem.y

        def seconds() -> float:  # the fit's time over all sessions so far
            return record.extras["earlier_seconds"] + time.perf_counter() - origin

        noise_norm = problem.noise_norm if isinstance(problem.noise_norm, Tensor) else None
        watch = getattr(rule, "monitor", None)

        def snapshot() -> dict[str, Tensor]:
            return _clone(generator.state_dict()) if average is None else _clone(average)

        last_good: Tensor | None = None
        final_state: dict[str, Tensor] | None = None
        iteration, stop = first - 1, False
        with tqdm(total=self.max_iterations, initial=first - 1, desc="DIP", disable=not progress, leave=False) as bar:
            for iteration in range(first, self.max_iterations + 1):
                follow_load()
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
                if average is not None:  # theta_bar_k from theta_{k-1}, the weights that produced x_k
                    _accumulate(average, generator.state_dict(), min(self.average, 1.0 - 1.0 / iteration))
                extras = {}
                if watch in ("psnr", "ssim") and problem.x_true is not None:
                    extras[watch] = float((psnr if watch == "psnr" else ssim)(image, problem.x_true))
                state = IterationState(iteration, image, float(loss.detach()), residual.detach().flatten(1).norm(dim=1),
                                       noise_norm, extras)
                stop = rule.update(state)
                if rule.best_iteration == iteration:
                    best_state = snapshot()  # the weights that produced the kept image (before this step)
                if stop or iteration % self.log_every == 0 or iteration == self.max_iterations:
                    self._log(record, problem, state, rule, generator, average, z)
                    bar.set_postfix({k: f"{v[-1]:.4g}" for k, v in record.trace.items() if k in ("loss", "psnr")})
                bar.update(1)
                if stop:
                    break
                if iteration == self.max_iterations:
                    final_state = snapshot()
                if warmup:  # a function of the iteration alone, so a resumed run steps the same
                    for group in optimizer.param_groups:
                        group["lr"] = self.lr * min(1.0, iteration / warmup)
                optimizer.step()
                # none at max_iterations: the final checkpoint, with the result, follows at once
                due = iteration % self.checkpoint_every == 0 and iteration < self.max_iterations
                if checkpoint is not None and due:
                    self._save(checkpoint, fingerprint, seconds(), iteration, generator, optimizer, rule, noise_rng,
                               record, best_state, average)
        if stop:
            record.stop_reason = rule.reason
        else:
            if rule.best is None:  # the rule kept nothing yet (e.g. ES-WMV before its window filled)
                assert last_good is not None  # at least one finite iteration ran
                rule._keep(IterationState(iteration, last_good, math.nan, torch.zeros(1)))
                best_state = final_state
            fired = "" if isinstance(rule, FixedBudget) and rule.iterations is None else \
                " before the stopping rule fired"
            record.stop_reason = (f"max_iterations = {self.max_iterations} reached{fired}; "
                                  f"kept iteration {rule.best_iteration}")
        assert rule.best is not None  # kept above when the rule had not
        record.image, record.iterations = rule.best, iteration
        if average is not None and best_state is not None:
            with torch.no_grad():
                record.image = torch.func.functional_call(generator, best_state, (z,)).detach()
            record.stop_reason += f" (weights averaged, decay {self.average:g})"
        record.networks = [] if best_state is None else [FittedNetwork(generator, best_state, z)]
        record.extras["best_iteration"] = rule.best_iteration
        if checkpoint is not None:
            result = {"stopped": stop, "image": record.image, "iterations": iteration,
                      "stop_reason": record.stop_reason, "best_iteration": rule.best_iteration}
            self._save(checkpoint, fingerprint, seconds(), iteration, generator, optimizer, rule, noise_rng, record,
                       best_state, average, result)
        return record

    def _log(self, record: Reconstruction, problem: InverseProblem, state: IterationState, rule: StoppingRule,
             generator: Generator, average: dict | None, z: Tensor) -> None:
        """One trace row: loss, residual, the rule's statistic and, with a ground truth, the iterate's PSNR/SSIM
        (and ``psnr_average``, the averaged network's, which is what a stop here would keep)."""
        values = {"iteration": state.iteration, "loss": state.loss, "residual": float(state.residual_norm[0])}
        if problem.x_true is not None:
            values["psnr"] = float(psnr(state.image, problem.x_true)[0])
            small = min(state.image.shape[-2:]) < 11  # SSIM's 11x11 window
            values["ssim"] = math.nan if small else float(ssim(state.image, problem.x_true)[0])
            if average is not None:
                with torch.no_grad():
                    averaged = torch.func.functional_call(generator, average, (z,))
                values["psnr_average"] = float(psnr(averaged, problem.x_true)[0])
        values["statistic"] = math.nan if rule.statistic is None else float(rule.statistic)
        record.log(**values)

    def _diverged(self, record: Reconstruction, rule: StoppingRule, last_good: Tensor | None, iteration: int) -> None:
        kept = rule.best if rule.best is not None else last_good
        if kept is not None:  # else the loss was non-finite from the first iteration: the image stays empty
            record.image = kept
        record.iterations = iteration - 1
        record.stop_reason = f"the loss became non-finite at iteration {iteration}"
        where = f"iteration {rule.best_iteration}" if rule.best is not None else f"iteration {iteration - 1}"
        raise FitDivergedError(
            f"dip: the loss became NaN/inf at iteration {iteration} (try a smaller lr or grad_clip); "
            f"the last good iterate ({where}) is kept in the error's .reconstruction", record)

    # -- checkpoints ------------------------------------------------------------------
    def _save(self, path: Path, fingerprint: str, seconds: float, iteration: int, generator: Generator, optimizer,
              rule: StoppingRule, noise_rng: torch.Generator, record: Reconstruction, best_state: dict | None,
              average: dict | None, result: dict | None = None) -> None:
        """Everything needed to continue after ``iteration`` (and, at the end of a fit, its result), with the
        ``seconds`` the fit has run over all sessions, in a checksummed state file."""
        device = next(iter(generator.state_dict().values())).device
        payload = {"fingerprint": fingerprint, "seconds": seconds, "iteration": iteration,
                   "generator": generator.state_dict(), "optimizer": optimizer.state_dict(),
                   "rule": rule.state_dict(), "noise_rng": noise_rng.get_state(), "torch_rng": torch.get_rng_state(),
                   "trace": record.trace, "best_state": best_state, "average": average, "result": result}
        if device.type == "cuda":
            payload["cuda_rng"] = torch.cuda.get_rng_state(device)
        save_torch_state(path, "dip_checkpoint", payload)

    def _load(self, path: Path, fingerprint: str, device: torch.device) -> dict:
        """Read a checkpoint on the CPU once its checksum is verified (``StateFileError`` for an empty, truncated,
        damaged or foreign file) and refuse one that belongs to another run."""
        # a stopping rule's state holds any Python object (ES-WMV's window is a deque), which weights_only refuses;
        # the file is unpickled only after its length and SHA-256 have been checked
        payload = load_torch_state(path, "dip_checkpoint", "Delete it to fit afresh, or choose another output "
                                   "folder (invprior run --out) or 'checkpoint' path", weights_only=False)
        if payload.get("fingerprint") != fingerprint:
            raise ConfigError(f"dip: checkpoint {path} belongs to another problem or other settings; "
                              "delete it, or choose another output folder or 'checkpoint' path")
        return _on_device(payload, device, keep=("noise_rng", "torch_rng", "cuda_rng"))

    def _restore(self, payload: dict, generator: Generator, optimizer, rule: StoppingRule, noise_rng: torch.Generator,
                 record: Reconstruction, device: torch.device) -> tuple[int, dict | None, dict | None]:
        """Continue from ``payload``: returns the next iteration, the kept network state and the weight average."""
        generator.load_state_dict(payload["generator"])
        optimizer.load_state_dict(payload["optimizer"])
        rule.load_state_dict(payload["rule"])
        noise_rng.set_state(payload["noise_rng"])
        torch.set_rng_state(payload["torch_rng"])
        if "cuda_rng" in payload and device.type == "cuda":
            torch.cuda.set_rng_state(payload["cuda_rng"], device)
        record.trace = payload["trace"]
        return payload["iteration"] + 1, payload["best_state"], payload.get("average")

    def _finished(self, record: Reconstruction, payload: dict, generator: Generator, z: Tensor) -> Reconstruction:
        """The stored result of a fit that had already ended."""
        generator.load_state_dict(payload["generator"])
        result = payload["result"]
        record.image, record.iterations = result["image"], result["iterations"]
        record.stop_reason = result["stop_reason"]
        record.trace = payload["trace"]
        record.networks = [FittedNetwork(generator, payload["best_state"], z)]
        record.extras["best_iteration"] = result["best_iteration"]
        return record


def _output_map(network: FittedNetwork) -> OutputMap:
    """The output map DIP wraps every generator in."""
    assert isinstance(network.generator, OutputMap)
    return network.generator


def _clone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


@torch.no_grad()
def _accumulate(average: dict[str, Tensor], state: dict[str, Tensor], decay: float) -> None:
    """``average <- decay * average + (1 - decay) * state`` for the floating-point entries (others are copied)."""
    for key, value in state.items():
        if value.is_floating_point():
            average[key].mul_(decay).add_(value, alpha=1.0 - decay)
        else:
            average[key].copy_(value)


def _on_device(value: Any, device: torch.device, keep: tuple[str, ...] = ()) -> Any:
    """``value`` with every tensor moved to ``device`` (the dictionary keys in ``keep`` stay as they are)."""
    if isinstance(value, Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: v if k in keep else _on_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple, deque)):
        return type(value)(_on_device(v, device) for v in value)
    return value
