"""pylops linear operators as invprior operators (``pip install 'invprior[pylops]'``).

pylops is imported only when ``PylopsOperator`` is constructed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from invprior._optional import require
from invprior.core.operator import ForwardOperator, Shape, linear_apply
from invprior.errors import ShapeError, WrongTypeError

if TYPE_CHECKING:
    from pylops import LinearOperator

__all__ = ["PylopsOperator"]


def _shape_from_dims(dims: Sequence[int]) -> Shape:
    """pylops ``dims``/``dimsd`` as an invprior shape: ``(H, W)`` becomes ``(1, H, W)``, others are kept."""
    shape = tuple(int(n) for n in dims)
    return (1, *shape) if len(shape) == 2 else shape


class PylopsOperator(ForwardOperator):
    """A real ``pylops.LinearOperator`` L as a linear operator: ``A(x) = L vec(x)``, ``A^T y = L^T vec(y)``.

    Shapes default to ``linop.dims`` (domain) and ``linop.dimsd`` (range), except that a
    two-axis shape ``(H, W)`` is read as a single-channel image and becomes ``(1, H, W)``, the
    ``(C, H, W)`` layout of invprior images; one-axis and three-or-more-axis shapes are kept.
    Shapes given explicitly must hold ``linop.shape[1]`` (domain) and ``linop.shape[0]``
    (range) elements; they are flattened in C order, as pylops does.

    The whole batch goes through ``matmat``/``rmatmat`` in numpy on the CPU, in float64 when the
    input or the linop is float64 and in float32 otherwise; the result is returned on the input's
    device in its dtype. Gradients are exact: the backward pass applies the transpose.
    Complex-valued linops (e.g. ``pylops.signalprocessing.FFT2D``) are refused.
    """

    is_linear = True

    def __init__(self, linop: LinearOperator, domain_shape: Shape | None = None,
                 range_shape: Shape | None = None) -> None:
        pylops = require("pylops", "pylops", "PylopsOperator")
        if not isinstance(linop, pylops.LinearOperator):
            raise WrongTypeError(f"PylopsOperator expects a pylops.LinearOperator, got {type(linop).__name__}")
        self.linop = linop
        name = f"PylopsOperator[{type(linop).__name__}]"
        self._dtype = np.dtype(linop.dtype)
        if self._dtype.kind == "c":
            raise ShapeError(
                f"{name}: the pylops operator has complex dtype {self._dtype}; only real linear "
                "operators are supported (split real and imaginary parts into a real operator first)"
            )
        rows, cols = (int(n) for n in linop.shape)
        domain = tuple(domain_shape) if domain_shape is not None else _shape_from_dims(linop.dims)
        range_ = tuple(range_shape) if range_shape is not None else _shape_from_dims(linop.dimsd)
        for what, shape, size in (("domain_shape", domain, cols), ("range_shape", range_, rows)):
            if math.prod(shape) != size:
                raise ShapeError(
                    f"{name}: {what} {shape} holds {math.prod(shape)} elements, but the pylops operator "
                    f"of shape {(rows, cols)} needs {size}"
                )
        super().__init__(domain, range_)
        self._forward = self._on_host(linop.matmat, self.range_shape)
        self._transpose = self._on_host(linop.rmatmat, self.domain_shape)

    @property
    def name(self) -> str:
        return f"PylopsOperator[{type(self.linop).__name__}]"

    def _on_host(self, matmat: Callable[[np.ndarray], np.ndarray], out_shape: Shape) -> Callable[[Tensor], Tensor]:
        """Wrap ``matmat`` (columns in, columns out) as a batched tensor map into ``(B, *out_shape)``."""

        def apply(t: Tensor) -> Tensor:
            batch = t.shape[0]
            wide = t.dtype == torch.float64
            compute = np.promote_types(self._dtype, np.float64 if wide else np.float32)
            host = t.detach().to(device="cpu", dtype=torch.float64 if wide else torch.float32)
            columns = np.ascontiguousarray(host.reshape(batch, -1).numpy().T, dtype=compute)
            out = np.asarray(matmat(columns))
            if np.iscomplexobj(out):
                raise ShapeError(f"{self.name}: the pylops operator returned complex values (dtype {out.dtype})")
            rows = torch.from_numpy(np.ascontiguousarray(out.T))
            return rows.reshape(batch, *out_shape).to(device=t.device, dtype=t.dtype)

        return apply

    def forward(self, x: Tensor) -> Tensor:
        return linear_apply(x, self._forward, self._transpose)

    def _adjoint(self, y: Tensor) -> Tensor:
        return linear_apply(y, self._transpose, self._forward)
