"""The generator, regularizer, stopping-rule, method and posterior interfaces.

(``ForwardOperator`` lives in its own module.)
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from invprior.core.problem import InverseProblem
    from invprior.core.reconstruction import Reconstruction, WarmStart


class Generator(nn.Module, ABC):
    """A network ``x = G_theta(z)`` producing images of shape ``(B, *output_shape)``."""

    output_shape: tuple[int, ...] | None  # None: fully convolutional, the input fixes the size

    @abstractmethod
    def forward(self, z: Tensor) -> Tensor:
        """Map the input ``z`` to an image batch."""

    @abstractmethod
    def make_input(self, problem: InverseProblem, seed: int = 0) -> Tensor:
        """The fixed network input for ``problem``: seeded noise or an operator-based image."""


class Regularizer(ABC):
    """A penalty ``R(x)`` returning one differentiable value per image, shape ``(B,)``."""

    @abstractmethod
    def __call__(self, x: Tensor) -> Tensor:
        """Evaluate ``R`` on ``x`` of shape ``(B, C, H, W)``."""


@dataclass
class IterationState:
    """What an iterative method tells its stopping rule after iteration ``iteration``."""

    iteration: int
    image: Tensor
    loss: float
    residual_norm: Tensor
    noise_norm: Tensor | None = None
    extras: dict[str, float] = field(default_factory=dict)


class StoppingRule(ABC):
    """Decides when an iterative fit stops and which iterate is kept.

    ``update`` is called once per iteration and returns True when the fit should stop; ``best``
    is the iterate the rule judges best so far (``best_iteration`` its index), ``reason`` says
    in words why the rule stopped and ``statistic`` is the quantity it watches (for traces).
    Rules that need the noise level set ``requires_noise_level``.
    """

    requires_noise_level: bool = False
    best: Tensor | None = None
    best_iteration: int = -1
    reason: str = ""
    statistic: float | None = None

    @abstractmethod
    def update(self, state: IterationState) -> bool:
        """Record one iterate; True means stop now."""

    def reset(self) -> None:
        """Forget everything seen so far, so one rule object can serve several runs."""
        self.best, self.best_iteration, self.reason, self.statistic = None, -1, "", None

    def _keep(self, state: IterationState) -> None:
        self.best, self.best_iteration = state.image.detach().clone(), state.iteration

    def state_dict(self) -> dict:
        """Everything the rule has recorded, for checkpoints."""
        return copy.deepcopy(vars(self))

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned."""
        vars(self).update(copy.deepcopy(state))


class Method(ABC):
    """A reconstruction method ``y -> x``; registered under ``invprior.methods`` so configs can name it."""

    name: str = "method"

    @abstractmethod
    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        """Reconstruct ``problem.x`` from ``problem.y``; ``progress`` shows a progress bar on long loops."""

    def checkpoint_files(self, batch: int) -> list[Path]:
        """The state files a run on ``batch`` images writes to resume from (none for a method without them)."""
        return []

    def warm_started(self, start: WarmStart) -> Method:
        """This method, refitting from ``start`` (an earlier fit of the same object, e.g. before more
        measurements came in); a method without weights to carry over starts afresh: itself."""
        return self


class PosteriorApproximation(ABC):
    """An approximate posterior over images around a fitted reconstruction."""

    @property
    def _owner(self) -> str:
        """The class name, which starts every error message."""
        return type(self).__name__

    @abstractmethod
    def fit(self, reconstruction: Reconstruction, problem: InverseProblem) -> PosteriorApproximation:
        """Fit the approximation (e.g. its hyperparameters) and return ``self``."""

    @property
    @abstractmethod
    def mean(self) -> Tensor:
        """Predictive mean image, ``(B, *image_shape)``."""

    @property
    @abstractmethod
    def std(self) -> Tensor:
        """Pixel-wise predictive standard deviation, ``(B, *image_shape)``."""

    @abstractmethod
    def sample(self, n: int, seed: int = 0) -> Tensor:
        """``n`` posterior samples, ``(n, B, *image_shape)``."""

    def log_likelihood(self, x_true: Tensor) -> Tensor:
        """Predictive log-density of ``x_true`` per pixel, one value per image: by default the mean over
        pixels of the marginal ``log N(x_i; mean_i, std_i^2)`` (the ``p = 1`` test log-likelihood; ``std``
        clamped at ``1e-12``)."""
        mean = self.mean.double()
        std = self.std.double().clamp_min(1e-12)
        x = x_true.to(device=mean.device, dtype=torch.float64)
        return torch.distributions.Normal(mean, std).log_prob(x).flatten(1).mean(dim=1)

