"""The ``InverseProblem`` container: operator, measurement, noise level, optional truth or reference."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from invprior.core.constraints import ImageConstraints
from invprior.core.noise import GaussianNoise, estimate_noise_std
from invprior.core.operator import ForwardOperator, check_batch
from invprior.core.task import SegmentationTask
from invprior.errors import ConfigError, NonFiniteInputError, ShapeError, WrongTypeError


def _per_image(value: float | Tensor | None, batch: int, like: Tensor, what: str) -> Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch).clone()
    if t.numel() != batch:
        raise ShapeError(f"{what} must be a scalar or have one entry per image ({batch}), got {t.numel()}")
    if not torch.isfinite(t).all() or (t < 0).any():
        raise ConfigError(f"{what} must be finite and >= 0, got {t.tolist()}")
    return t


@dataclass
class InverseProblem:
    """``y = A(x) + eta``: what a reconstruction method is given.

    ``noise_std`` is the per-entry std ``s`` of ``eta``; ``noise_norm`` is ``delta = ||eta||``
    per image, which the discrepancy principle needs. When only ``noise_std`` is known,
    ``delta`` defaults to its expectation ``s * sqrt(m)`` with ``m`` entries per measurement;
    when neither is, methods that need it estimate it from ``y`` (``ensure_noise_level``).
    ``x_true`` is a ground-truth image on the operator's grid; ``reference`` a reference
    segmentation (integer labels, shape ``(B, H, W)``, any resolution, covering the same field of
    view as the image grid and oriented like the image arrays), for task scores such as the MCC.
    ``constraints`` is prior knowledge of the image (bounds, support) that methods enforce; ``task`` says how
    a reconstruction is segmented and scored against ``reference`` (default: Otsu classes in value order, MCC).
    """

    operator: ForwardOperator
    y: Tensor
    noise_std: Tensor | float | None = None
    noise_norm: Tensor | float | None = None
    x_true: Tensor | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    reference: Tensor | None = None
    constraints: ImageConstraints | None = None
    task: SegmentationTask | None = None

    def __post_init__(self) -> None:
        op = self.operator
        if not isinstance(op, ForwardOperator):
            raise WrongTypeError(f"operator must be a ForwardOperator, got {type(op).__name__}")
        check_batch(self.y, op.range_shape, "measurement y", f"InverseProblem({op.name})")
        if not torch.isfinite(self.y).all():
            raise NonFiniteInputError("measurement y contains NaN or infinite values")
        batch = self.y.shape[0]
        self.noise_std = _per_image(self.noise_std, batch, self.y, "noise_std")
        self.noise_norm = _per_image(self.noise_norm, batch, self.y, "noise_norm")
        if self.noise_norm is None and self.noise_std is not None:
            self.noise_norm = self.noise_std * float(self.y[0].numel()) ** 0.5
        if self.x_true is not None:
            check_batch(self.x_true, op.domain_shape, "ground truth x_true", f"InverseProblem({op.name})")
            if not torch.isfinite(self.x_true).all():
                raise NonFiniteInputError("ground truth x_true contains NaN or infinite values")
            self.x_true = self.x_true.to(device=self.y.device, dtype=self.y.dtype)
            if self.x_true.shape[0] != batch:
                raise ShapeError(f"x_true has {self.x_true.shape[0]} images but y has {batch}")
        if self.reference is not None:
            ref = torch.as_tensor(self.reference)
            if ref.ndim != 3 or ref.shape[0] != batch or ref.is_floating_point() or ref.is_complex():
                raise ShapeError(f"reference must hold integer labels of shape (B={batch}, H, W), got "
                                 f"{tuple(ref.shape)} {ref.dtype}")
            self.reference = ref.to(device=self.y.device, dtype=torch.int64)
        if self.constraints is not None:
            if not isinstance(self.constraints, ImageConstraints):
                raise WrongTypeError(f"constraints must be ImageConstraints, got {type(self.constraints).__name__}")
            self.constraints.check_grid(op.domain_shape, f"InverseProblem({op.name})")
        if self.task is not None and not isinstance(self.task, SegmentationTask):
            raise WrongTypeError(f"task must be a SegmentationTask, got {type(self.task).__name__}")

    def _map(self, transform: Callable[[Tensor], Tensor],
             labels: Callable[[Tensor], Tensor] | None = None) -> InverseProblem:
        def apply(t: Tensor | float | None) -> Tensor | None:
            """``transform(t)``, None for None (the noise levels are per-image tensors after ``__post_init__``)."""
            return transform(t) if isinstance(t, Tensor) else None

        relabel = labels or (lambda t: t)
        return InverseProblem(self.operator, transform(self.y), apply(self.noise_std), apply(self.noise_norm),
                              apply(self.x_true), dict(self.metadata),
                              None if self.reference is None else relabel(self.reference), self.constraints,
                              self.task)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> InverseProblem:
        """A copy with its tensors on ``device`` and in ``dtype`` (the operator follows its inputs)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype), lambda t: t.to(device=device))

    def select(self, index: int) -> InverseProblem:
        """The problem of image ``index`` alone (a batch of one)."""
        return self._map(lambda t: t[index: index + 1])

    def with_estimated_noise(self) -> InverseProblem:
        """A copy whose ``noise_std`` is estimated from ``y`` (``estimate_noise_std``), recorded in the metadata
        as ``noise = {"std": [...], "estimated": True}``."""
        std = estimate_noise_std(self.y)
        meta = {**self.metadata, "noise": {"std": std.tolist(), "estimated": True}}
        return InverseProblem(self.operator, self.y, noise_std=std, x_true=self.x_true, metadata=meta,
                              reference=self.reference, constraints=self.constraints, task=self.task)

    def scaled(self, factor: Tensor | float) -> InverseProblem:
        """The same problem with the image and the data multiplied by ``factor > 0`` (a number or one per
        image): ``y``, the noise level, ``x_true`` and the constraints' bounds."""
        factor = torch.as_tensor(factor, dtype=torch.float64).reshape(-1)
        if factor.numel() not in (1, self.batch_size) or not bool((factor > 0).all()):
            raise ConfigError(f"scaled: factor must be > 0, one number or one per image, got {factor.tolist()}")
        if self.constraints is not None and factor.numel() > 1 and not bool((factor == factor[0]).all()):
            raise ConfigError("scaled: a problem with constraints is scaled by one factor for the whole batch")
        def per_image(t: Tensor) -> Tensor:
            return t * factor.to(device=t.device, dtype=t.dtype).view(-1, *([1] * (t.ndim - 1)))

        def scale(t: Tensor | float | None) -> Tensor | None:
            """``per_image(t)``, None for None (the noise levels are per-image tensors after ``__post_init__``)."""
            return per_image(t) if isinstance(t, Tensor) else None

        return InverseProblem(self.operator, per_image(self.y), scale(self.noise_std), scale(self.noise_norm),
                              scale(self.x_true), dict(self.metadata), self.reference,
                              None if self.constraints is None else self.constraints.scaled(float(factor[0])),
                              self.task)

    @property
    def noise_estimated(self) -> bool:
        """Whether the noise level was estimated from the data rather than given."""
        return bool(self.metadata.get("noise", {}).get("estimated", False))

    @property
    def batch_size(self) -> int:
        return int(self.y.shape[0])

    def residual_norm(self, x: Tensor) -> Tensor:
        """``||A(x) - y||`` per image, shape ``(B,)``."""
        return (self.operator(x) - self.y).flatten(1).norm(dim=1)

    @classmethod
    def simulate(cls, operator: ForwardOperator, x_true: Tensor, noise: GaussianNoise, seed: int = 0,
                 clean: Tensor | None = None, metadata: dict[str, Any] | None = None) -> InverseProblem:
        """Simulate ``y = A x_true + eta`` with seeded Gaussian noise.

        ``clean`` overrides ``A x_true`` (e.g. data projected from a finer grid to avoid the
        inverse crime); ``noise_norm`` records the realised ``||eta||`` per image.
        """
        check_batch(x_true, operator.domain_shape, "ground truth x_true", f"simulate({operator.name})")
        if not torch.isfinite(x_true).all():
            raise NonFiniteInputError("ground truth x_true contains NaN or infinite values")
        with torch.no_grad():
            clean = operator(x_true) if clean is None else clean
        eta, std = noise.sample(clean, seed)
        meta = {"seed": seed, "noise": {"std": noise.std, "relative": noise.relative}, **(metadata or {})}
        return cls(operator, clean + eta, noise_std=std, noise_norm=eta.flatten(1).norm(dim=1),
                   x_true=x_true, metadata=meta)


class NoiseEstimateWarning(UserWarning):
    """A method needed the noise level, the problem had none, and it was estimated from the data."""


def ensure_noise_level(problem: InverseProblem, owner: str) -> InverseProblem:
    """``problem`` when it knows its noise level, else ``problem.with_estimated_noise()`` and a
    ``NoiseEstimateWarning`` that names ``owner`` and the estimate."""
    if problem.noise_norm is not None:
        return problem
    estimated = problem.with_estimated_noise()
    assert isinstance(estimated.noise_std, Tensor)  # set from estimate_noise_std, one value per image
    values = ", ".join(f"{float(s):.4g}" for s in estimated.noise_std)
    warnings.warn(f"{owner}: no noise level given; estimated from the data: noise std {values} "
                  "(invprior.core.noise.estimate_noise_std)", NoiseEstimateWarning, stacklevel=3)
    return estimated
