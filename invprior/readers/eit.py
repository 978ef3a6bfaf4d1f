"""Measured EIT voltages from files -> ``InverseProblem`` (registry group ``invprior.readers``).

``read_ktc2023`` reads the layout of the Kuopio Tomography Challenge 2023 water-tank data: a file with the
injected currents ``Inj`` (``L x P``, pattern ``p`` is column ``p``), the measurement patterns ``Mpat``
(``L x M``, measurement ``m`` is ``Mpat[:, m]^T U``) and the voltages ``Uel`` (``P * M`` values, pattern by
pattern; NaN where a channel was not measured), and a reference measurement of the empty tank
(``Injref``, ``Mpat``, ``Uelref``). The tank is a disc of ``radius`` with ``L`` electrodes covering the
fraction ``electrode_width`` of its boundary, electrode 0 centred at ``first_electrode_angle`` and the
rest counter-clockwise (``invprior.eit.mesh.disc_mesh``). The model is calibrated on the reference
(``invprior.eit.calibration``) and the noise level estimated from the redundancy of the current patterns.
Images are log-conductivity changes ``x = log(sigma / sigma_0)`` on the tank's bounding square.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from invprior.core.constraints import ImageConstraints
from invprior.core.problem import InverseProblem
from invprior.core.task import SegmentationTask
from invprior.data.orientation import picture_to_image
from invprior.eit.calibration import Calibration, assess, calibrate, redundancy_noise_std
from invprior.eit.mesh import disc_mesh, electrode_arcs
from invprior.eit.model import EITModel
from invprior.eit.operator import EIT
from invprior.errors import ConfigError, DataFileError
from invprior.readers.files import ArrayFile
from invprior.validation import DTYPES, choice, real

__all__ = ["MODES", "MeasuredVoltages", "read_ktc2023", "read_voltages", "measured_eit_problem"]

MODES = ("difference", "absolute")
#: KTC2023 labels in increasing conductivity: resistive (1) < water (0) < conductive (2); water is the calibrated
#: background, ``x = 0``.
KTC_LABELS_BY_VALUE = (1, 0, 2)


@dataclass(frozen=True)
class MeasuredVoltages:
    """One EIT frame: ``currents`` ``(L, P)``, ``measurements`` ``(M, L)`` and ``voltages`` ``(P, M)`` (NaN: not
    measured), read from ``source``."""

    currents: np.ndarray
    measurements: np.ndarray
    voltages: np.ndarray
    source: str


def read_voltages(file: str | Path, currents: str = "Inj", measurements: str = "Mpat",
                  voltages: str = "Uel") -> MeasuredVoltages:
    """A frame stored as in KTC2023: the ``(L, P)`` current matrix, the ``(L, M)`` measurement patterns (one column
    per measurement) and the ``P * M`` voltages pattern by pattern (or an ``(M, P)`` matrix, as MATLAB stores it)."""
    with ArrayFile(file) as handle:
        injected, patterns, values = handle.array(currents), handle.array(measurements), handle.array(voltages)
    if injected.ndim != 2:
        raise DataFileError(f"{file}: {currents!r} should be the (electrodes, patterns) current matrix, got shape "
                            f"{injected.shape}")
    electrodes, count = injected.shape
    if patterns.ndim != 2 or patterns.shape[0] != electrodes:
        raise DataFileError(f"{file}: {measurements!r} should be ({electrodes} electrodes, measurements), like "
                            f"{currents!r} {injected.shape}; got shape {patterns.shape}")
    expected = count * patterns.shape[1]
    if values.size != expected or values.ndim > 2:
        raise DataFileError(f"{file}: {voltages!r} should hold {count} patterns x {patterns.shape[1]} measurements "
                            f"= {expected} values, got shape {values.shape}")
    if not np.isfinite(injected).all() or not np.isfinite(patterns).all():
        raise DataFileError(f"{file}: {currents!r} and {measurements!r} must be finite")
    if np.isinf(values).any():
        raise DataFileError(f"{file}: {voltages!r} holds {int(np.isinf(values).sum())} infinite values")
    frame = values.reshape(count, patterns.shape[1]) if values.ndim == 1 else values.T.reshape(count, -1)
    return MeasuredVoltages(injected, patterns.T, frame, f"{file}: {voltages!r}")


def _same_protocol(data: MeasuredVoltages, reference: MeasuredVoltages) -> None:
    for name in ("currents", "measurements"):
        a, b = getattr(data, name), getattr(reference, name)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-6, atol=1e-12):
            raise DataFileError(f"{reference.source}: the reference's {name} differ from those of {data.source}; "
                                "difference data need the same protocol")


def _channels(data: MeasuredVoltages, reference: MeasuredVoltages | None,
              unavailable: Sequence[int]) -> np.ndarray:
    """The measured entries ``(P, M)``: finite in the data (and the reference), touching no unavailable electrode."""
    keep = np.isfinite(data.voltages)
    if reference is not None:
        keep &= np.isfinite(reference.voltages)
    electrodes = data.currents.shape[0]
    for e in unavailable:
        if not 0 <= int(e) < electrodes:
            raise ConfigError(f"unavailable_electrodes: electrode {e} does not exist (0..{electrodes - 1})")
        keep[np.abs(data.currents[int(e)]) > 0, :] = False
        keep[:, np.abs(data.measurements[:, int(e)]) > 0] = False
    if not keep.any():
        raise DataFileError(f"{data.source}: no measured channel is left (every entry is NaN or unavailable)")
    return keep


def _silent_electrodes(data: MeasuredVoltages, keep: np.ndarray) -> list[int]:
    """Electrodes no kept channel measures or drives."""
    touched = (np.abs(data.measurements) > 0)[keep.any(axis=0)].any(axis=0) | \
        (np.abs(data.currents[:, keep.any(axis=1)]) > 0).any(axis=1)
    return [int(e) for e in np.flatnonzero(~touched)]


def measured_eit_problem(data: MeasuredVoltages, reference: MeasuredVoltages | None = None,
                         mode: str = "difference", size: int = 64, h: float = 0.006, radius: float = 0.115,
                         electrode_width: float = 0.5, first_electrode_angle: float = 90.0,
                         background: float | None = None, contact_impedance: float | Sequence[float] | None = None,
                         unavailable_electrodes: Sequence[int] = (), noise_std: float | None = None,
                         truth: np.ndarray | None = None, task: SegmentationTask | None = None,
                         dtype: str = "float64", mesh_cache: str | Path | None = None) -> InverseProblem:
    """The ``InverseProblem`` of a measured frame on a circular tank (see the module docstring).

    ``mode="difference"``: data ``y = V - V_ref`` on the channels both measured, operator
    ``V(sigma_0 e^x) - V(sigma_0)``; ``"absolute"``: ``y = V``, operator ``V(sigma_0 e^x)``. ``background`` and
    ``contact_impedance`` are fitted to the reference (to the data itself in absolute mode without a reference)
    unless given. ``noise_std`` per channel is estimated from the redundancy of the current patterns unless
    given. ``truth`` is a label map (picture layout, covering the tank's bounding square) scored by ``task``.
    """
    choice(mode, MODES, "mode")
    choice(dtype, DTYPES, "dtype")
    if reference is not None:
        _same_protocol(data, reference)
    elif mode == "difference":
        raise ConfigError("mode = 'difference' needs a reference measurement (reference_measurement_file)")
    radius = real(radius, "radius", minimum=0.0, strict=True)
    arcs = electrode_arcs(data.currents.shape[0], electrode_width, first_electrode_angle / 360.0)
    mesh = disc_mesh(h, arcs, radius=radius, cache=mesh_cache)
    keep = _channels(data, reference, unavailable_electrodes)
    calibration = _calibration(mesh, data, reference, keep, background, contact_impedance)
    observed = data.voltages - (reference.voltages if mode == "difference" and reference is not None else 0.0)
    patterns = keep.any(axis=1)
    if noise_std is None:
        std, dof = redundancy_noise_std(data.currents[:, patterns], np.where(keep, observed, np.nan)[patterns])
        noise = {"std": [std], "estimated": True, "method": "redundancy of the current patterns", "dof": dof}
    else:
        std = real(noise_std, "noise_std", minimum=0.0, strict=True)
        noise = {"std": [std], "estimated": False}
    if reference is not None and np.linalg.matrix_rank(reference.currents) < reference.currents.shape[1]:
        # the reference frame's own redundancy residual, its systematic part included (that cancels in V - V_ref)
        noise["reference_std"] = redundancy_noise_std(reference.currents, reference.voltages)[0]
    operator = EIT(size, mesh=mesh, currents=data.currents[:, patterns], measurements=data.measurements,
                   contact_impedance=list(calibration.contact_impedance), parametrization="exp",
                   background=calibration.background, exclude_driven=False, channels=keep[patterns],
                   difference=mode == "difference")
    y = torch.from_numpy(observed[keep]).to(DTYPES[dtype])[None]
    xs, ys = operator.to_mesh.pixel_centres()
    support = torch.from_numpy(xs[:, None] ** 2 + ys[None, :] ** 2 <= radius ** 2)
    labels = None if truth is None else torch.from_numpy(picture_to_image(np.asarray(truth, dtype=np.int64)))[None]
    meta = {"source": data.source, "mode": mode, "units": "image: log(sigma / sigma_0); data: the file's voltages",
            "tank": {"radius": radius, "electrodes": int(data.currents.shape[0]), "electrode_width": electrode_width,
                     "first_electrode_angle_deg": first_electrode_angle, "elements": len(mesh.elements)},
            "calibration": asdict(calibration),
            "channels": {"kept": int(keep.sum()), "total": int(keep.size),
                         "patterns_kept": int(patterns.sum()), "patterns_total": int(patterns.size),
                         "electrodes_without_data": _silent_electrodes(data, keep)},
            "noise": noise}
    return InverseProblem(operator, y, noise_std=std, metadata=meta, reference=labels,
                          constraints=ImageConstraints(support=support), task=task if labels is not None else None)


def _calibration(mesh, data: MeasuredVoltages, reference: MeasuredVoltages | None, keep: np.ndarray,
                 background: float | None, contact_impedance: float | Sequence[float] | None) -> Calibration:
    """The background and contact impedances given, or fitted to the reference (to the kept data without one)."""
    model = EITModel(mesh, data.currents, data.measurements, "cem", exclude_driven=False)
    target = reference.voltages if reference is not None else np.where(keep, data.voltages, np.nan)
    if background is None or contact_impedance is None:
        fitted = calibrate(model, target)
        background = fitted.background if background is None else background
        contact_impedance = fitted.contact_impedance if contact_impedance is None else contact_impedance
    return assess(model, target, real(background, "background", minimum=0.0, strict=True), contact_impedance)


def _truth(path: str | Path, key: str) -> np.ndarray:
    """A KTC2023 ground truth: integer labels 0 (water), 1 (resistive), 2 (conductive) as stored (a picture)."""
    with ArrayFile(path) as handle:
        labels = handle.array(key)
    if labels.ndim != 2 or not np.isin(labels, (0, 1, 2)).all():
        raise DataFileError(f"{path}: {key!r} should be a 2D map of labels 0, 1, 2 (water, resistive, conductive), "
                            f"got shape {labels.shape} with values {np.unique(labels)[:6].tolist()}")
    return labels.astype(np.int64)


def read_ktc2023(file: str | Path, reference_measurement_file: str | Path | None = None, mode: str = "difference",
                 size: int = 64, h: float = 0.006, radius: float = 0.115, electrode_width: float = 0.5,
                 first_electrode_angle: float = 90.0, background: float | None = None,
                 contact_impedance: float | Sequence[float] | None = None,
                 unavailable_electrodes: Sequence[int] = (), noise_std: float | None = None,
                 reference: str | Path | None = None, reference_key: str = "truth",
                 dtype: str = "float64", mesh_cache: str | Path | None = None) -> InverseProblem:
    """A KTC2023 frame (registry name ``ktc2023``): ``file`` with ``Inj``, ``Mpat``, ``Uel`` and the empty tank's
    ``reference_measurement_file`` with ``Injref``, ``Mpat``, ``Uelref`` (see ``measured_eit_problem`` for the
    rest). ``reference`` is the ground-truth file (``truth``: 0 water, 1 resistive, 2 conductive), scored by the
    challenge's score (``invprior.analysis.ssim_score``)."""
    data = read_voltages(file)
    ref = None if reference_measurement_file is None else \
        read_voltages(reference_measurement_file, "Injref", "Mpat", "Uelref")
    truth = None if reference is None else _truth(reference, reference_key)
    problem = measured_eit_problem(data, ref, mode, size, h, radius, electrode_width, first_electrode_angle,
                                   background, contact_impedance, unavailable_electrodes, noise_std, truth,
                                   SegmentationTask(KTC_LABELS_BY_VALUE, "ktc_score", background_value=0.0),
                                   dtype, mesh_cache)
    problem.metadata.update({"reader": "ktc2023", "file": str(file),
                             "reference_measurement_file": None if ref is None else str(reference_measurement_file)})
    return problem
