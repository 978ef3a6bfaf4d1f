"""Segmentation of reconstructions and the task score of segmentation challenges.

A reconstruction is resized to the reference's grid (bilinear; both cover the same field of view),
thresholded into ``K`` classes by Otsu's method (scikit-image's ``threshold_otsu`` for two classes,
``threshold_multiotsu`` for more) and compared with the reference by the Matthews correlation
coefficient (MCC, 1 is perfect, 0 no better than chance) or the task's own score
(``invprior.core.task.SegmentationTask``). With a pixel-wise predictive std, the
posterior's own forecast of the segmentation errors is checked against the reference
(``segmentation_calibration``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from torch import Tensor

from invprior._optional import require
from invprior.core.task import SegmentationTask
from invprior.errors import ShapeError

__all__ = ["SegmentationCalibration", "SegmentationScore", "anchored_otsu_thresholds", "otsu_segmentation",
           "matthews_correlation", "resize", "segmentation_calibration", "segmentation_scores"]

_FEATURE = "Otsu segmentation"


def _numpy(image: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(image, Tensor):
        image = image.detach().cpu().double().numpy()
    return np.asarray(image, dtype=np.float64)


def resize(image: Tensor | np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """``image`` (2D) resampled to ``shape`` by bilinear interpolation over the same field of view."""
    image = _numpy(image)
    if image.shape == tuple(shape):
        return image
    transform = require("skimage.transform", "data", _FEATURE)
    return transform.resize(image, shape, order=1, mode="edge", anti_aliasing=False, preserve_range=True)


def otsu_segmentation(image: Tensor | np.ndarray, classes: int = 2) -> tuple[np.ndarray, list[float]]:
    """Labels ``0 .. classes-1`` of a 2D image (or of a list of pixel values) by Otsu's thresholds (maximal
    between-class variance over scikit-image's 256-bin histogram), and the thresholds (increasing); a value
    above threshold ``k`` is in class ``k + 1`` or higher, as scikit-image defines them."""
    image = _numpy(image)
    if image.ndim not in (1, 2) or image.size == 0:
        raise ShapeError(f"otsu_segmentation needs a 2D image or a list of values, got shape {image.shape}")
    if classes < 2:
        raise ShapeError(f"otsu_segmentation needs at least 2 classes, got {classes}")
    filters = require("skimage.filters", "data", _FEATURE)
    if float(image.max()) == float(image.min()):
        return np.zeros(image.shape, dtype=np.int64), [float(image.min())] * (classes - 1)
    thresholds = [float(filters.threshold_otsu(image))] if classes == 2 else \
        [float(t) for t in filters.threshold_multiotsu(image, classes=classes)]
    return np.digitize(image, thresholds, right=True).astype(np.int64), thresholds  # class k: t_k-1 < v <= t_k


def anchored_otsu_thresholds(values: Tensor | np.ndarray, classes: int, anchor: float, anchor_class: int,
                             bins: int = 256) -> list[float]:
    """Otsu's thresholds with one value's class known: the ``classes - 1`` cuts of a ``bins``-bin histogram that
    maximise the between-class variance ``sum_k w_k mu_k^2`` (up to a constant) among those that put ``anchor`` in
    class ``anchor_class`` (``t_{k-1} < anchor <= t_k``); thresholds are bin edges. For difference images, whose
    background is 0 by construction, this keeps the background one class whatever the inclusions' contrasts."""
    values = _numpy(values).ravel()
    if classes not in (2, 3):
        raise ShapeError(f"anchored_otsu_thresholds: 2 or 3 classes, got {classes}")
    if not 0 <= anchor_class < classes:
        raise ShapeError(f"anchored_otsu_thresholds: anchor_class must be in 0..{classes - 1}, got {anchor_class}")
    low, high = min(float(values.min()), anchor), max(float(values.max()), anchor)
    if high == low:
        return [low] * (classes - 1)
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    sums = np.histogram(values, bins=bins, range=(low, high), weights=values)[0]
    weight, total = np.concatenate([[0.0], np.cumsum(counts)]), np.concatenate([[0.0], np.cumsum(sums)])
    cuts = np.array(list(combinations(range(1, bins), classes - 1)))                  # (C, K - 1) bin indices
    bounds = np.hstack([np.zeros((len(cuts), 1), dtype=int), cuts, np.full((len(cuts), 1), bins)])
    w = weight[bounds[:, 1:]] - weight[bounds[:, :-1]]                                  # (C, K)
    mass = total[bounds[:, 1:]] - total[bounds[:, :-1]]
    spread = np.where(w > 0, mass ** 2 / np.maximum(w, 1), -np.inf).sum(axis=1)       # sum_k S_k^2 / W_k
    limits = np.hstack([np.full((len(cuts), 1), -np.inf), edges[cuts], np.full((len(cuts), 1), np.inf)])
    allowed = (limits[:, anchor_class] < anchor) & (anchor <= limits[:, anchor_class + 1])
    spread[~allowed] = -np.inf
    return [float(t) for t in edges[cuts[int(np.argmax(spread))]]]


