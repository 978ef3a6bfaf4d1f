"""Otsu segmentation and the Matthews correlation coefficient, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from invprior.analysis.segmentation import (
    anchored_otsu_thresholds,
    matthews_correlation,
    otsu_segmentation,
    resize,
    segmentation_calibration,
    segmentation_scores,
)
from invprior.errors import ShapeError

pytest.importorskip("skimage")
from skimage.filters import threshold_otsu  # noqa: E402


def test_binary_mcc_by_hand():
    prediction = np.array([[1, 1, 1, 1, 0], [0, 0, 0, 0, 1]])
    truth = np.array([[1, 1, 1, 0, 1], [1, 0, 0, 0, 0]])
    # TP = 3, FP = 2 (positions (0,3), (1,4)), FN = 2 ((0,4), (1,0)), TN = 3
    expected = (3 * 3 - 2 * 2) / math.sqrt((3 + 2) * (3 + 2) * (3 + 2) * (3 + 2))
    assert matthews_correlation(prediction, truth) == pytest.approx(expected) == pytest.approx(0.2)
    assert matthews_correlation(truth, truth) == 1.0
    assert matthews_correlation(1 - truth, truth) == -1.0
    assert matthews_correlation(np.ones_like(truth), truth) == 0.0  # one class only: defined as 0
    assert matthews_correlation(torch.from_numpy(prediction), torch.from_numpy(truth)) == pytest.approx(0.2)


def test_multiclass_mcc_by_hand():
    truth = np.array([0, 0, 1, 1, 2, 2])
    prediction = np.array([0, 1, 1, 1, 2, 0])
    # s = 6, c = 4, p = (2, 3, 1), t = (2, 2, 2): (4*6 - 12) / sqrt((36 - 14)(36 - 12))
    assert matthews_correlation(prediction, truth) == pytest.approx(12 / math.sqrt(22 * 24))
    with pytest.raises(ShapeError, match="prediction has shape"):
        matthews_correlation(prediction[:5], truth)


def test_otsu_separates_two_and_three_levels():
    gen = np.random.default_rng(0)
    truth = np.zeros((40, 40), dtype=np.int64)
    truth[5:25, 8:30] = 1
    truth[28:36, 10:20] = 2
    noise = 0.01 * gen.standard_normal(truth.shape)
    two = np.array([0.2, 0.8])[(truth > 0).astype(int)] + noise
    binary, [threshold] = otsu_segmentation(two)
    assert threshold == threshold_otsu(two) and np.array_equal(binary, two > threshold)  # scikit-image's rule
    # any threshold in the gap maximises Otsu's criterion: scikit-image takes the first histogram bin there,
    # whose upper half may hold the brightest background pixels
    assert threshold < two[truth > 0].min() and (binary != (truth > 0)).mean() < 0.005
    image = np.array([0.1, 0.5, 0.9])[truth] + noise
    three, thresholds = otsu_segmentation(image, classes=3)
    assert (three != truth).mean() < 0.005 and 0.1 < thresholds[0] < 0.5 < thresholds[1] < 0.9
    flat, _ = otsu_segmentation(np.full((4, 4), 2.0))
    assert not flat.any()


def test_scores_on_the_reference_grid():
    """A disc reconstructed on a coarse grid scores 1 against its fine reference, a shifted disc less."""
    fine = np.add.outer((np.arange(128) - 63.5) ** 2, (np.arange(128) - 63.5) ** 2) < 40**2
    reference = torch.from_numpy(fine.astype(np.int64))[None]
    coarse = torch.from_numpy(fine.reshape(64, 2, 64, 2).mean(axis=(1, 3)))[None, None]
    score = segmentation_scores(coarse, reference)[0]
    assert score.labels.shape == (128, 128) and score.value > 0.98
    shifted = torch.roll(coarse, 6, dims=-1)
    assert segmentation_scores(shifted, reference)[0].value < 0.9
    assert resize(coarse[0, 0], (128, 128)).shape == (128, 128)
    with pytest.raises(ShapeError, match=r"reference \(B=1"):
        segmentation_scores(coarse, reference[0])


def test_segmentation_calibration_by_hand():
    # two levels 0 and 1 (Otsu threshold between them), std 0.5 everywhere: every pixel sits 0.5 from the
    # threshold t, so it leaves its class with probability Phi(-|v - t| / 0.5)
    values = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    values[..., :, 2:] = 1.0
    std = torch.full_like(values, 0.5)
    reference = (values[0] > 0.5).long()
    reference[0, 0, 0] = 1                              # one pixel of 16 labelled wrongly
    calibration = segmentation_calibration(values, std, reference)
    threshold = otsu_segmentation(values[0, 0])[1][0]
    leave = [0.5 * math.erfc(abs(v - threshold) / 0.5 / math.sqrt(2)) for v in (0.0, 1.0)]
    assert calibration.expected_error_rate == pytest.approx(sum(leave) / 2, rel=1e-9)
    assert calibration.observed_error_rate == pytest.approx(1 / 16)
    # AUROC by its definition: over (wrong, right) pixel pairs, 1 when the wrong one is likelier to leave, 1/2 on a tie
    p_wrong = leave[0]
    p_right = [leave[0]] * 7 + [leave[1]] * 8
    pairs = [1.0 if p_wrong > p else 0.5 if p_wrong == p else 0.0 for p in p_right]
    assert calibration.auroc == pytest.approx(sum(pairs) / len(pairs))
    # a larger std where the wrong pixel is: perfect ranking
    std[0, 0, 0, 0] = 5.0
    assert segmentation_calibration(values, std, reference).auroc == pytest.approx(1.0)
    # no wrong pixel: no ranking
    assert math.isnan(segmentation_calibration(values, std, (values[0] > 0.5).long()).auroc)
    with pytest.raises(ShapeError, match="segmentation_calibration"):
        segmentation_calibration(values, std[0], reference)


def test_anchored_otsu_keeps_the_known_background_in_its_class():
    """Background at 0 (80 %), a strong negative class at -3 and a weak positive one at +0.5: plain three-class
    Otsu spends a threshold inside the strong class and merges the background with the weak one; with the
    background's value known, the thresholds fall on either side of 0."""
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0.0, 0.05, 8000), rng.uniform(-3.5, -1.0, 1000),
                             rng.normal(0.5, 0.05, 1000)])
    plain = otsu_segmentation(values, 3)[1]
    assert plain[1] < 0.0                                                   # 0 lands in the top class
    low, high = anchored_otsu_thresholds(values, 3, anchor=0.0, anchor_class=1)
    assert -1.5 < low < -0.15 and 0.15 < high < 0.35
    labels = np.digitize(values, [low, high], right=True)
    assert (labels[:8000] == 1).mean() > 0.99 and (labels[9000:] == 2).mean() > 0.99
    assert (labels[8000:9000] == 0).mean() > 0.9


def test_anchored_otsu_equals_otsu_when_the_anchor_is_where_otsu_puts_it():
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(-2, 0.3, 500), rng.normal(0, 0.3, 2000), rng.normal(3, 0.3, 400)])
    plain = otsu_segmentation(values, 3)[1]
    anchored = anchored_otsu_thresholds(values, 3, anchor=0.0, anchor_class=1)
    width = (values.max() - values.min()) / 256
    assert np.allclose(anchored, plain, atol=1.01 * width)                 # bin edges against bin centres
    two = anchored_otsu_thresholds(values[values < 1.5], 2, anchor=0.0, anchor_class=1)
    assert abs(two[0] - otsu_segmentation(values[values < 1.5], 2)[1][0]) <= 1.01 * width
