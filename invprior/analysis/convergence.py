"""Convergence measures of iterative reconstructions: steady PSNR and rise time.

Educated DIP's measures: the *steady* PSNR is the median over the last part of a run, and the
*rise time* the first logged iteration whose PSNR is within ``tolerance`` dB of a target
(by default the run's own steady PSNR).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from invprior.errors import ConfigError


def steady_psnr(psnr: Sequence[float], tail: float = 0.1) -> float:
    """Median of the last ``tail`` fraction (at least one value) of a PSNR trace."""
    if not 0 < tail <= 1:
        raise ConfigError(f"steady_psnr: tail must lie in (0, 1], got {tail}")
    values = [float(v) for v in psnr if math.isfinite(float(v))]
    if not values:
        raise ConfigError("steady_psnr: the trace holds no finite PSNR values")
    last = sorted(values[-max(1, math.ceil(tail * len(values))):])
    middle = len(last) // 2
    return last[middle] if len(last) % 2 else 0.5 * (last[middle - 1] + last[middle])


def rise_time(iterations: Sequence[float], psnr: Sequence[float], target: float | None = None,
              tolerance: float = 0.1) -> int | None:
    """The first iteration whose PSNR is at least ``target - tolerance`` (target: the steady PSNR);
    ``None`` when the trace never gets there."""
    if len(iterations) != len(psnr):
        raise ConfigError(f"rise_time: {len(iterations)} iterations but {len(psnr)} PSNR values")
    target = steady_psnr(psnr) if target is None else float(target)
    for iteration, value in zip(iterations, psnr):
        if float(value) >= target - tolerance:
            return int(iteration)
    return None
