"""2D computed tomography on a square image domain ``[-e, e]^2`` (ODL ray transform, ASTRA projectors).

The ray transform maps an image ``x`` to its line integrals ``(A x)(theta, s)``: for parallel
beams ``int x(s e_theta + t e_theta^perp) dt`` over the line at detector offset ``s``; for fan
beams the rays join a point source to the cells of a flat detector. Lengths are physical in the
units of the domain's half side ``e`` (``extent``, default 1): with every length of a geometry in
millimetres and ``x`` in 1/mm, ``A x`` is the dimensionless line integral a scanner measures after
the log transform. A sinogram does not depend on the pixel grid.

Images have shape ``(B, 1, N, N)`` with ``x[b, 0, i, j]`` the value at ``(x_i, y_j)`` (ODL's
convention: the first image axis is the x axis); sinograms have shape ``(B, 1, angles,
detectors)``. Two backends give the same matrix up to float32 rounding: ``"odl"`` runs ODL's
``RayTransform`` (ASTRA on the CPU, one image at a time) and ``"sparse"`` multiplies by ASTRA's
system matrix, batched, on the input's device.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Self

import numpy as np
import torch
from torch import Tensor

from invprior._optional import require
from invprior.core.operator import ForwardOperator, linear_apply, row_indices
from invprior.errors import ConfigError
from invprior.operators.adapters.odl import OdlOperator
from invprior.validation import choice, number_pair, positive_int, real

__all__ = ["CT_BACKENDS", "FBP_FILTERS", "CTGeometry", "CTOperator", "ParallelBeamCT", "FanBeamCT"]

CT_BACKENDS = ("sparse", "odl")
FBP_FILTERS = ("Ram-Lak", "Shepp-Logan", "Cosine", "Hamming", "Hann")

#: Radius of the disc circumscribing the image domain [-1, 1]^2 (scaled by ``extent``).
IMAGE_RADIUS = math.sqrt(2.0)
_FEATURE = "CT operators"


def _angle_list(values: Any) -> tuple[float, ...]:
    """Explicit projection angles (radians): finite, at least two, strictly increasing, spanning <= 2 pi."""
    try:
        angles = tuple(real(a, "angles") for a in values)
    except TypeError:
        raise ConfigError(f"angles must be a list of numbers (radians), got {values!r}") from None
    if len(angles) < 2:
        raise ConfigError(f"angles must hold at least two projection angles, got {len(angles)}")
    steps = np.diff(angles)
    if not (steps > 0).all():
        k = int(np.argmin(steps > 0))
        raise ConfigError(f"angles must be strictly increasing (unwrap them, e.g. numpy.unwrap, and sort the "
                          f"sinogram's rows with them); angle {k + 1} ({angles[k + 1]}) follows {angles[k]}")
    if angles[-1] - angles[0] > 2 * math.pi * (1 + 1e-12):
        raise ConfigError(f"angles may span at most 2 pi, got {angles[0]} .. {angles[-1]}")
    return angles


@dataclass(frozen=True)
class CTGeometry:
    """A 2D acquisition geometry, in the physical units of the image domain ``[-e, e]^2``, ``e = extent``.

    Angles are either ``angle_list`` (radians, strictly increasing, any start, any spacing) or the
    midpoints of ``num_angles`` equal cells of ``angle_range`` (default ``(0, pi)`` for parallel
    and ``(0, 2 pi)`` for fan beams); a shorter range is a limited-angle scan. The flat detector
    has ``num_detectors`` equal cells on ``[o - h, o + h]``, ``h = detector_half_width`` (default:
    just covering the image, ``sqrt(2) e`` for parallel beams and ``sqrt(2) e (r_s + r_d) / r_s``
    for fan beams) and ``o = detector_offset`` (fan beams only): the detector coordinate 0 is where
    the ray through the rotation centre meets it. Fan beams have the source at distance ``src_radius`` (default
    ``4 e``) from the rotation centre and the detector at ``det_radius`` (default ``4 e``) on the
    other side. ``num_detectors=None`` is resolved per grid by ``resolve`` (Nyquist sampling, as
    ODL's default geometries); everything else is independent of the pixel grid, so one geometry
    serves several grids.
    """

    beam: str = "parallel"
    num_angles: int = 30
    angle_range: tuple[float, float] | None = None
    num_detectors: int | None = None
    detector_half_width: float | None = None
    src_radius: float | None = None
    det_radius: float | None = None
    angle_list: Sequence[float] | None = None
    detector_offset: float = 0.0
    extent: float = 1.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        choice(self.beam, ("parallel", "fan"), "beam")
        fan = self.beam == "fan"
        extent = real(self.extent, "extent (half side of the image domain)", minimum=0.0, strict=True)
        set_(self, "extent", extent)
        set_(self, "detector_offset", real(self.detector_offset, "detector_offset"))
        if self.num_detectors is not None:
            set_(self, "num_detectors", positive_int(self.num_detectors, "num_detectors"))

        if self.angle_list is not None:
            if self.angle_range is not None:
                raise ConfigError("give either angle_list (explicit angles) or angle_range (equal cells), not both")
            angles = _angle_list(self.angle_list)
            set_(self, "angle_list", angles)
            set_(self, "num_angles", len(angles))
        else:
            set_(self, "num_angles", positive_int(self.num_angles, "num_angles"))
            angle_range = self.angle_range if self.angle_range is not None else (0.0, 2 * math.pi if fan else math.pi)
            start, stop = number_pair(angle_range, "angle_range", "(start, stop) in radians")
            if not stop > start:
                raise ConfigError(f"angle_range must have stop > start, got ({start}, {stop}): the range is empty")
            if stop - start > 2 * math.pi * (1 + 1e-12):
                raise ConfigError(f"angle_range may span at most 2 pi, got ({start}, {stop})")
            set_(self, "angle_range", (start, stop))

        radius = IMAGE_RADIUS * extent
        if fan:
            src = real(4.0 * extent if self.src_radius is None else self.src_radius, "src_radius")
            det = real(4.0 * extent if self.det_radius is None else self.det_radius, "det_radius")
            if src <= radius:
                raise ConfigError(
                    f"src_radius must exceed sqrt(2) * extent = {radius:.4g} so that the source lies outside "
                    f"the image domain [-{extent:g}, {extent:g}]^2, got {src}"
                )
            if det <= 0:
                raise ConfigError(f"det_radius must be positive, got {det}")
            set_(self, "src_radius", src)
            set_(self, "det_radius", det)
            default_half_width = radius * (src + det) / src
        else:
            for key in ("src_radius", "det_radius"):
                if getattr(self, key) is not None:
                    raise ConfigError(
                        f"{key} applies to beam='fan' only, got {getattr(self, key)!r} for a parallel beam")
            if self.detector_offset != 0:
                raise ConfigError("detector_offset applies to beam='fan' only (ASTRA's 2D parallel-beam CPU "
                                  "projector has no detector shift); shift the sinogram's detector axis instead")
            default_half_width = radius
        half_width = real(
            default_half_width if self.detector_half_width is None else self.detector_half_width,
            "detector_half_width")
        if half_width <= 0:
            raise ConfigError(f"detector_half_width must be positive, got {half_width}")
        set_(self, "detector_half_width", half_width)

    def default_num_detectors(self, size: int) -> int:
        """Detector cells for Nyquist sampling of a ``size x size`` grid (the choice of ODL's defaults).

        Parallel: ``2 ceil(h N / (2 e)) + 1``. Fan: ``2 ceil(h N r / (2 e hypot(r, h))) + 1`` with
        ``r = r_s + r_d``.
        """
        size = positive_int(size, "size")
        assert self.detector_half_width is not None  # set in __post_init__
        h = float(self.detector_half_width) / self.extent
        if self.beam == "parallel":
            return 2 * math.ceil(h * size / 2) + 1
        assert self.src_radius is not None and self.det_radius is not None  # set for fan beams in __post_init__
        r = (float(self.src_radius) + float(self.det_radius)) / self.extent
        return 2 * math.ceil(h * size * r / (2 * math.hypot(r, h))) + 1

    def resolve(self, size: int) -> CTGeometry:
        """This geometry with ``num_detectors`` fixed, for a ``size x size`` grid if it was unset."""
        if self.num_detectors is not None:
            return self
        return replace(self, num_detectors=self.default_num_detectors(size))

    def angles(self) -> np.ndarray:
        """The projection angles in radians."""
        if self.angle_list is not None:
            return np.asarray(self.angle_list)
        assert self.angle_range is not None  # set in __post_init__ when there is no angle_list
        start, stop = self.angle_range
        return start + (np.arange(self.num_angles) + 0.5) * (stop - start) / self.num_angles

    def detector_positions(self) -> np.ndarray:
        """The centres of the detector cells, in the units of ``extent`` (needs ``num_detectors``)."""
        if self.num_detectors is None:
            raise ConfigError("detector_positions needs num_detectors; call resolve(size) first")
        assert self.detector_half_width is not None  # set in __post_init__
        h, n = self.detector_half_width, self.num_detectors
        return self.detector_offset - h + (np.arange(n) + 0.5) * 2 * h / n


def _odl_geometry(geometry: CTGeometry) -> Any:
    odl = require("odl", "ct", _FEATURE)
    tomo = require("odl.applications.tomo", "ct", _FEATURE)
    if geometry.angle_list is not None:
        angles = odl.nonuniform_partition(np.asarray(geometry.angle_list))
    else:
        assert geometry.angle_range is not None  # set in __post_init__ when there is no angle_list
        angles = odl.uniform_partition(*geometry.angle_range, geometry.num_angles)
    assert geometry.detector_half_width is not None  # set in __post_init__
    h, o = geometry.detector_half_width, geometry.detector_offset
    detector = odl.uniform_partition(o - h, o + h, geometry.num_detectors)
    if geometry.beam == "parallel":
        return tomo.Parallel2dGeometry(angles, detector)
    return tomo.FanBeamGeometry(angles, detector, src_radius=geometry.src_radius, det_radius=geometry.det_radius)


def _astra_system_matrix(space: Any, odl_geometry: Any) -> Any:
    """ASTRA's CPU projection matrix (scipy CSR) for ``space`` and ``odl_geometry``, as ODL sets it up."""
    astra = require("astra", "ct", _FEATURE)
    setup = require("odl.applications.tomo.backends.astra_setup", "ct", _FEATURE)
    astra_cpu = require("odl.applications.tomo.backends.astra_cpu", "ct", _FEATURE)
    volume = setup.astra_volume_geometry(space, "cpu")
    projection = setup.astra_projection_geometry(odl_geometry, "cpu")
    projector = setup.astra_projector(astra_cpu.default_astra_proj_type(odl_geometry), volume, projection, 2)
    try:
        matrix_id = astra.projector.matrix(projector)
        try:
            matrix = astra.matrix.get(matrix_id)
        finally:
            astra.matrix.delete(matrix_id)
    finally:
        astra.projector.delete(projector)
    return matrix


def _torch_csr(matrix: Any) -> Tensor:
    """A scipy sparse matrix as a float64 torch CSR tensor (int32 indices when they fit)."""
    matrix = matrix.tocsr()
    matrix.sum_duplicates()
    matrix.sort_indices()
    index = torch.int32 if max(matrix.nnz, *matrix.shape) < 2**31 else torch.int64
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr).to(index), torch.from_numpy(matrix.indices).to(index),
            torch.from_numpy(np.asarray(matrix.data, dtype=np.float64)), size=matrix.shape,
            check_invariants=False)


