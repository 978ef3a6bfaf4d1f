"""The zero regularizer, for unregularised fits."""

from __future__ import annotations

from torch import Tensor

from invprior.core.interfaces import Regularizer


class NoRegularizer(Regularizer):
    """``R(x) = 0``."""

    def __call__(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0])
