"""Held-out cross-validation: folds partition the data, fits never see their held-out entries, the error is the
sum of held-out squared misses, and the chosen TV weight is near the oracle's on a known phantom."""

from __future__ import annotations

import pytest
import torch

from invprior import GaussianNoise, InverseProblem
from invprior.core.problem import NoiseEstimateWarning
from invprior.data.phantoms import random_ellipses
from invprior.methods.classical import Tikhonov, TVLeastSquares
from invprior.methods.cross_validation import MaskedOperator, fold_labels, held_out_errors
from invprior.metrics import psnr
from invprior.operators.compressed_sensing import GaussianCS
from invprior.operators.ct import ParallelBeamCT
from invprior.operators.denoising import Denoising


def _problem(op, size, seed=0, relative=0.05, n=1):
    x = random_ellipses(size=size, n=n, seed=seed)
    return InverseProblem.simulate(op, x, GaussianNoise(relative=relative), seed=seed)


def test_folds_partition_the_entries_evenly_and_reproducibly():
    labels = fold_labels((3, 7, 5), 4, seed=2)
    counts = torch.bincount(labels.flatten(), minlength=4)
    assert counts.sum() == 105 and counts.max() - counts.min() <= 1
    assert torch.equal(labels, fold_labels((3, 7, 5), 4, seed=2))
    assert not torch.equal(labels, fold_labels((3, 7, 5), 4, seed=3))
    for bad in (1, 106):
        with pytest.raises(ValueError, match="folds"):
            fold_labels((3, 7, 5), bad)


def test_masked_operator_is_the_restriction_and_has_the_exact_adjoint():
    op = GaussianCS(size=8, ratio=0.5, seed=0)
    mask = (fold_labels(op.range_shape, 3, seed=1) != 0).double()
    masked = MaskedOperator(op, mask)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, *op.domain_shape, generator=gen, dtype=torch.float64)
    y = torch.randn(2, *op.range_shape, generator=gen, dtype=torch.float64)
    assert torch.equal(masked(x), op(x) * mask)
    assert torch.allclose((masked(x) * y).sum(), (x * masked.adjoint(y)).sum(), rtol=1e-12)
    assert masked.norm() <= op.norm() + 1e-9


def test_held_out_entries_never_reach_the_fit():
    """Every fold's fit sees zeros where its fold lies, and changing y there leaves that fold's fits unchanged."""
    op = Denoising(size=12)
    problem = _problem(op, 12, relative=0.1)
    labels = fold_labels(op.range_shape, 4, seed=0)
    weights = [torch.tensor([0.1]), torch.tensor([1.0])]

    def run(data):
        parts, fits = [], []

        def solve(part, weight, warm):  # a smoothing fit of the data it is given
            parts.append(part)
            fits.append(Tikhonov(weight=float(weight[0])).reconstruct(part, progress=False).image)
            return fits[-1]

        return held_out_errors(solve, data, weights, folds=4), parts, fits

    errors, parts, fits = run(problem)
    changed = problem.y.clone()
    changed[0][labels == 0] += 5.0  # only fold 0's entries move
    errors_moved, _, fits_moved = run(InverseProblem(op, changed, noise_std=problem.noise_std))
    for k, part in enumerate(parts):
        held = labels == k // 2
        assert bool((part.y[0][held] == 0).all()) and bool((part.operator(problem.x_true)[0][held] == 0).all())
    assert torch.equal(fits_moved[0], fits[0]) and torch.equal(fits_moved[1], fits[1])  # fold 0 is blind to them
    assert not torch.equal(fits_moved[2], fits[2])  # the other folds fit them
    assert (errors_moved[:, 0] > errors[:, 0]).all()  # and they are predicted worse


def test_cv_error_is_the_sum_of_held_out_misses_and_folds_use_their_share_of_the_weight():
    op = Denoising(size=10)
    problem = _problem(op, 10)
    guess = torch.full_like(problem.x_true, 0.3)
    given: list[float] = []

    def solve(part, weight, warm):  # ignores the data: the error is then ||guess - y||^2 over all entries
        given.append(float(weight[0]))
        return guess

    errors = held_out_errors(solve, problem, [torch.tensor([2.0])], folds=3)
    assert errors[0, 0] == pytest.approx(float((guess - problem.y).pow(2).sum()), rel=1e-6)
    sizes = torch.bincount(fold_labels(op.range_shape, 3).flatten()).tolist()
    assert given == pytest.approx([2.0 * (1 - s / 100) for s in sizes])


def test_tv_cross_validated_weight_is_near_the_oracle_without_a_noise_level():
    op = ParallelBeamCT(size=32, num_angles=20)
    problem = _problem(op, 32, seed=3, relative=0.05)
    bare = InverseProblem(op, problem.y, x_true=problem.x_true)
    with pytest.warns(NoiseEstimateWarning, match="tv: no noise level given"):
        cv = TVLeastSquares(weight="cv", iterations=200).reconstruct(bare, progress=False)
    # the oracle and the discrepancy principle on the same grid (centred on the same noise estimate)
    oracle = TVLeastSquares(weight="oracle", iterations=200, grid_size=17).reconstruct(bare.with_estimated_noise(),
                                                                                    progress=False)
    discrepancy = TVLeastSquares(weight="discrepancy", iterations=200).reconstruct(problem, progress=False)
    table = cv.extras["weight_search"]
    errors = [row["cv_error"][0] for row in table]
    assert cv.params["weight"][0] == table[errors.index(min(errors))]["weight"][0]
    quality = {name: float(psnr(r.image, problem.x_true)) for name, r in
               (("cv", cv), ("oracle", oracle), ("discrepancy", discrepancy))}
    assert quality["oracle"] - 0.5 < quality["cv"] <= quality["oracle"] + 1e-6, quality
    assert quality["cv"] > quality["discrepancy"] + 1.0, quality
