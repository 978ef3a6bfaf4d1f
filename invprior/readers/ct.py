"""Measured CT sinograms from files -> ``InverseProblem`` (registry group ``invprior.readers``).

``read_sinogram`` takes any file with a sinogram and the scan's geometry in millimetres and
degrees; ``read_htc2022`` reads the struct layout of the Helsinki Tomography Challenge 2022 data.
Both check the sinogram's shape against the geometry, refuse NaN entries (or drop the projections
that hold them, on request), estimate the noise level from the data when none is given and attach
an optional reference segmentation. Images are attenuation coefficients in 1/mm on a grid whose
field of view is given by ``pixel_size`` or ``fov`` (mm).
"""

from __future__ import annotations

import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from invprior.core.problem import InverseProblem
from invprior.data.orientation import picture_to_image
from invprior.errors import ConfigError, DataFileError
from invprior.operators.ct import CT_BACKENDS
from invprior.operators.ct_scanner import FanBeamScanner
from invprior.readers.beam_hardening import BeamHardening
from invprior.readers.files import ArrayFile
from invprior.readers.reference import read_reference
from invprior.validation import DTYPES, choice, real

__all__ = ["read_sinogram", "read_htc2022", "measured_ct_problem", "MISSING"]

#: The HTC2022 reference grid: 512 x 512 pixels of ``effectivePixelSizePost``, centred on the rotation axis.
HTC2022_REFERENCE_PIXELS = 512
MISSING = ("error", "drop")


def _drop_missing(sinogram: np.ndarray, angles: tuple[float, ...], missing: str,
                  where: str) -> tuple[np.ndarray, tuple[float, ...]]:
    """Refuse NaN entries, or drop the projections (rows) that hold them when ``missing="drop"``."""
    if np.isinf(sinogram).any():
        raise DataFileError(f"{where}: the sinogram holds {int(np.isinf(sinogram).sum())} infinite entries")
    bad_rows = np.isnan(sinogram).any(axis=1)
    if not bad_rows.any():
        return sinogram, angles
    rows = np.flatnonzero(bad_rows)
    listed = ", ".join(map(str, rows[:8])) + (" ..." if len(rows) > 8 else "")
    if missing == "error":
        raise DataFileError(f"{where}: the sinogram has {int(np.isnan(sinogram).sum())} NaN entries in "
                            f"{len(rows)} projections (rows {listed}); set missing = \"drop\" to leave those "
                            "projections out")
    if bad_rows.all():
        raise DataFileError(f"{where}: every projection holds NaN entries; nothing is left to reconstruct from")
    warnings.warn(f"{where}: dropped {len(rows)} of {len(angles)} projections with NaN entries (rows {listed})",
                  stacklevel=3)
    keep = ~bad_rows
    return sinogram[keep], tuple(a for a, k in zip(angles, keep) if k)


