"""Reference segmentations for task scores: an image file (PNG, TIFF, ...) or an array in a data file."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from invprior._optional import require
from invprior.errors import DataFileError
from invprior.readers.files import SUFFIXES, ArrayFile

__all__ = ["read_reference", "MAX_CLASSES"]

#: A reference with more distinct values than this is an image, not a segmentation.
MAX_CLASSES = 16
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".bmp", ".gif")


def read_reference(path: str | Path, key: str | None = None) -> np.ndarray:
    """A segmentation ``(H, W)`` of integer labels ``0 .. K-1``, the distinct values of the file in
    increasing order (a binary PNG of 0/255 or False/True gives 0/1), in the file's own layout.

    ``path`` is an image file (read with scikit-image) or an array file (``key`` names the array).
    Files hold pictures (row 0 at the top, as ``plt.imshow`` shows them); readers turn them into the
    image layout with ``invprior.data.orientation.picture_to_image``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        if key is not None:
            raise DataFileError(f"{path}: an image file has no keys; got key {key!r}")
        if not path.is_file():
            raise DataFileError(f"{path}: no such file")
        io = require("skimage.io", "data", "reading reference images")
        try:
            values = np.asarray(io.imread(path))
        except Exception as exc:
            raise DataFileError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from None
        if values.ndim == 3:  # colour: accept only grey stored as RGB(A)
            if not all(np.array_equal(values[..., 0], values[..., c]) for c in range(1, min(values.shape[-1], 3))):
                raise DataFileError(f"{path}: a colour image; a reference segmentation must be grey levels")
            values = values[..., 0]
    elif suffix in SUFFIXES:
        with ArrayFile(path) as handle:
            values = handle.array(key)
    else:
        raise DataFileError(f"{path}: unknown reference type {suffix!r}; expected an image "
                            f"({', '.join(IMAGE_SUFFIXES)}) or a data file ({', '.join(SUFFIXES)})")
    if values.ndim != 2:
        raise DataFileError(f"{path}: a reference segmentation is a 2D array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise DataFileError(f"{path}: the reference holds NaN or infinite values")
    levels, labels = np.unique(values, return_inverse=True)
    if len(levels) > MAX_CLASSES:
        raise DataFileError(f"{path}: {len(levels)} distinct values; a segmentation has at most {MAX_CLASSES} "
                            "classes (is this an image rather than a segmentation?)")
    return labels.reshape(values.shape).astype(np.int64)
