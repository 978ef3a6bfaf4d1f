"""Stopping rules on controlled synthetic traces: they stop where the maths says."""

from __future__ import annotations

import pytest
import torch

from invprior import registry
from invprior.core.interfaces import IterationState
from invprior.errors import ConfigError
from invprior.stopping.rules import ESWMV, DiscrepancyPrinciple, FixedBudget, Patience


def _state(k: int, image: float = 0.0, residual: float = 1.0, delta: float | None = 1.0, **extras) -> IterationState:
    return IterationState(k, torch.full((1, 1, 2, 2), float(image)), loss=residual**2,
                          residual_norm=torch.tensor([residual]),
                          noise_norm=None if delta is None else torch.tensor([delta]), extras=extras)


def _run(rule, states):
    for state in states:
        if rule.update(state):
            return state.iteration
    return None


def test_discrepancy_principle_stops_at_the_first_admissible_iterate():
    # r_k = 10 / k, delta = 1, tau = 1.5: first k with 10 / k <= 1.5 is k = 7
    rule = DiscrepancyPrinciple(tau=1.5)
    stopped = _run(rule, [_state(k, image=k, residual=10 / k) for k in range(1, 50)])
    assert stopped == 7 and rule.best_iteration == 7 and rule.best[0, 0, 0, 0].item() == 7
    assert "tau * delta" in rule.reason
    # exactly on the bound counts as admissible: r_k = 1.5 * delta at k = 4
    rule.reset()
    assert _run(rule, [_state(k, residual=6 / k) for k in range(1, 10)]) == 4


def test_discrepancy_principle_validates_tau_and_needs_the_noise_level():
    for tau in (1.0, 0.5, float("nan"), True):
        with pytest.raises(ConfigError):
            DiscrepancyPrinciple(tau=tau)
    with pytest.raises(ConfigError, match="noise level"):
        DiscrepancyPrinciple().update(_state(1, delta=None))
    with pytest.raises(ConfigError, match="positive noise level"):
        DiscrepancyPrinciple().update(_state(1, delta=0.0))


def test_eswmv_finds_the_flat_stretch_and_waits_for_patience():
    # x_k = 20 (1 - 1/k) (steps shrink, so the windowed variance keeps falling) up to k = 20,
    # then constant 19.5 for k = 21..40, then growing again
    values = [20 * (1 - 1 / k) for k in range(1, 21)] + [19.5] * 20 + [19.5 + (k - 40) ** 2 for k in range(41, 80)]
    rule = ESWMV(window=5, patience=10)
    stopped = _run(rule, [_state(k, image=v) for k, v in enumerate(values, start=1)])
    # the window 21..25 is the first with zero variance (found at k = 25); no strict decrease follows,
    # so the rule stops patience = 10 iterations later and keeps x_25
    assert stopped == 35
    assert rule.best_iteration == 25 and rule.best[0, 0, 0, 0].item() == 19.5
    assert rule.best_value == 0.0


def _under_fitted_trace() -> list[IterationState]:
    """A flat stretch (k = 21..40) while the residual is still 3 delta, jitter, the data reached at k = 51
    (residual delta), then a second flat stretch from k = 61."""
    values = ([20 * (1 - 1 / k) for k in range(1, 21)] + [19.5] * 20 + [19.5 + (-1) ** k * 0.5 for k in range(41, 61)]
              + [30.0] * 40)
    return [_state(k, image=v, residual=3.0 if k <= 50 else 1.0) for k, v in enumerate(values, start=1)]


def test_eswmv_with_discrepancy_tau_waits_until_the_data_are_fitted():
    plain = ESWMV(window=5, patience=15)
    assert _run(plain, _under_fitted_trace()) == 40 and plain.best_iteration == 25  # the under-fitted stretch
    rule = ESWMV(window=5, patience=15, discrepancy_tau=1.1)
    assert rule.requires_noise_level and not plain.requires_noise_level
    # 3 > 1.1 delta up to k = 50: no stop; the watch restarts at k = 51 and the window 61..65 is the new minimum
    assert _run(rule, _under_fitted_trace()) == 80
    assert rule.fitted_iteration == 51 and rule.best_iteration == 65 and rule.best[0, 0, 0, 0].item() == 30.0
    assert "iteration 51" in rule.reason
    # a fit that never reaches tau delta never stops and keeps its least-variance iterate
    rule.reset()
    never = [_state(s.iteration, image=float(s.image[0, 0, 0, 0]), residual=3.0) for s in _under_fitted_trace()]
    assert _run(rule, never) is None and rule.fitted_iteration is None and rule.best_iteration == 25
    # tau = 3 is met from the start: the plain rule's stop
    loose = ESWMV(window=5, patience=15, discrepancy_tau=3.0)
    assert _run(loose, _under_fitted_trace()) == 40 and loose.fitted_iteration == 1


def test_eswmv_discrepancy_tau_is_validated_and_needs_the_noise_level():
    for tau in (1.0, 0.5, float("nan")):
        with pytest.raises(ConfigError, match="discrepancy_tau"):
            ESWMV(discrepancy_tau=tau)
    with pytest.raises(ConfigError, match="noise level"):
        ESWMV(window=2, discrepancy_tau=1.1).update(_state(1, delta=None))


def test_eswmv_variance_is_the_windowed_variance_of_the_iterates():
    rule = ESWMV(window=3, patience=100)
    for k, v in enumerate([1.0, 2.0, 4.0], start=1):
        rule.update(_state(k, image=v))
    mean = 7 / 3
    expected = 4 * ((1 - mean) ** 2 + (2 - mean) ** 2 + (4 - mean) ** 2) / 3  # 4 pixels per image
    assert rule.statistic == pytest.approx(expected)


def test_patience_keeps_the_best_monitored_value():
    psnrs = [10, 12, 15, 14, 13, 15.0, 12, 11, 10, 9, 8]
    rule = Patience(monitor="psnr", mode="max", patience=4)
    stopped = _run(rule, [_state(k, image=k, psnr=v) for k, v in enumerate(psnrs, start=1)])
    assert stopped == 7 and rule.best_iteration == 3 and rule.best_value == 15
    with pytest.raises(ConfigError, match="available"):
        Patience(monitor="ssim").update(_state(1))


def test_fixed_budget_and_state_round_trip():
    rule = FixedBudget(iterations=3)
    assert _run(rule, [_state(k, image=k) for k in range(1, 10)]) == 3
    copy = FixedBudget(iterations=3)
    copy.load_state_dict(rule.state_dict())
    assert copy.best_iteration == 3 and torch.equal(copy.best, rule.best) and copy.reason == rule.reason


def test_every_rule_is_registered_and_builds_with_defaults():
    assert set(registry.names("stopping")) >= {"fixed", "discrepancy", "eswmv", "patience"}
    for name in registry.names("stopping"):
        assert registry.get("stopping", name).best is None