def _sparse_apply(matrix: Tensor, x: Tensor, out_shape: tuple[int, ...]) -> Tensor:
    """``matrix @ vec(x[b])`` for every image ``b`` of the batch, reshaped to ``out_shape``."""
    flat = x.reshape(x.shape[0], -1)
    if flat.shape[0] == 1:
        out = torch.mv(matrix, flat[0]).unsqueeze(0)
    else:
        out = (matrix @ flat.T).T
    return out.reshape(x.shape[0], *out_shape)


class CTOperator(ForwardOperator):
    """The 2D ray transform ``A`` of a ``CTGeometry`` on a ``size x size`` grid of ``[-e, e]^2``.

    ``A`` is ASTRA's discretisation (``'linear'`` projector for parallel, ``'line_fanflat'`` for
    fan beams): ``(A x)_k = sum_p W_kp x_p`` with ``W_kp`` the length of ray ``k`` weighted by
    pixel ``p``'s interpolation kernel. ``A^T`` is the exact transpose ``W^T``.
    ``pseudo_inverse`` is filtered back-projection ``A^* F`` (ODL's ``fbp_op``; ``F`` the
    ramp filter times ``filter_type``, cut off at ``frequency_scaling`` of the Nyquist frequency).
    """

    is_linear = True
    _beam: str | None = None

    def __init__(self, geometry: CTGeometry, size: int = 64, backend: str = "sparse",
                 filter_type: str | Callable[[np.ndarray], np.ndarray] = "Hann",
                 frequency_scaling: float = 0.9) -> None:
        if not isinstance(geometry, CTGeometry):
            raise ConfigError(f"geometry must be a CTGeometry, got {type(geometry).__name__}")
        if self._beam is not None and geometry.beam != self._beam:
            raise ConfigError(f"{type(self).__name__} needs a {self._beam}-beam geometry, got beam={geometry.beam!r}")
        size = positive_int(size, "size")
        choice(backend, CT_BACKENDS, "CT backend")
        if not (callable(filter_type) or filter_type in FBP_FILTERS):
            raise ConfigError(
                f"unknown filter_type {filter_type!r}; choose one of {', '.join(FBP_FILTERS)} or a callable")
        frequency_scaling = real(frequency_scaling, "frequency_scaling")
        if not 0 < frequency_scaling <= 1:
            raise ConfigError(f"frequency_scaling must lie in (0, 1], got {frequency_scaling}")
        odl = require("odl", "ct", _FEATURE)
        require("astra", "ct", _FEATURE)
        tomo = require("odl.applications.tomo", "ct", _FEATURE)

        self.geometry = geometry.resolve(size)
        self.size = size
        self.backend = backend
        self.filter_type = filter_type
        self.frequency_scaling = frequency_scaling
        assert self.geometry.num_detectors is not None  # fixed by resolve(size)
        super().__init__((1, size, size), (1, self.geometry.num_angles, self.geometry.num_detectors))
        e = self.geometry.extent
        self.space = odl.uniform_discr([-e, -e], [e, e], (size, size), dtype="float32")
        self.odl_geometry = _odl_geometry(self.geometry)
        self.ray_transform = tomo.RayTransform(self.space, self.odl_geometry, impl="astra_cpu")
        self._fbp_operator: ForwardOperator | None = None
        if backend == "odl":
            self._odl_operator = OdlOperator(self.ray_transform)
        else:
            matrix = _astra_system_matrix(self.space, self.odl_geometry)
            self._matrix = _torch_csr(matrix)
            self._matrix_t = _torch_csr(matrix.T)

    @classmethod
    def from_geometry(cls, geometry: CTGeometry, size: int = 64, backend: str = "sparse",
                      filter_type: str | Callable[[np.ndarray], np.ndarray] = "Hann",
                      frequency_scaling: float = 0.9) -> Self:
        """An operator of this class for ``geometry`` (whose beam must match the class)."""
        op = cls.__new__(cls)
        CTOperator.__init__(op, geometry, size, backend, filter_type, frequency_scaling)
        return op

    def on_grid(self, size: int) -> CTOperator:
        """The same scan (angles, detector, physical extent, backend) on a ``size x size`` grid.

        Sinograms of one continuous object agree across grids, e.g. to simulate data on a finer
        grid than the reconstruction grid.
        """
        return type(self).from_geometry(self.geometry, size, self.backend, self.filter_type,
                                        self.frequency_scaling)

    def rows(self, indices: Sequence[int]) -> CTOperator:
        """The same scan with only the projection angles ``indices`` (strictly increasing): its own system matrix
        and filtered back-projection."""
        chosen = row_indices(indices, self.geometry.num_angles, self.name)
        if len(chosen) < 2:
            raise ConfigError(f"{self.name}: a scan needs at least two projection angles, got rows {list(chosen)}")
        angles = tuple(float(a) for a in self.geometry.angles()[list(chosen)])
        geometry = replace(self.geometry, angle_list=angles, angle_range=None, num_angles=len(angles))
        return type(self).from_geometry(geometry, self.size, self.backend, self.filter_type, self.frequency_scaling)

    def __repr__(self) -> str:
        return f"{self.name}(size={self.size}, backend={self.backend!r}, geometry={self.geometry})"

    def layout(self) -> dict[str, Tensor]:
        """``angles``: the projection angle (radians) of each sinogram row."""
        return {"angles": torch.as_tensor(self.geometry.angles(), dtype=torch.float64)}

    # -- evaluation ---------------------------------------------------------------------
    def _matrix_forward(self, x: Tensor) -> Tensor:
        return _sparse_apply(self._cast("matrix", self._matrix, x), x, self.range_shape)

    def _matrix_transpose(self, y: Tensor) -> Tensor:
        return _sparse_apply(self._cast("matrix_t", self._matrix_t, y), y, self.domain_shape)

    def forward(self, x: Tensor) -> Tensor:
        """Sinograms ``A x`` of images ``x`` of shape ``(B, 1, N, N)``."""
        if self.backend == "odl":
            return self._odl_operator.forward(x)
        return linear_apply(x, self._matrix_forward, self._matrix_transpose)

    def _adjoint(self, y: Tensor) -> Tensor:
        if self.backend == "odl":
            return self._odl_operator._adjoint(y)
        return linear_apply(y, self._matrix_transpose, self._matrix_forward)

    def _pseudo_inverse(self, y: Tensor) -> Tensor:
        if self._fbp_operator is None:
            tomo = require("odl.applications.tomo", "ct", _FEATURE)
            with np.errstate(invalid="ignore"):  # ODL casts the NaN cell size of unevenly spaced angles; unused
                fbp = tomo.fbp_op(self.ray_transform, padding=True, filter_type=self.filter_type,
                                  frequency_scaling=self.frequency_scaling)
            self._fbp_operator = OdlOperator(fbp)
        return self._fbp_operator.forward(y)

    def fbp(self, y: Tensor) -> Tensor:
        """Filtered back-projection of sinograms ``y`` (image by image, through numpy in float32)."""
        return self.pseudo_inverse(y)


