"""What a reference segmentation is scored by: the task of a segmentation challenge."""

from __future__ import annotations

from dataclasses import dataclass

from invprior.errors import ConfigError
from invprior.validation import choice

__all__ = ["SCORES", "SCORE_LABELS", "SegmentationTask"]

#: ``mcc``: Matthews correlation over all classes; ``ktc_score``: the mean per-class SSIM of the
#: Kuopio Tomography Challenge 2023 (``invprior.analysis.ssim_score``).
SCORES = ("mcc", "ktc_score")
#: How figures and summaries name each score.
SCORE_LABELS = {"mcc": "MCC", "ktc_score": "KTC score"}


@dataclass(frozen=True)
class SegmentationTask:
    """How reconstructions become label maps and how the maps are scored against the reference.

    A reconstruction is cut into ``K`` classes by Otsu's thresholds; ``labels_by_value[k]`` is the label of
    the ``k``-th class in increasing value (``None``: label ``k``; e.g. ``(1, 0, 2)`` when label 1 is the
    lowest value, 0 the middle and 2 the highest). Outside the problem's support (if it has one) every pixel
    is label 0 and the thresholds see only the pixels inside. ``score`` names the task score (``SCORES``).
    ``background_value``: a value known to belong to label 0 (e.g. 0 in a difference image); the thresholds are
    then Otsu's among those that keep it in label 0's class (``anchored_otsu_thresholds``).
    """

    labels_by_value: tuple[int, ...] | None = None
    score: str = "mcc"
    background_value: float | None = None

    @property
    def background_class(self) -> int:
        """The position of label 0 among the classes in increasing value."""
        return 0 if self.labels_by_value is None else self.labels_by_value.index(0)

    def __post_init__(self) -> None:
        choice(self.score, SCORES, "segmentation task: score")
        if self.labels_by_value is not None:
            labels = tuple(int(v) for v in self.labels_by_value)
            if sorted(labels) != list(range(len(labels))) or len(labels) < 2:
                raise ConfigError(f"segmentation task: labels_by_value must order the labels 0..K-1 (K >= 2), "
                                  f"got {self.labels_by_value!r}")
            object.__setattr__(self, "labels_by_value", labels)
