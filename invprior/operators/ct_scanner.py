"""A flat-detector fan-beam scanner described as its maker describes it: millimetres and degrees.

``FanBeamScanner`` holds the acquisition (source-origin and source-detector distances, detector
pixel size and count, the offset of the detector from the central ray, the projection angles)
and builds the ray transform for a reconstruction grid given by its pixel size or field of view.
The conversion happens here and nowhere else: the image domain is ``[-fov/2, fov/2]^2`` in
millimetres, so an image in 1/mm (attenuation coefficients) maps to dimensionless line integrals
``int mu dl`` -- the log-transformed, flat-field-corrected sinogram a scanner writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from invprior.errors import ConfigError
from invprior.operators.ct import CTGeometry, FanBeamCT
from invprior.validation import number_pair, positive_int, real

__all__ = ["FanBeamScanner", "equally_spaced", "fan_beam_scanner"]


@dataclass(frozen=True)
class FanBeamScanner:
    """A 2D fan beam with a flat detector, in millimetres and degrees.

    ``angles`` are the source positions in degrees, strictly increasing, starting anywhere and
    spaced as measured; ``angle_offset`` (degrees) is added to each, to turn the scanner's zero
    into invprior's (the source of invprior's fan beam at angle ``t`` sits at
    ``-source_origin (cos t, sin t)`` in the image's ``(x, y)`` axes, the first array axis being
    ``x``). ``detector_offset`` (mm, measured on the detector) is where the detector's centre lies
    along its axis from the point hit by the ray through the rotation centre.
    """

    source_origin: float
    source_detector: float
    detector_pixel_size: float
    num_detectors: int
    angles: tuple[float, ...]
    detector_offset: float = 0.0
    angle_offset: float = 0.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "source_origin", real(self.source_origin, "source_origin (mm)", minimum=0.0, strict=True))
        set_(self, "source_detector", real(self.source_detector, "source_detector (mm)", minimum=0.0, strict=True))
        if self.source_detector <= self.source_origin:
            raise ConfigError(f"source_detector ({self.source_detector} mm) must exceed source_origin "
                              f"({self.source_origin} mm): the detector lies beyond the rotation centre")
        set_(self, "detector_pixel_size",
             real(self.detector_pixel_size, "detector_pixel_size (mm)", minimum=0.0, strict=True))
        set_(self, "num_detectors", positive_int(self.num_detectors, "num_detectors"))
        set_(self, "detector_offset", real(self.detector_offset, "detector_offset (mm)"))
        set_(self, "angle_offset", real(self.angle_offset, "angle_offset (degrees)"))
        try:
            set_(self, "angles", tuple(real(a, "angles (degrees)") for a in self.angles))
        except TypeError:
            raise ConfigError(f"angles must be a list of numbers (degrees), got {self.angles!r}") from None

    @property
    def magnification(self) -> float:
        """``source_detector / source_origin``: detector lengths over lengths at the rotation centre."""
        return self.source_detector / self.source_origin

    def default_fov(self) -> float:
        """The detector's width seen at the rotation centre, ``num_detectors * pixel / magnification`` (mm)."""
        return self.num_detectors * self.detector_pixel_size / self.magnification

    def grid(self, size: int, pixel_size: float | None = None, fov: float | None = None) -> float:
        """The field of view (mm) of a ``size x size`` grid given its ``pixel_size`` or ``fov`` (default:
        ``default_fov``)."""
        size = positive_int(size, "size")
        if pixel_size is not None and fov is not None:
            raise ConfigError(f"give the grid's pixel_size ({pixel_size} mm) or its fov ({fov} mm), not both")
        if pixel_size is not None:
            return size * real(pixel_size, "pixel_size (mm)", minimum=0.0, strict=True)
        return self.default_fov() if fov is None else real(fov, "fov (mm)", minimum=0.0, strict=True)

    def geometry(self, fov: float) -> CTGeometry:
        """The ``CTGeometry`` on the image domain ``[-fov/2, fov/2]^2`` (all lengths in mm, angles in radians)."""
        return CTGeometry("fan", num_detectors=self.num_detectors,
                          detector_half_width=self.num_detectors * self.detector_pixel_size / 2,
                          src_radius=self.source_origin, det_radius=self.source_detector - self.source_origin,
                          angle_list=tuple(np.deg2rad(np.asarray(self.angles) + self.angle_offset)),
                          detector_offset=self.detector_offset, extent=fov / 2)

    def operator(self, size: int, pixel_size: float | None = None, fov: float | None = None,
                 backend: str = "sparse", filter_type: str | Callable[[np.ndarray], np.ndarray] = "Hann",
                 frequency_scaling: float = 0.9) -> FanBeamCT:
        """The ray transform of this scan on a ``size x size`` grid (``pixel_size`` or ``fov`` in mm)."""
        geometry = self.geometry(self.grid(size, pixel_size, fov))
        return FanBeamCT.from_geometry(geometry, size, backend, filter_type, frequency_scaling)


def equally_spaced(angle_range: Sequence[float], num_angles: int) -> tuple[float, ...]:
    """``num_angles`` angles from ``angle_range[0]`` to ``angle_range[1]``, both included."""
    start, stop = number_pair(angle_range, "angle_range", "(first, last) in degrees")
    return tuple(np.linspace(start, stop, positive_int(num_angles, "num_angles")))


def fan_beam_scanner(size: int = 64, source_origin: float = 410.66, source_detector: float = 553.74,
                     detector_pixel_size: float = 0.2, num_detectors: int = 560,
                     angles: Sequence[float] | None = None, angle_range: Sequence[float] = (0.0, 359.0),
                     num_angles: int = 360, detector_offset: float = 0.0, angle_offset: float = 0.0,
                     pixel_size: float | None = None, fov: float | None = None, backend: str = "sparse",
                     filter_type: str = "Hann", frequency_scaling: float = 0.9) -> FanBeamCT:
    """Registry factory (``ct_fan_scanner``): fan-beam CT in millimetres and degrees.

    ``angles`` (degrees) or ``num_angles`` equally spaced over ``angle_range`` (first and last
    angle, degrees). The defaults describe the scanner of the Helsinki Tomography Challenge 2022
    (a full circle in 1 degree steps); see ``FanBeamScanner`` for the parameters.
    """
    if angles is None:
        angles = equally_spaced(angle_range, num_angles)
    scanner = FanBeamScanner(source_origin, source_detector, detector_pixel_size, num_detectors, tuple(angles),
                             detector_offset, angle_offset)
    return scanner.operator(size, pixel_size, fov, backend, filter_type, frequency_scaling)