def measured_ct_problem(scanner: FanBeamScanner, sinogram: np.ndarray, size: int = 256,
                        pixel_size: float | None = None, fov: float | None = None,
                        noise_std: float | None = None, reference: np.ndarray | None = None,
                        missing: str = "error", backend: str = "sparse", dtype: str = "float32",
                        beam_hardening: Sequence[float] | None = None, source: str = "sinogram",
                        metadata: dict[str, Any] | None = None) -> InverseProblem:
    """The ``InverseProblem`` of a measured sinogram ``(angles, detectors)`` taken by ``scanner``.

    ``beam_hardening`` (``(c_2, c_3, ...)``, see ``BeamHardening``) linearises the data first;
    ``noise_std`` (per sinogram entry, after that correction) is estimated from the data when
    ``None``; ``reference`` is a segmentation covering the reconstruction grid's field of view, in the
    image layout.
    ``source`` names the data in errors.
    """
    choice(missing, MISSING, "missing")
    choice(backend, CT_BACKENDS, "backend")
    choice(dtype, DTYPES, "dtype")
    sinogram = np.asarray(sinogram, dtype=np.float64)
    expected = (len(scanner.angles), scanner.num_detectors)
    if sinogram.shape != expected:
        hint = " (it looks transposed: set transpose = true)" if sinogram.shape == expected[::-1] else ""
        raise DataFileError(f"{source}: the sinogram has shape {sinogram.shape}, but the geometry has "
                            f"{expected[0]} angles x {expected[1]} detectors{hint}")
    sinogram, angles = _drop_missing(sinogram, scanner.angles, missing, source)
    correction = None if beam_hardening is None else BeamHardening(tuple(beam_hardening))
    if correction is not None:
        correction.check_monotone(float(sinogram.max()), source)
        sinogram = correction(sinogram)
    if len(angles) != len(scanner.angles):
        scanner = FanBeamScanner(**{**asdict(scanner), "angles": angles})
    fov_mm = scanner.grid(size, pixel_size, fov)
    operator = scanner.operator(size, fov=fov_mm, backend=backend)
    y = torch.from_numpy(sinogram).to(DTYPES[dtype])[None, None]
    labels = None if reference is None else torch.from_numpy(np.asarray(reference, dtype=np.int64))[None]
    meta = {"source": source, "units": "image in 1/mm, sinogram in line integrals",
            "grid": {"size": size, "fov_mm": fov_mm, "pixel_mm": fov_mm / size},
            "scanner": {k: v for k, v in asdict(scanner).items() if k != "angles"},
            "angles_deg": {"first": angles[0], "last": angles[-1], "count": len(angles)},
            "beam_hardening": None if correction is None else list(correction.coefficients), **(metadata or {})}
    if noise_std is not None:
        std = real(noise_std, "noise_std", minimum=0.0, strict=True)
        meta["noise"] = {"std": std, "estimated": False}
        return InverseProblem(operator, y, noise_std=std, metadata=meta, reference=labels)
    return InverseProblem(operator, y, metadata=meta, reference=labels).with_estimated_noise()


def _reference(reference: str | Path | None, reference_key: str | None) -> np.ndarray | None:
    """The reference segmentation (a picture in its file) in the image layout."""
    return None if reference is None else picture_to_image(read_reference(reference, reference_key))


def read_sinogram(file: str | Path, sinogram: str | None = "sinogram", angles: str | Sequence[float] = "angles",
                  source_origin: float = 0.0, source_detector: float = 0.0, detector_pixel_size: float = 0.0,
                  detector_offset: float = 0.0, angle_offset: float = 0.0, transpose: bool = False,
                  size: int = 256, pixel_size: float | None = None, fov: float | None = None,
                  noise_std: float | None = None, reference: str | Path | None = None,
                  reference_key: str | None = None, missing: str = "error", backend: str = "sparse",
                  dtype: str = "float32", beam_hardening: Sequence[float] | None = None) -> InverseProblem:
    """A fan-beam sinogram from any array file (registry name ``sinogram``).

    ``sinogram`` is the key of the array (rows: angles, columns: detector cells; ``transpose``
    if stored the other way); ``angles`` the key of the angle list or the angles themselves, in
    degrees; distances and the detector pixel size in mm (see ``FanBeamScanner``). The number of
    detectors is the sinogram's width. ``beam_hardening``: see ``measured_ct_problem``.
    """
    for name, value in (("source_origin", source_origin), ("source_detector", source_detector),
                        ("detector_pixel_size", detector_pixel_size)):
        if value == 0.0:
            raise ConfigError(f"sinogram reader: give {name} (mm)")
    with ArrayFile(file) as handle:
        data = handle.array(sinogram)
        angle_list = handle.array(angles) if isinstance(angles, str) else np.asarray(angles, dtype=np.float64)
    if data.ndim != 2:
        raise DataFileError(f"{file}: {sinogram!r} should be a 2D sinogram (angles x detectors), got shape "
                            f"{data.shape}")
    if angle_list.ndim != 1:
        raise DataFileError(f"{file}: the angles should be a list, got shape {angle_list.shape}")
    data = data.T if transpose else data
    if data.shape[0] != angle_list.size:
        hint = " (it looks transposed: set transpose = true)" if data.shape[1] == angle_list.size else ""
        raise DataFileError(f"{file}: the sinogram {sinogram!r} has {data.shape[0]} rows (one per angle) but "
                            f"{angle_list.size} angles are given{hint}")
    scanner = FanBeamScanner(source_origin, source_detector, detector_pixel_size, data.shape[1],
                             tuple(angle_list), detector_offset, angle_offset)
    return measured_ct_problem(scanner, data, size, pixel_size, fov, noise_std, _reference(reference, reference_key),
                               missing, backend, dtype, beam_hardening, source=f"{file}: {sinogram!r}",
                               metadata={"reader": "sinogram", "file": str(file)})


