"""Template components. Operators subclass ``invprior.ForwardOperator`` (``forward``, and ``_adjoint``
for linear ones); regularizers subclass ``invprior.Regularizer`` (one value per image)."""

from __future__ import annotations

from torch import Tensor

from invprior import ForwardOperator, Regularizer
from invprior.core.operator import linear_apply


class ColumnSums(ForwardOperator):
    """``(A x)_j = sum_i x_ij``: the column sums of ``(B, 1, n, n)`` images, shape ``(B, 1, n)``.
    A registered operator must construct with defaults."""

    is_linear = True

    def __init__(self, size: int = 16) -> None:
        super().__init__((1, size, size), (1, size))

    def _sums(self, x: Tensor) -> Tensor:
        return x.sum(dim=-2)

    def _spread(self, y: Tensor) -> Tensor:  # the exact adjoint: copy each sum down its column
        return y.unsqueeze(-2).expand(*y.shape[:-1], self.domain_shape[-2], y.shape[-1]).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        return linear_apply(x, self._sums, self._spread)

    def _adjoint(self, y: Tensor) -> Tensor:
        return linear_apply(y, self._spread, self._sums)


class SquaredNorm(Regularizer):
    """``R(x) = ||x||^2`` per image."""

    def __call__(self, x: Tensor) -> Tensor:
        return x.pow(2).flatten(1).sum(dim=1)
