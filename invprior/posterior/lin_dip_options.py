"""lin-DIP's settings in four groups: the linear-algebra solver, the weight prior, the evidence fit of its
hyperparameters and the predictive (mean, samples, image noise).

Each group is a frozen dataclass that validates itself; ``options(group, value)`` turns a mapping (a
configuration table) into one, refusing unknown keys with the close matches.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from invprior.errors import ConfigError
from invprior.validation import DTYPES, choice, positive_int, real

SOLVERS = ("auto", "exact", "scalable", "subspace")
HYPERPRIORS = ("none", "tv_pred_cp")
NOISE = ("learn", "known", "auto")
IMAGE_NOISE = ("none", "projected")
PREDICTIVE_MEANS = ("auto", "network", "linearized")
OWNER = "LinearizedLaplace"


def _name(group: str, field: str) -> str:
    return f"{OWNER}: {group}.{field}"


@dataclass(frozen=True)
class SolverOptions:
    """How the linear algebra runs. ``kind``: ``"exact"`` (dense ``J`` and ``K``, Cholesky; images up to
    ``max_pixels``), ``"scalable"`` (matrix-free CG and Matheron samples), ``"subspace"`` (closed form in the
    rank-``subspace_rank`` leading eigenspace of ``J Sigma J^T``) or ``"auto"`` (exact up to ``max_pixels``, else
    scalable). ``dtype`` of the network products on the matrix-free paths (the exact path is float64);
    ``batch`` vectors per batch of network products (``"auto"``: 8 on a CPU, 32 on a GPU)."""

    kind: str = "auto"
    max_pixels: int = 1024
    dtype: str = "float64"
    subspace_rank: int = 1000
    batch: int | str = "auto"

    def __post_init__(self) -> None:
        choice(self.kind, SOLVERS, _name("solver", "kind"))
        positive_int(self.max_pixels, _name("solver", "max_pixels"))
        choice(self.dtype, DTYPES, _name("solver", "dtype"))
        positive_int(self.subspace_rank, _name("solver", "subspace_rank"))
        if self.batch != "auto":
            positive_int(self.batch, _name("solver", "batch"))

    def resolve(self, pixels: int) -> str:
        """The solver for an image of ``pixels`` pixels (``"auto"``: exact up to ``max_pixels``)."""
        if self.kind == "auto":
            return "exact" if pixels <= self.max_pixels else "scalable"
        if self.kind == "exact" and pixels > self.max_pixels:
            raise ConfigError(f"{OWNER}: the exact solver forms dense n x n matrices; n = {pixels} exceeds "
                              f"solver.max_pixels = {self.max_pixels} (use solver='scalable')")
        return self.kind


@dataclass(frozen=True)
class PriorOptions:
    """The zero-mean Gaussian weight prior ``Sigma`` (``MaternBlockPrior``): its starting block ``variance``
    (``"auto"``: the variance at which it explains the evidence's energy, ``tr(A J Sigma J^T A^T) = ||r||^2 - m
    s^2``) and ``lengthscale``; ``parameters``: the names of the network parameters it covers (default all);
    ``pre_sigmoid`` linearises before the output sigmoid. ``hyperprior="tv_pred_cp"`` adds the TV-PredCP
    hyperprior on the lengthscales (TV-MAP) with rate ``tv_rate`` (default ``1 / TV(x*)``) from ``tv_samples``
    draws."""

    variance: float | str = 1.0
    lengthscale: float = 0.1
    parameters: tuple[str, ...] | None = None
    pre_sigmoid: bool = False
    hyperprior: str = "none"
    tv_rate: float | None = None
    tv_samples: int = 4

    def __post_init__(self) -> None:
        if self.variance != "auto":
            real(self.variance, _name("prior", "variance") + " (a number > 0 or 'auto')", minimum=0.0, strict=True)
        real(self.lengthscale, _name("prior", "lengthscale"), minimum=0.0, strict=True)
        if self.parameters is not None:
            object.__setattr__(self, "parameters", tuple(self.parameters))
        object.__setattr__(self, "pre_sigmoid", bool(self.pre_sigmoid))
        choice(self.hyperprior, HYPERPRIORS, _name("prior", "hyperprior"))
        if self.tv_rate is not None:
            real(self.tv_rate, _name("prior", "tv_rate"), minimum=0.0, strict=True)
        positive_int(self.tv_samples, _name("prior", "tv_samples"))


@dataclass(frozen=True)
class EvidenceOptions:
    """The type-II maximum-likelihood fit of the hyperparameters (stored as logarithms): Adam with ``lr`` for
    ``iterations`` steps. ``noise``: ``"learn"`` fits the noise variance too, ``"known"`` holds it at the problem's
    noise level, ``"auto"`` holds it when the problem has one (a full-row-rank ``A J``, e.g. denoising, lets the
    evidence explain the data by a vanishing noise variance). Scalable solver: Hutchinson gradients with
    ``num_probes`` probes, CG to ``cg_rtol`` within ``cg_iterations``, preconditioned by a rank-
    ``preconditioner_rank`` Nystrom approximation refreshed every ``precondition_every`` steps."""

    iterations: int = 200
    lr: float = 0.01
    noise: str = "auto"
    num_probes: int = 10
    cg_iterations: int = 100
    cg_rtol: float = 1e-2
    preconditioner_rank: int = 1000
    precondition_every: int = 100

    def __post_init__(self) -> None:
        positive_int(self.iterations, _name("evidence", "iterations"))
        real(self.lr, _name("evidence", "lr"), minimum=0.0, strict=True)
        choice(self.noise, NOISE, _name("evidence", "noise"))
        positive_int(self.num_probes, _name("evidence", "num_probes"))
        positive_int(self.cg_iterations, _name("evidence", "cg_iterations"))
        real(self.cg_rtol, _name("evidence", "cg_rtol"), minimum=0.0, strict=True)
        positive_int(self.preconditioner_rank, _name("evidence", "preconditioner_rank"))
        positive_int(self.precondition_every, _name("evidence", "precondition_every"))


@dataclass(frozen=True)
class SamplingOptions:
    """The predictive. ``num_samples`` draws (scalable: Matheron samples, CG to ``cg_rtol``; subspace: draws of
    the prior's remainder). ``refresh_preconditioner`` recomputes the Nystrom preconditioner at the fitted
    hyperparameters before sampling, at rank ``preconditioner_rank`` (default the evidence fit's): it pays for
    itself from about ``rank / 3`` samples on. ``image_noise`` adds ``eta^2 I``: ``"projected"``, ``eta^2 = s^2 / n
    sum_{i <= k} sigma_i(A)^{-2}`` over the ``k = min(image_noise_rank, m / 2)`` largest singular values of ``A``; a
    number, ``eta`` itself; or ``"none"``. ``mean``: ``"network"`` keeps ``x*``, ``"linearized"`` takes the linearised
    model's posterior mean, ``"auto"`` takes it when ``||y - A(x*)|| > max(discrepancy_tau, 1 + 2 sqrt(2 / m))``
    times the noise (the fit leaves more than noise, by the discrepancy principle)."""

    num_samples: int = 1000
    cg_rtol: float = 1e-4
    refresh_preconditioner: bool = True
    preconditioner_rank: int | None = None
    image_noise: str | float = "projected"
    image_noise_rank: int = 100
    mean: str = "auto"
    discrepancy_tau: float = 1.1

    def __post_init__(self) -> None:
        positive_int(self.num_samples, _name("sampling", "num_samples"))
        real(self.cg_rtol, _name("sampling", "cg_rtol"), minimum=0.0, strict=True)
        object.__setattr__(self, "refresh_preconditioner", bool(self.refresh_preconditioner))
        if self.preconditioner_rank is not None:
            positive_int(self.preconditioner_rank, _name("sampling", "preconditioner_rank"))
        if isinstance(self.image_noise, str):
            choice(self.image_noise, IMAGE_NOISE, _name("sampling", "image_noise") + " (or a number >= 0, eta)")
        else:
            real(self.image_noise, _name("sampling", "image_noise"), minimum=0.0)
        positive_int(self.image_noise_rank, _name("sampling", "image_noise_rank"))
        choice(self.mean, PREDICTIVE_MEANS, _name("sampling", "mean"))
        real(self.discrepancy_tau, _name("sampling", "discrepancy_tau"), minimum=1.0)


Options = TypeVar("Options", SolverOptions, PriorOptions, EvidenceOptions, SamplingOptions)


def options(group: str, kind: type[Options], value: Options | Mapping[str, Any] | None) -> Options:
    """``value`` as a ``kind``: the instance itself, the defaults for ``None``, or built from a mapping whose
    keys must be ``kind``'s fields."""
    if value is None:
        return kind()
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise ConfigError(f"{OWNER}: {group} must be a {kind.__name__} or a table of its fields, got {value!r}")
    fields = [f.name for f in dataclasses.fields(kind)]
    unknown = [key for key in value if key not in fields]
    if unknown:
        close = difflib.get_close_matches(unknown[0], fields, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{OWNER}: {group} has no setting {unknown[0]!r}{hint}; its settings are {', '.join(fields)}")
    return kind(**value)
