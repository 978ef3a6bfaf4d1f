"""Linear ODL operators as ``ForwardOperator`` s.

ODL is imported when an adapter is constructed, so this module imports without it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from invprior._optional import require
from invprior.core.operator import ForwardOperator, linear_apply
from invprior.errors import ConfigError, ShapeError, WrongTypeError

Shape = tuple[int, ...]


def _space_weight(space: Any, which: str, odl_op: Any) -> float:
    """The constant ``w`` of the inner product ``<u, v> = w * sum(u * v)`` of an ODL space."""
    const = getattr(space.weighting, "const", None)
    if const is None:
        raise ConfigError(
            f"OdlOperator supports only spaces with a constant weighting; the {which} of {odl_op!r} "
            f"has {space.weighting!r}, for which the Euclidean adjoint is not a rescaled ODL adjoint"
        )
    if getattr(space.weighting, "exponent", 2.0) != 2.0:
        raise ConfigError(
            f"OdlOperator needs Hilbert spaces (exponent 2); the {which} of {odl_op!r} has exponent "
            f"{space.weighting.exponent}"
        )
    const = float(const)
    if not (np.isfinite(const) and const > 0):
        raise ConfigError(f"the {which} of {odl_op!r} has a non-positive weighting constant {const}")
    return const


def _evaluate(odl_op: Any, x: Tensor, in_shape: Shape, out_shape: Shape) -> Tensor:
    """Apply ``odl_op`` to each ``in_shape`` slice of ``x``, on the CPU, in the ODL space's dtype.

    The result has shape ``(*x.shape[:-len(in_shape)], *out_shape)`` and ``x``'s dtype and device.
    """
    lead = x.shape[: x.ndim - len(in_shape)]
    dtype = np.dtype(odl_op.domain.dtype_identifier)
    arrays = x.detach().to("cpu").reshape(-1, *in_shape).numpy().astype(dtype, copy=False)
    results = [torch.as_tensor(odl_op(a).data).to("cpu") for a in arrays]
    out = torch.stack(results) if results else torch.zeros((0, *out_shape))
    return out.to(device=x.device, dtype=x.dtype).reshape(*lead, *out_shape)


class OdlOperator(ForwardOperator):
    """A linear ODL operator ``A: X -> Y`` acting on batches of shape ``(B, C, *X.shape)``.

    The ``C`` channels are independent: ``(A x)[b, c] = A(x[b, c])``. ODL's ``A.adjoint`` is the
    adjoint for the weighted inner products ``<u, v>_X = w_X u.v``, so the Euclidean adjoint is
    ``A^T = (w_X / w_Y) A^*`` (constant weightings only); the factor is checked once at
    construction on a random input seeded by ``seed``, which also accepts ODL adjoints that
    ignore the weightings (``odl.MatrixOperator``) and rejects non-adjoints. Every slice goes through numpy on the
    CPU in the ODL space's dtype; results come back in the input's dtype and device, and the
    gradient of ``A`` is ``A^T`` (and vice versa), so both are differentiable to any order.
    """

    is_linear = True

    def __init__(self, odl_op: Any, channels: int = 1, seed: int = 0) -> None:
        odl = require("odl", "ct", "OdlOperator")
        if not isinstance(odl_op, odl.Operator):
            raise WrongTypeError(f"OdlOperator expects an odl.Operator, got {type(odl_op).__name__}")
        if not odl_op.is_linear:
            raise ConfigError(f"OdlOperator needs a linear ODL operator, got the nonlinear {odl_op!r}")
        tensor_space = require("odl.core.space.base_tensors", "ct", "OdlOperator").TensorSpace
        for which, space in (("domain", odl_op.domain), ("range", odl_op.range)):
            if not isinstance(space, tensor_space):
                raise WrongTypeError(
                    f"OdlOperator needs a DiscretizedSpace or tensor space as {which}, got {type(space).__name__}"
                )
            if not space.is_real:
                raise ShapeError(f"OdlOperator needs a real {which}, got dtype {space.dtype_identifier}")
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
            raise ConfigError(f"{type(self).__name__}: channels must be a positive integer, got {channels!r}")
        weighted_scale = (_space_weight(odl_op.domain, "domain", odl_op)
                          / _space_weight(odl_op.range, "range", odl_op))
        super().__init__((channels, *odl_op.domain.shape), (channels, *odl_op.range.shape))
        self.odl_op = odl_op
        self.channels = channels
        try:
            self._odl_adjoint = odl_op.adjoint
        except NotImplementedError as exc:
            raise ConfigError(f"the ODL operator {odl_op!r} has no adjoint") from exc
        self._adjoint_scale = self._calibrate_adjoint(weighted_scale, seed)

    @property
    def name(self) -> str:
        return f"OdlOperator({type(self.odl_op).__name__})"

    def _apply(self, x: Tensor) -> Tensor:
        return _evaluate(self.odl_op, x, self.domain_shape[1:], self.range_shape[1:])

    def _calibrate_adjoint(self, weighted_scale: float, seed: int) -> float:
        """The factor ``s`` with ``A^T = s A^*``, measured as ``||A x||^2 / <x, A^* A x>``.

        It must be ``w_X / w_Y`` (ODL's adjoint for weighted inner products) or ``1`` (an ODL
        adjoint that ignores the weightings, like ``odl.MatrixOperator``'s); anything else means
        ``odl_op.adjoint`` is not an adjoint.
        """
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((1, *self.domain_shape[1:]), generator=gen, dtype=torch.float64)
        ax = _evaluate(self.odl_op, x, self.domain_shape[1:], self.range_shape[1:])
        atax = _evaluate(self._odl_adjoint, ax, self.range_shape[1:], self.domain_shape[1:])
        numerator, denominator = float((ax * ax).sum()), float((x * atax).sum())
        if numerator == 0.0:
            return weighted_scale
        measured = numerator / denominator if denominator != 0.0 else float("inf")
        rtol = 1e-3 if np.dtype(self.odl_op.domain.dtype_identifier).itemsize < 8 else 1e-8
        for scale in (weighted_scale, 1.0):
            if abs(measured - scale) <= rtol * abs(scale):
                return scale
        raise ConfigError(
            f"odl_op.adjoint of {self.odl_op!r} is not its adjoint: ||A x||^2 / <x, A^* A x> = "
            f"{measured:.6g}, expected {weighted_scale:.6g} (weighted inner products) or 1 (Euclidean)"
        )

    def _apply_transpose(self, y: Tensor) -> Tensor:
        out = _evaluate(self._odl_adjoint, y, self.range_shape[1:], self.domain_shape[1:])
        return out if self._adjoint_scale == 1.0 else out * self._adjoint_scale

    def forward(self, x: Tensor) -> Tensor:
        """``A x`` slice by slice."""
        return linear_apply(x, self._apply, self._apply_transpose)

    def _adjoint(self, y: Tensor) -> Tensor:
        return linear_apply(y, self._apply_transpose, self._apply)
