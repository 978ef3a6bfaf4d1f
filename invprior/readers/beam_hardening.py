"""Beam-hardening linearisation of measured X-ray sinograms, calibrated on a uniform disc.

A polychromatic beam hardens as it crosses material: the measured line integral ``p`` grows
more slowly than the path length, and a linear reconstruction shows cupping (a uniform object
looks less dense in its middle). The correction ``g(p) = p + c_2 p^2 + c_3 p^3 + ...`` is chosen
so that ``g(p) = mu L`` on a scan of a uniform disc (``L`` its exact chord lengths, from the disc
fitted to the sinogram's silhouette; rays that only graze it are left out): a linear least-squares
problem in ``(mu, c_2, c_3, ...)``.
``g'(0) = 1`` keeps thin paths as measured; ``mu`` is then the material's attenuation on the
corrected scale, the upper bound to give a reconstruction of that material.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

from invprior.core.problem import InverseProblem
from invprior.errors import ConfigError
from invprior.operators.ct import CTOperator
from invprior.operators.ct_support import Disc, fit_disc
from invprior.validation import real

__all__ = ["BeamHardening", "Calibration", "calibrate_beam_hardening", "GRAZING"]

#: Rays whose chord is shorter than this fraction of the disc's diameter do not enter the calibration.
GRAZING = 0.1


@dataclass(frozen=True)
class BeamHardening:
    """``g(p) = p + sum_k c_k p^k`` for ``k = 2, 3, ...`` (``coefficients = (c_2, c_3, ...)``)."""

    coefficients: tuple[float, ...]

    def __post_init__(self) -> None:
        try:
            values = tuple(real(c, "beam_hardening coefficients") for c in self.coefficients)
        except TypeError:
            raise ConfigError(f"beam_hardening must be a list of numbers (c_2, c_3, ...), got "
                              f"{self.coefficients!r}") from None
        object.__setattr__(self, "coefficients", values)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.float64)
        return p + sum(c * p ** (k + 2) for k, c in enumerate(self.coefficients))

    def check_monotone(self, maximum: float, where: str) -> None:
        """Refuse a correction that is not increasing on ``[0, maximum]`` (it would fold data together)."""
        grid = np.linspace(0.0, maximum, 1001)
        slope = 1.0 + sum(((k + 2) * c * grid ** (k + 1) for k, c in enumerate(self.coefficients)),
                          np.zeros_like(grid))
        if (slope <= 0).any():
            raise ConfigError(f"{where}: the beam-hardening correction {self.coefficients} decreases for line "
                              f"integrals near {grid[np.argmax(slope <= 0)]:.3g} (the data reach {maximum:.3g})")


@dataclass(frozen=True)
class Calibration:
    """A beam-hardening calibration: the correction, the material's attenuation on the corrected scale, the
    disc it was fitted on and the relative misfit before and after the correction."""

    correction: BeamHardening
    attenuation: float
    disc: Disc
    misfit_linear: float
    misfit_corrected: float


def calibrate_beam_hardening(problem: InverseProblem, degree: int = 3) -> Calibration:
    """Fit ``g`` of ``degree`` (2 or more) and ``mu`` with ``g(p) = mu L`` on the scan of a uniform disc."""
    if not isinstance(problem.operator, CTOperator) or problem.batch_size != 1:
        raise ConfigError("calibrate_beam_hardening needs one CT sinogram of a uniform disc")
    if not isinstance(degree, int) or degree < 2:
        raise ConfigError(f"calibrate_beam_hardening: degree must be an int >= 2, got {degree!r}")
    noise = float(problem.noise_std[0]) if isinstance(problem.noise_std, Tensor) else 0.0
    disc = fit_disc(problem.operator, problem.y[0, 0], noise)
    chords = disc.sinogram(problem.operator).ravel()
    p = problem.y[0, 0].detach().cpu().double().numpy().ravel()
    # rays that graze the disc are left out: there the chord length is too sensitive to the fitted radius
    through = chords > GRAZING * 2 * disc.radius
    design = np.stack([chords] + [-p**k for k in range(2, degree + 1)], axis=1)
    solution = np.linalg.lstsq(design[through], p[through], rcond=None)[0]
    correction = BeamHardening(tuple(float(c) for c in solution[1:]))
    correction.check_monotone(float(p.max()), "calibrate_beam_hardening")
    linear_mu = float(chords @ p / (chords @ chords))
    corrected = correction(p)

    def misfit(data: np.ndarray, mu: float) -> float:
        """``||data - mu L|| / ||data||`` on the rays through the disc."""
        return float(np.linalg.norm(data[through] - mu * chords[through]) / np.linalg.norm(data[through]))

    return Calibration(correction, float(solution[0]), disc, misfit(p, linear_mu), misfit(corrected, solution[0]))
