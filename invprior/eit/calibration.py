"""What a reference measurement of the empty tank tells about the model and the noise.

``calibrate``: the homogeneous conductivity ``sigma_0`` and the contact impedances ``z_l`` that fit
the reference voltages best, ``min ||V(sigma_0, z) - V_ref||^2`` over the measured channels
(``scipy.optimize.least_squares`` in ``log sigma_0, log z``, ``z`` kept in ``[z_min, z_max]``).

``redundancy_noise_std``: the noise level from the measurements alone. Voltages are linear in the
injected currents, ``V[:, m] = C^T t_m`` (``C`` the ``(L, P)`` current matrix, ``t_m`` the transfer
row of measurement ``m``), so whenever the patterns are linearly dependent (rank ``C < P``), the
part of ``V[:, m]`` outside the column space of ``C^T`` is noise, whatever the conductivity and the
model: ``s^2 = sum_m ||(I - P_m) V[:, m]||^2 / sum_m (P_m - rank C_m)`` over each measurement's
available patterns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from invprior.eit.model import EITModel
from invprior.errors import ConfigError, ShapeError

__all__ = ["Calibration", "assess", "calibrate", "redundancy_noise_std"]

Z_MIN, Z_MAX = 1e-6, 1e2


@dataclass(frozen=True)
class Calibration:
    """The fitted background ``background`` (``sigma_0``), ``contact_impedance`` (one per electrode) and how
    well they explain the reference: ``relative_misfit = ||V - V_ref|| / ||V_ref||`` and ``misfit_rms``
    (per channel), over ``channels`` measured entries."""

    background: float
    contact_impedance: tuple[float, ...]
    relative_misfit: float
    misfit_rms: float
    channels: int


def _check(model: EITModel, voltages: np.ndarray, what: str) -> np.ndarray:
    voltages = np.asarray(voltages, dtype=np.float64)
    expected = (model.num_patterns, model.num_measurements)
    if voltages.shape != expected:
        raise ShapeError(f"{what}: expected voltages of shape (patterns, measurements) = {expected}, "
                         f"got {voltages.shape}")
    return voltages


def calibrate(model: EITModel, reference: np.ndarray, common_impedance: bool = False,
              z_min: float = Z_MIN, z_max: float = Z_MAX) -> Calibration:
    """Fit ``sigma_0`` and ``z`` (one per electrode, or one for all with ``common_impedance``) to the
    reference voltages ``(P, M)``; NaN entries are not measured and do not count. A common impedance is fitted
    first; it starts the per-electrode fit and stays the value of electrodes that never carry current (their
    impedance hardly changes the voltages, so the data cannot fix it)."""
    if model.electrode_model != "cem":
        raise ConfigError("calibrate: contact impedances need the complete electrode model (electrode_model='cem')")
    reference = _check(model, reference, "calibrate")
    keep = np.isfinite(reference) & (model.mask > 0)
    if keep.sum() < 2:
        raise ConfigError("calibrate: fewer than two measured channels in the reference")
    elements, target = len(model.mesh.elements), reference[keep]

    def residual(log_sigma: float, log_z: np.ndarray) -> np.ndarray:
        return model.voltages(np.full(elements, np.exp(log_sigma)), np.exp(log_z))[keep] - target

    # Start: sigma_0 from the least-squares scale of the unit-conductivity voltages (V(c sigma, z / c) = V / c).
    unit = model.voltages(np.ones(elements), np.full(model.electrodes, 1e-2))[keep]
    start = np.log(max(float(unit @ unit) / float(unit @ target), 1e-12)) if float(unit @ target) > 0 else 0.0
    bounds = ([-np.inf, np.log(z_min)], [np.inf, np.log(z_max)])
    common = least_squares(lambda p: residual(p[0], np.full(model.electrodes, p[1])),
                           [start, np.log(min(max(1e-2, z_min), z_max))], bounds=bounds, x_scale=1.0)
    log_sigma, log_z = common.x[0], np.full(model.electrodes, common.x[1])
    driven = np.flatnonzero(np.abs(model.currents).sum(axis=1) > 0)
    if not common_impedance:  # an electrode that never carries current barely sees its impedance: keep the common one

        def per_electrode(p: np.ndarray) -> np.ndarray:
            values = log_z.copy()
            values[driven] = p[1:]
            return residual(p[0], values)

        fit = least_squares(per_electrode, np.r_[log_sigma, log_z[driven]],
                            bounds=([-np.inf] + [np.log(z_min)] * len(driven),
                                    [np.inf] + [np.log(z_max)] * len(driven)), x_scale=1.0)
        log_sigma, log_z[driven] = fit.x[0], fit.x[1:]
    return assess(model, reference, float(np.exp(log_sigma)), np.exp(log_z))


def assess(model: EITModel, reference: np.ndarray, background: float, contact_impedance: Any) -> Calibration:
    """How well the homogeneous ``background`` with ``contact_impedance`` explains the reference ``(P, M)``
    (NaN entries are not measured)."""
    reference = _check(model, reference, "calibration")
    sigma, z = model.check(np.full(len(model.mesh.elements), background), contact_impedance)
    keep = np.isfinite(reference) & (model.mask > 0)
    misfit = model.voltages(sigma, z)[keep] - reference[keep]
    return Calibration(float(background), tuple(float(v) for v in z),
                       float(np.linalg.norm(misfit) / np.linalg.norm(reference[keep])),
                       float(np.sqrt(np.mean(misfit ** 2))), int(keep.sum()))


def redundancy_noise_std(currents: np.ndarray, voltages: np.ndarray) -> tuple[float, int]:
    """``(s, dof)``: the noise std per channel of voltages ``(P, M)`` (NaN = not measured) from the linear
    dependencies of the current patterns ``(L, P)`` (module docstring), and its degrees of freedom."""
    currents, voltages = np.asarray(currents, dtype=np.float64), np.asarray(voltages, dtype=np.float64)
    if voltages.ndim != 2 or currents.ndim != 2 or currents.shape[1] != voltages.shape[0]:
        raise ShapeError(f"redundancy_noise_std: currents (L, P) and voltages (P, M) must share P, got "
                         f"{currents.shape} and {voltages.shape}")
    energy, dof = 0.0, 0
    for column in voltages.T:
        available = np.isfinite(column)
        if not available.any():
            continue
        basis, singular, _ = np.linalg.svd(currents[:, available].T, full_matrices=False)   # (P_m, L)
        rank = int((singular > singular.max(initial=0.0) * 1e-10).sum())
        values = column[available]
        inside = basis[:, :rank] @ (basis[:, :rank].T @ values)
        energy += float(((values - inside) ** 2).sum())
        dof += int(available.sum()) - rank
    if dof == 0:
        raise ConfigError("redundancy_noise_std: the current patterns are linearly independent, so the data hold "
                          "no redundancy to estimate the noise from; give the noise level")
    return float(np.sqrt(energy / dof)), dof