def matthews_correlation(prediction: Tensor | np.ndarray, reference: Tensor | np.ndarray) -> float:
    """The Matthews correlation coefficient of two label maps of the same shape, any number of classes:

    ``(c s - sum_k p_k t_k) / sqrt((s^2 - sum_k p_k^2)(s^2 - sum_k t_k^2))`` with ``s`` pixels, ``c``
    of them correct, ``p_k`` / ``t_k`` pixels predicted / true in class ``k``. For two classes it is
    ``(TP TN - FP FN) / sqrt((TP + FP)(TP + FN)(TN + FP)(TN + FN))``; 0 where a map has one class only.
    """
    p, t = np.asarray(_numpy(prediction), dtype=np.int64), np.asarray(_numpy(reference), dtype=np.int64)
    if p.shape != t.shape:
        raise ShapeError(f"matthews_correlation: prediction has shape {p.shape} but reference has {t.shape}")
    classes = int(max(p.max(initial=0), t.max(initial=0))) + 1
    s = float(p.size)
    correct = float((p == t).sum())
    pk = np.bincount(p.ravel(), minlength=classes).astype(np.float64)
    tk = np.bincount(t.ravel(), minlength=classes).astype(np.float64)
    denominator = math.sqrt((s * s - float(pk @ pk)) * (s * s - float(tk @ tk)))
    return 0.0 if denominator == 0 else (correct * s - float(pk @ tk)) / denominator


@dataclass(frozen=True)
class SegmentationScore:
    """The segmentation of one reconstruction on the reference grid and its task score (``metric``, e.g.
    ``"mcc"``) against the reference."""

    value: float
    metric: str
    thresholds: list[float]
    labels: np.ndarray


@dataclass(frozen=True)
class _Segmented:
    """Otsu classes of one image on the reference grid: ``order`` (``k``: the ``k``-th class in value), the task's
    ``labels``, the ``thresholds`` and the pixels ``inside`` the support."""

    values: np.ndarray
    order: np.ndarray
    labels: np.ndarray
    thresholds: list[float]
    inside: np.ndarray


def _segment(image: Tensor, truth: np.ndarray, task: SegmentationTask, support: Tensor | None) -> _Segmented:
    """Resize ``image`` (2D) to the reference grid, threshold it inside the support, label it as the task says."""
    classes = len(task.labels_by_value) if task.labels_by_value is not None else max(int(truth.max()) + 1, 2)
    values = resize(image, truth.shape)
    inside = np.ones(truth.shape, dtype=bool) if support is None else \
        resize(support.double(), truth.shape) >= 0.5
    if task.background_value is None:
        _, thresholds = otsu_segmentation(values[inside], classes)
    else:
        thresholds = anchored_otsu_thresholds(values[inside], classes, task.background_value, task.background_class)
    order = np.digitize(values, thresholds, right=True).astype(np.int64)
    labels = order if task.labels_by_value is None else np.asarray(task.labels_by_value)[order]
    return _Segmented(values, order, np.where(inside, labels, 0), thresholds, inside)


