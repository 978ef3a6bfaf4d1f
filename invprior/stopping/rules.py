"""The built-in stopping rules. Each keeps the iterate it judges best and says why it stopped."""

from __future__ import annotations

import math
from collections import deque

import torch

from invprior.core.interfaces import IterationState, StoppingRule
from invprior.errors import ConfigError
from invprior.validation import choice, positive_int, real


def _residual_and_noise(state: IterationState, needs: str) -> tuple[float, float]:
    """``(||A x_k - y||, delta)`` of the worst batch item; ``needs`` names the caller in the error raised when the
    problem carries no positive noise level ``delta``."""
    if state.noise_norm is None or bool((state.noise_norm <= 0).any()):
        raise ConfigError(f"{needs} needs a positive noise level delta on the problem")
    return float(state.residual_norm.max()), float(state.noise_norm.max())


class FixedBudget(StoppingRule):
    """Stop after ``iterations`` iterations and keep the last iterate; ``None`` (the default) runs the
    method's own budget (DIP's ``max_iterations``)."""

    def __init__(self, iterations: int | None = None) -> None:
        self.iterations = None if iterations is None else positive_int(iterations, "FixedBudget: iterations")
        self.reset()

    def update(self, state: IterationState) -> bool:
        self._keep(state)
        if self.iterations is not None and state.iteration >= self.iterations:
            self.reason = f"fixed budget of {self.iterations} iterations reached"
            return True
        return False


class DiscrepancyPrinciple(StoppingRule):
    """Stop at the first ``k`` with ``||A x_k - y|| <= tau * delta`` (Morozov; ``tau > 1``).

    ``delta`` is the noise norm recorded on the problem. Until the bound is met the latest
    iterate is kept, so a run that never meets it returns its last iterate.
    """

    requires_noise_level = True

    def __init__(self, tau: float = 1.1) -> None:
        self.tau = real(tau, "DiscrepancyPrinciple: tau", minimum=1.0, strict=True)
        self.reset()

    def update(self, state: IterationState) -> bool:
        residual, delta = _residual_and_noise(state, "the discrepancy principle")
        self._keep(state)
        self.statistic = residual / delta
        if residual <= self.tau * delta:
            self.reason = (f"discrepancy principle: ||Ax - y|| = {residual:.4g} <= tau * delta = "
                           f"{self.tau:g} * {delta:.4g} at iteration {state.iteration}")
            return True
        return False


class _Improvement(StoppingRule):
    """Bookkeeping shared by rules that keep the best value of a watched quantity and stop after
    ``patience`` iterations without an improvement larger than ``min_delta``."""

    mode: str = "min"
    min_delta: float = 0.0
    patience: int = 1

    def reset(self) -> None:
        super().reset()
        self.best_value = math.inf if self.mode == "min" else -math.inf
        self._since_best = 0

    def _watch(self, state: IterationState, value: float) -> bool:
        """Record ``value`` for ``state``; True when patience has run out."""
        self.statistic = value
        if self.mode == "min":
            better = value < self.best_value - self.min_delta
        else:
            better = value > self.best_value + self.min_delta
        if better:
            self.best_value, self._since_best = value, 0
            self._keep(state)
        else:
            self._since_best += 1
        return self._since_best >= self.patience


