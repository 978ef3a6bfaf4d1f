"""Test your components against independent truths (here: the adjoint identity and a hand sum)."""

import torch
from my_invprior_plugin import ColumnSums, SquaredNorm

from invprior.core.operator import adjoint_mismatch


def test_column_sums_and_their_adjoint():
    op = ColumnSums(size=4)
    x = torch.arange(16, dtype=torch.float64).view(1, 1, 4, 4)
    assert op(x).tolist() == [[[24.0, 28.0, 32.0, 36.0]]]
    assert adjoint_mismatch(op) < 1e-12


def test_squared_norm():
    assert SquaredNorm()(torch.ones(2, 1, 3, 3)).tolist() == [9.0, 9.0]