def _score(task: SegmentationTask, labels: np.ndarray, truth: np.ndarray) -> float:
    if task.score == "ktc_score":
        from invprior.analysis.ssim_score import ktc_score

        return ktc_score(truth, labels)
    return matthews_correlation(labels, truth)


def segmentation_scores(images: Tensor, reference: Tensor, task: SegmentationTask | None = None,
                        support: Tensor | None = None) -> list[SegmentationScore]:
    """Per image of a batch ``(B, 1, H, W)``: resize to the reference grid ``(B, H', W')``, Otsu into as
    many classes as the reference (or the ``task``) has, computed inside ``support`` (an ``(H, W)`` mask of the
    image grid; label 0 outside), labelled and scored as the ``task`` says (default: value order, MCC)."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise ShapeError(f"segmentation_scores needs images (B, 1, H, W), got {tuple(images.shape)}")
    if reference.ndim != 3 or reference.shape[0] != images.shape[0]:
        raise ShapeError(f"segmentation_scores needs a reference (B={images.shape[0]}, H, W), "
                         f"got {tuple(reference.shape)}")
    task = task or SegmentationTask()
    out = []
    for image, truth in zip(images, reference):
        truth = truth.detach().cpu().numpy()
        segmented = _segment(image[0], truth, task, support)
        out.append(SegmentationScore(_score(task, segmented.labels, truth), task.score, segmented.thresholds,
                                     segmented.labels))
    return out


@dataclass(frozen=True)
class SegmentationCalibration:
    """How well a predictive std forecasts the segmentation's errors against a reference.

    ``expected_error_rate``: the mean over pixels of the probability, under ``N(mean_i, std_i^2)``, that pixel
    ``i`` falls outside its Otsu class; ``observed_error_rate``: the fraction of pixels whose class differs from
    the reference (equal when calibrated); ``auroc``: how well that probability ranks the wrong pixels above the
    right ones (1 perfect, 0.5 chance; NaN when every pixel is right or every pixel wrong).
    """

    expected_error_rate: float
    observed_error_rate: float
    auroc: float


def segmentation_calibration(mean: Tensor, std: Tensor, reference: Tensor, task: SegmentationTask | None = None,
                             support: Tensor | None = None) -> SegmentationCalibration:
    """``SegmentationCalibration`` of one image: ``mean`` and ``std`` ``(1, 1, H, W)`` resized to the reference grid
    ``(1, H', W')``, Otsu thresholds ``t`` of the mean (as ``segmentation_scores`` computes them), and for a pixel of
    class ``k`` the probability ``1 - (Phi((t_k - mean) / std) - Phi((t_{k-1} - mean) / std))`` of leaving it (0
    outside the support, where the label is fixed)."""
    stats = require("scipy.stats", "data", _FEATURE)
    if mean.shape != std.shape or mean.ndim != 4 or mean.shape[:2] != (1, 1):
        raise ShapeError(f"segmentation_calibration needs mean and std of shape (1, 1, H, W), got "
                         f"{tuple(mean.shape)} and {tuple(std.shape)}")
    truth = reference[0].detach().cpu().numpy()
    segmented = _segment(mean[0, 0], truth, task or SegmentationTask(), support)
    values, order = segmented.values, segmented.order
    spread = np.maximum(resize(std[0, 0], truth.shape), 1e-300)
    edges = np.array([-np.inf, *segmented.thresholds, np.inf])
    stay = stats.norm.cdf((edges[order + 1] - values) / spread) - stats.norm.cdf((edges[order] - values) / spread)
    leave = np.where(segmented.inside, np.clip(1.0 - stay, 0.0, 1.0), 0.0)
    wrong = (segmented.labels != truth).ravel()
    count = int(wrong.sum())
    if count in (0, wrong.size):
        auroc = float("nan")
    else:  # Mann-Whitney: the probability that a wrong pixel outranks a right one (ties count half)
        ranks = stats.rankdata(leave.ravel())
        auroc = (float(ranks[wrong].sum()) - count * (count + 1) / 2) / (count * (wrong.size - count))
    return SegmentationCalibration(float(leave.mean()), float(wrong.mean()), auroc)