def read_htc2022(file: str | Path, size: int = 256, pixel_size: float | None = None, fov: float | None = None,
                 noise_std: float | None = None, reference: str | Path | None = None,
                 reference_key: str | None = None, missing: str = "error", backend: str = "sparse",
                 dtype: str = "float32", beam_hardening: Sequence[float] | None = None) -> InverseProblem:
    """A Helsinki Tomography Challenge 2022 file (registry name ``htc2022``): the struct ``CtDataLimited``
    (or ``CtDataFull``) with ``sinogram`` and ``parameters``, MATLAB v5 or v7.3.

    The grid's field of view defaults to the organisers' reference grid (512 pixels of
    ``effectivePixelSizePost``, about 75.9 mm). The angles are invprior's fan-beam angles as they are:
    figures then show the object as the organisers' reference segmentations do (checked in the tests).
    """
    with ArrayFile(file) as handle:
        structs = [k for k in handle.keys() if k in ("CtDataLimited", "CtDataFull")]
        if len(structs) != 1:
            raise DataFileError(f"{file}: expected one struct CtDataLimited or CtDataFull (the HTC2022 layout), "
                                f"found keys {', '.join(handle.keys()) or 'none'}")
        root = structs[0]
        p = f"{root}/parameters/"
        data = handle.array(f"{root}/sinogram")
        angles = handle.array(p + "angles")
        distances = {k: handle.scalar(p + k) for k in ("distanceSourceOrigin", "distanceSourceDetector",
                                                        "pixelSizePost", "numDetectorsPost",
                                                        "effectivePixelSizePost", "geometricMagnification")}
        unit = handle.text(p + "distanceUnit") if "distanceUnit" in handle.keys(root + "/parameters") else "mm"
    if unit != "mm":
        raise DataFileError(f"{file}: distances are in {unit!r}; the HTC2022 reader expects mm")
    if data.ndim != 2 or angles.ndim != 1:
        raise DataFileError(f"{file}: {root}/sinogram should be 2D and parameters/angles 1D, got shapes "
                            f"{data.shape} and {angles.shape}")
    sod, sdd = distances["distanceSourceOrigin"], distances["distanceSourceDetector"]
    if abs(sdd / sod - distances["geometricMagnification"]) > 1e-3 * distances["geometricMagnification"]:
        raise DataFileError(f"{file}: inconsistent geometry: distanceSourceDetector / distanceSourceOrigin = "
                            f"{sdd / sod:.5f} but geometricMagnification = {distances['geometricMagnification']:.5f}")
    count = distances["numDetectorsPost"]
    if count != int(count):
        raise DataFileError(f"{file}: numDetectorsPost should be a whole number, got {count}")
    scanner = FanBeamScanner(sod, sdd, distances["pixelSizePost"], int(count), tuple(angles))
    if pixel_size is None and fov is None:
        fov = HTC2022_REFERENCE_PIXELS * distances["effectivePixelSizePost"]
    return measured_ct_problem(scanner, data, size, pixel_size, fov, noise_std, _reference(reference, reference_key),
                               missing, backend, dtype, beam_hardening, source=f"{file}: {root}/sinogram",
                               metadata={"reader": "htc2022", "file": str(file)})
