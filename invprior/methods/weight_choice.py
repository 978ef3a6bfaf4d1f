"""Choosing a regularisation weight per image over a grid: held-out cross-validation, the discrepancy principle,
or the oracle PSNR."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from numbers import Real

import torch
from torch import Tensor

from invprior.core.problem import InverseProblem
from invprior.errors import ConfigError
from invprior.methods.cross_validation import held_out_errors
from invprior.metrics import psnr
from invprior.validation import real

RULES = ("cv", "discrepancy", "oracle")


def check_weight(weight: float | str, owner: str) -> float | str:
    """A finite positive number, or the name of a selection rule."""
    if isinstance(weight, str):
        if weight not in RULES:
            raise ConfigError(f"{owner}: weight must be a positive number or one of {RULES}, got {weight!r}")
        return weight
    if not isinstance(weight, Real):
        raise ConfigError(f"{owner}: weight must be a positive number or one of {RULES}, got {weight!r}")
    return real(weight, f"{owner}: weight", minimum=0.0, strict=True)


def check_rule_inputs(problem: InverseProblem, rule: str) -> None:
    """Refuse a rule whose ingredient (noise level or ground truth) is missing."""
    if rule == "discrepancy":
        if not isinstance(problem.noise_norm, Tensor):  # None, or a per-image tensor after __post_init__
            raise ConfigError("weight='discrepancy' needs the noise level: give noise_std or noise_norm on the problem")
        if bool((problem.noise_norm <= 0).any()):
            raise ConfigError("weight='discrepancy' needs a positive noise level; the problem has noise_norm = 0")
    if rule == "oracle" and problem.x_true is None:
        raise ConfigError("weight='oracle' needs the ground truth x_true on the problem")


def choose_weight(solve: Callable[[InverseProblem, Tensor, Tensor | None], Tensor], problem: InverseProblem,
                  scale: Tensor, factors: Sequence[float], rule: str,
                  tau: float = 1.1) -> tuple[Tensor, Tensor, list[dict]]:
    """Solve with weights ``scale * f`` (one weight per image) for every ascending factor ``f``, warm-started
    (``solve(problem, weight, warm)``), and pick one per image.

    ``cv``: the smallest held-out prediction error (``invprior.methods.cross_validation``; the grid is also
    solved once per fold). ``discrepancy``: the largest weight with ``||A x - y|| <= tau * delta`` (the
    smallest if none qualifies). ``oracle``: the highest PSNR against ``x_true`` (for benchmarks only).
    Returns ``(images, chosen weights (B,), table of weights / residuals / PSNRs / CV errors per grid point)``.
    """
    check_rule_inputs(problem, rule)
    scale = scale.detach().to(dtype=torch.float64, device="cpu")
    factors = sorted(factors)
    if not factors:
        raise ConfigError("choose_weight: give at least one weight factor")
    weights = [(scale * f).to(device=problem.y.device, dtype=problem.y.dtype) for f in factors]
    cv_errors = held_out_errors(solve, problem, weights) if rule == "cv" else None
    chosen_x: Tensor | None = None
    chosen_w = torch.zeros(problem.batch_size, dtype=torch.float64)
    best = torch.full((problem.batch_size,), -float("inf"), dtype=torch.float64)  # the score a choice maximises
    table: list[dict] = []
    x = None
    for index, factor in enumerate(factors):
        weight = scale * factor
        x = solve(problem, weights[index], x)
        residual = problem.residual_norm(x).detach().cpu().double()
        quality = psnr(x, problem.x_true).detach().cpu().double() if problem.x_true is not None else None
        table.append({"weight": weight.tolist(), "residual": residual.tolist(),
                      "psnr": quality.tolist() if quality is not None else None,
                      "cv_error": cv_errors[index].tolist() if cv_errors is not None else None})
        if rule == "discrepancy":
            assert isinstance(problem.noise_norm, Tensor)  # checked by check_rule_inputs
            take = residual <= tau * problem.noise_norm.detach().cpu().double()
            if chosen_x is None:
                take = torch.ones_like(take)
        else:
            score = _score(rule, quality, cv_errors, index)
            take = score > best
            best = torch.where(take, score, best)
        mask = take.to(x.device).view(-1, *([1] * (x.ndim - 1)))
        chosen_x = x.detach().clone() if chosen_x is None else torch.where(mask, x.detach(), chosen_x)
        chosen_w = torch.where(take, weight, chosen_w)
    assert chosen_x is not None  # factors is not empty
    return chosen_x, chosen_w, table


def _score(rule: str, quality: Tensor | None, cv_errors: Tensor | None, index: int) -> Tensor:
    """What the ``oracle`` (PSNR) or ``cv`` (minus the held-out error) rule maximises at grid point ``index``."""
    if rule == "oracle":
        assert quality is not None  # x_true checked by check_rule_inputs
        return quality
    assert cv_errors is not None  # computed for rule 'cv'
    return -cv_errors[index]