class ESWMV(_Improvement):
    """Early stopping by windowed moving variance (Wang, Li, Zhuang, Chen, Liang, Sun 2021).

    ``VAR_t = 1/W sum_{i=t-W+1}^{t} ||x_i - mean||^2`` over the last ``W = window`` iterates;
    the kept iterate is ``x_t`` at the smallest ``VAR_t`` seen so far (so the kept image and the
    network weights that produced it belong together); the fit stops when that minimum has not
    improved for ``patience`` iterations. Needs no noise level.

    ``discrepancy_tau`` (needs the noise norm ``delta`` on the problem) starts the watch only once the fit has
    reached the data, ``||A x_k - y|| <= tau delta`` (Morozov): before that the moving variance measures the
    optimiser's jitter, not the onset of noise fitting, and an early minimum would stop an under-fitted run.
    Until then the least-variance iterate is kept provisionally and the rule never stops; at the first such
    ``k`` the minimum is forgotten and ES-WMV starts afresh.
    """

    def __init__(self, window: int = 100, patience: int = 1000, discrepancy_tau: float | None = None) -> None:
        self.window = positive_int(window, "ESWMV: window")
        if self.window < 2:
            raise ConfigError(f"{type(self).__name__}: "
                              f"window must be >= 2 (the variance of a single iterate is always 0)")
        self.patience = positive_int(patience, "ESWMV: patience")
        self.discrepancy_tau = None if discrepancy_tau is None else real(
            discrepancy_tau, "ESWMV: discrepancy_tau", minimum=1.0, strict=True)
        self.requires_noise_level = self.discrepancy_tau is not None
        self.reset()

    def reset(self) -> None:
        super().reset()
        self._buffer: deque[torch.Tensor] = deque()
        self._sum: torch.Tensor | None = None  # running sums over the window, float64: sum x_i, sum ||x_i||^2
        self._sum_squares = 0.0
        self._updates = 0
        self.fitted_iteration: int | None = None  # first k with ||A x_k - y|| <= tau delta (discrepancy_tau)

    def _add(self, image: torch.Tensor, sign: float) -> None:
        self._sum = sign * image if self._sum is None else self._sum + sign * image
        self._sum_squares += sign * float(image.pow(2).sum())

    def _reached_data(self, state: IterationState) -> bool:
        """Whether the discrepancy condition holds by now (always, without ``discrepancy_tau``); the first
        iterate that meets it restarts the watch."""
        if self.discrepancy_tau is None or self.fitted_iteration is not None:
            return True
        residual, delta = _residual_and_noise(state, "ESWMV: discrepancy_tau")
        if residual <= self.discrepancy_tau * delta:
            self.fitted_iteration = state.iteration
            self.best_value, self._since_best = math.inf, 0
            return True
        return False

    def update(self, state: IterationState) -> bool:
        reached = self._reached_data(state)
        image = state.image.detach().double()
        self._buffer.append(image)
        self._add(image, 1.0)
        if len(self._buffer) > self.window:
            self._add(self._buffer.popleft(), -1.0)
        self._updates += 1
        if self._updates % self.window == 0:  # recompute exactly now and then: no drift from the running sums
            stack = torch.stack(list(self._buffer))
            self._sum, self._sum_squares = stack.sum(dim=0), float(stack.pow(2).sum())
        if len(self._buffer) < self.window:
            return False
        # sum_i ||x_i - mean||^2 = sum_i ||x_i||^2 - ||sum_i x_i||^2 / W
        assert self._sum is not None  # a full window has been added
        variance = max(self._sum_squares - float(self._sum.pow(2).sum()) / self.window, 0.0) / self.window
        if self._watch(state, variance) and reached:
            since = "" if self.discrepancy_tau is None else (
                f" since the fit reached ||Ax - y|| <= {self.discrepancy_tau:g} delta at iteration "
                f"{self.fitted_iteration}")
            self.reason = (f"ES-WMV: the moving variance (window {self.window}) has not decreased for "
                           f"{self.patience} iterations{since}; kept iteration {self.best_iteration}")
            return True
        return False


class Patience(_Improvement):
    """Keep the iterate with the best monitored value; stop after ``patience`` iterations without
    an improvement larger than ``min_delta``.

    ``monitor`` is ``"loss"``, ``"residual"`` or any key of the state's ``extras`` (e.g. a
    validation error, or ``"psnr"`` when the ground truth is known); ``mode`` is ``"min"`` or ``"max"``.
    """

    def __init__(self, monitor: str = "loss", mode: str = "min", patience: int = 500, min_delta: float = 0.0) -> None:
        choice(mode, ("min", "max"), "Patience: mode")
        self.monitor, self.mode = monitor, mode
        self.patience = positive_int(patience, "Patience: patience")
        self.min_delta = real(min_delta, "Patience: min_delta", minimum=0.0)
        self.reset()

    def _value(self, state: IterationState) -> float:
        if self.monitor == "loss":
            return state.loss
        if self.monitor == "residual":
            return float(state.residual_norm.max())
        if self.monitor not in state.extras:
            raise ConfigError(f"{type(self).__name__}: monitored quantity {self.monitor!r} is not available; "
                              f"available: loss, residual, {', '.join(state.extras) or '(no extras)'}")
        return float(state.extras[self.monitor])

    def update(self, state: IterationState) -> bool:
        if self._watch(state, self._value(state)):
            self.reason = (f"patience: {self.monitor} has not improved for {self.patience} iterations; "
                           f"kept iteration {self.best_iteration} ({self.monitor} = {self.best_value:.4g})")
            return True
        return False