class ParallelBeamCT(CTOperator):
    """Parallel-beam CT: ``num_angles`` directions over ``angle_range`` (default ``(0, pi)``), or the
    explicit ``angles`` (radians).

    See ``CTGeometry`` for the geometry parameters and ``CTOperator`` for the rest.
    """

    _beam = "parallel"

    def __init__(self, size: int = 64, num_angles: int = 30, angle_range: tuple[float, float] | None = None,
                 num_detectors: int | None = None, detector_half_width: float | None = None,
                 backend: str = "sparse", filter_type: str | Callable[[np.ndarray], np.ndarray] = "Hann",
                 frequency_scaling: float = 0.9, angles: Sequence[float] | None = None,
                 detector_offset: float = 0.0, extent: float = 1.0) -> None:
        geometry = CTGeometry("parallel", num_angles, angle_range, num_detectors, detector_half_width,
                              angle_list=angles, detector_offset=detector_offset, extent=extent)
        super().__init__(geometry, size, backend, filter_type, frequency_scaling)


class FanBeamCT(CTOperator):
    """Fan-beam CT with a flat detector: ``num_angles`` source positions over ``angle_range``
    (default ``(0, 2 pi)``) or the explicit ``angles`` (radians), source at ``src_radius`` and
    detector at ``det_radius`` from the rotation centre (default ``4 * extent`` each).

    See ``CTGeometry`` for the geometry parameters and ``CTOperator`` for the rest; a scanner
    described in millimetres and degrees is ``invprior.operators.ct_scanner.FanBeamScanner``.
    """

    _beam = "fan"

    def __init__(self, size: int = 64, num_angles: int = 60, angle_range: tuple[float, float] | None = None,
                 num_detectors: int | None = None, detector_half_width: float | None = None,
                 src_radius: float | None = None, det_radius: float | None = None, backend: str = "sparse",
                 filter_type: str | Callable[[np.ndarray], np.ndarray] = "Hann",
                 frequency_scaling: float = 0.9, angles: Sequence[float] | None = None,
                 detector_offset: float = 0.0, extent: float = 1.0) -> None:
        geometry = CTGeometry("fan", num_angles, angle_range, num_detectors, detector_half_width,
                              src_radius, det_radius, angle_list=angles, detector_offset=detector_offset,
                              extent=extent)
        super().__init__(geometry, size, backend, filter_type, frequency_scaling)
