"""The acquisition loop: reconstruct from the measurements so far, score the candidates, acquire a batch, repeat.

Strategies: ``"lin_dip"`` chooses by expected information gain under the fitted posterior's covariance (lin-DIP
by default), ``"variance"`` by the same gain under its pixel-wise variance alone (the posterior without
correlations: what the covariance adds over an uncertainty map), ``"tikhonov"`` under the Gaussian posterior of
Tikhonov regularisation with a smoothness prior (``GaussianFactor.smoothness_prior``: no network, seconds; it
sees the data only through the prior's amplitude), ``"equidistant"`` spreads the measurements evenly,
``"random"`` draws them (nested, from ``seed``). Every strategy is scored after each acquisition, at
``start``, ``start + batch``, ... ``budget`` measurements; the adaptive ones start from the equidistant design
of ``start``. With ``warm_start`` every reconstruction after the first refits from the previous one's network
(``Method.warm_started``): the same object, a few more measurements.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from invprior.core.interfaces import Method, PosteriorApproximation
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction, WarmStart
from invprior.design.gain import GaussianFactor, greedy_batch, whitened_projections
from invprior.design.pool import CandidatePool, equidistant
from invprior.errors import ConfigError
from invprior.validation import choice, positive_int

STRATEGIES = ("lin_dip", "variance", "tikhonov", "equidistant", "random")
ADAPTIVE = ("lin_dip", "variance", "tikhonov")
#: The adaptive strategies that score candidates under the fitted posterior (lin-DIP by default).
FROM_POSTERIOR = ("lin_dip", "variance")
#: The smoothness prior of ``"tikhonov"``: its correlation length (a fraction of the image width) and modes.
PRIOR_LENGTH = 1 / 32
PRIOR_MODES = 512


@dataclass(frozen=True)
class DesignSettings:
    """``budget`` measurements in the end, ``start`` before the first choice, ``batch`` chosen per acquisition;
    ``samples`` predictive draws when the posterior has no dense covariance; ``seed`` for draws and ``random``;
    ``warm_start``: each refit starts from the previous reconstruction's network (a network method's)."""

    budget: int = 20
    start: int = 5
    batch: int = 5
    samples: int = 64
    seed: int = 0
    warm_start: bool = True

    def __post_init__(self) -> None:
        for name in ("budget", "start", "batch", "samples"):
            positive_int(getattr(self, name), f"design: {name}")
        if self.start > self.budget:
            raise ConfigError(f"design: start ({self.start}) exceeds the budget ({self.budget})")
        if self.samples < 2:
            raise ConfigError(f"design: samples must be >= 2, got {self.samples}")

    def counts(self) -> list[int]:
        """The numbers of measurements scored: ``start``, ``start + batch``, ..., ``budget``."""
        return [*range(self.start, self.budget, self.batch), self.budget]

    def check(self, pool: CandidatePool) -> None:
        """Refuse a budget larger than the pool."""
        if self.budget > pool.size:
            raise ConfigError(f"design: the budget ({self.budget}) exceeds the {pool.size} candidates")


@dataclass(frozen=True)
class DesignStep:
    """One reconstruction of the loop: the ``design`` measured (in acquisition order), its ``scores`` (PSNR, SSIM
    with a ground truth; the task score, e.g. MCC, with a reference), the candidates ``chosen`` next and their
    ``gains`` (nats; empty for the non-adaptive strategies and at the end) and the ``seconds`` it took."""

    design: tuple[int, ...]
    scores: dict[str, float]
    chosen: tuple[int, ...]
    gains: tuple[float, ...]
    seconds: float


@dataclass(frozen=True)
class DesignResult:
    """The ``steps`` of one ``strategy`` and the last ``reconstruction`` (from ``steps[-1].design``)."""

    strategy: str
    steps: tuple[DesignStep, ...]
    reconstruction: Reconstruction

    @property
    def design(self) -> tuple[int, ...]:
        """The final design, in acquisition order."""
        return self.steps[-1].design


def step_scores(reconstruction: Reconstruction, problem: InverseProblem) -> dict[str, float]:
    """PSNR and SSIM (with a ground truth) and the task score (with a reference) of one reconstruction."""
    from invprior.experiment import scores

    measured = scores(reconstruction, problem)
    return {key.removesuffix("_mean"): float(value) for key, value in measured.items()
            if key.endswith("_mean") and key != "relative_error_mean"}


def choose(strategy: str, pool: CandidatePool, posterior: PosteriorApproximation | None,
           reconstruction: Reconstruction, problem: InverseProblem, design: tuple[int, ...], batch: int,
           settings: DesignSettings) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The next ``batch`` candidates of an adaptive strategy, by greedy expected information gain under
    ``posterior`` fitted to ``reconstruction`` of ``problem``, the ``design`` measured (``"tikhonov"``: under
    the smoothness prior conditioned on the ``design``). The noise std is the posterior's fitted one (lin-DIP's
    ``noise_variance``), else the pool's."""
    if strategy == "tikhonov":
        width = reconstruction.image.shape[-1]
        prior = GaussianFactor.smoothness_prior(reconstruction.image, PRIOR_LENGTH * width, PRIOR_MODES)
        projections = whitened_projections(prior, lambda images: pool.project(images, prior.mean), pool.noise_std())
        picked = greedy_batch(projections, batch, exclude=design, condition_on=design)
        return picked.chosen, picked.gains
    assert posterior is not None  # the posterior strategies have one
    posterior.fit(reconstruction, problem)
    fitted = float(getattr(posterior, "noise_variance", math.nan))  # lin-DIP's, consistent with its covariance
    noise = math.sqrt(fitted) if fitted > 0 else pool.noise_std()
    gaussian = GaussianFactor.from_posterior(posterior, settings.samples, settings.seed,
                                             correlations=strategy == "lin_dip")
    projections = whitened_projections(gaussian, lambda images: pool.project(images, gaussian.mean), noise)
    picked = greedy_batch(projections, batch, exclude=design)
    return picked.chosen, picked.gains


def run_design(pool: CandidatePool, method: Method, strategy: str, settings: DesignSettings,
               posterior: PosteriorApproximation | None = None, progress: bool = True,
               on_step: Callable[[DesignStep, WarmStart | None], None] | None = None,
               earlier: Sequence[DesignStep] = (), warm: WarmStart | None = None) -> DesignResult:
    """Run ``strategy`` on ``pool``: reconstruct with ``method`` at every count of ``settings.counts()``, and for
    an adaptive strategy choose the next batch with ``posterior`` (default: lin-DIP); ``on_step`` sees each
    step as it is done with the warm start the next refit takes (``None`` without ``settings.warm_start`` or a
    network). ``earlier``: the first steps of a run that was stopped, which continues from them, and ``warm``
    the warm start its last step left (without it the next refit starts afresh)."""
    choice(strategy, STRATEGIES, "design: strategy")
    settings.check(pool)
    counts = settings.counts()
    if [len(step.design) for step in earlier] != counts[:len(earlier)] or len(earlier) >= len(counts):
        raise ConfigError(f"design: the earlier steps ({[len(step.design) for step in earlier]} measurements) "
                          f"are not a beginning of this run's {counts}")
    if strategy in FROM_POSTERIOR and posterior is None:
        from invprior.posterior.linearized_laplace import LinearizedLaplace

        posterior = LinearizedLaplace(seed=settings.seed, progress=False)
    order = torch.randperm(pool.size, generator=torch.Generator().manual_seed(settings.seed)).tolist()
    design: tuple[int, ...] = equidistant(pool.size, settings.start) if strategy != "random" else ()
    steps: list[DesignStep] = list(earlier)
    if steps:
        design = steps[-1].design + steps[-1].chosen
    reconstruction: Reconstruction | None = None
    bar = tqdm(total=len(counts), desc=f"design ({strategy})", initial=len(steps), disable=not progress)
    for index in range(len(steps), len(counts)):
        count = counts[index]
        start = time.perf_counter()
        if strategy == "equidistant":
            design = equidistant(pool.size, count)
        elif strategy == "random":
            design = tuple(order[:count])
        problem = pool.subproblem(design)
        fitter = method.warm_started(warm) if warm is not None else method
        reconstruction = fitter.reconstruct(problem, progress=False)
        warm = WarmStart.of(reconstruction) if settings.warm_start else None
        chosen: tuple[int, ...] = ()
        gains: tuple[float, ...] = ()
        if strategy in ADAPTIVE and index + 1 < len(counts):
            chosen, gains = choose(strategy, pool, posterior, reconstruction, problem, design,
                                   counts[index + 1] - count, settings)
        step = DesignStep(design, step_scores(reconstruction, problem), chosen, gains,
                          time.perf_counter() - start)
        steps.append(step)
        bar.update(1)
        if on_step is not None:
            on_step(step, warm)
        design = design + chosen
    bar.close()
    assert reconstruction is not None  # at least one step is run
    return DesignResult(strategy, tuple(steps), reconstruction)
