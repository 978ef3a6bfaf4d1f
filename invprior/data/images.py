"""Real images bundled with optional packages: a CT slice (pydicom) and the cameraman (scikit-image).

Both come back in the package's array convention, ``image[i, j] = f(x_i, y_j)`` on [-1, 1]^2 with
``x`` the first axis and ``y`` the second, pointing up. The stored picture (row 0 at the top) is
rotated a quarter turn clockwise to get there (``invprior.data.orientation``), so
``numpy.rot90(image)`` or ``imshow(image.T, origin="lower")`` shows it as it is usually viewed.
Fixed images ignore ``seed``; ``n > 1`` gives ``n`` identical copies.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from invprior._optional import require
from invprior.data.orientation import picture_to_image
from invprior.data.resample import check_request, resize
from invprior.errors import ConfigError, DataFileError


def _to_dataset(picture: np.ndarray, size: int, n: int, dtype: torch.dtype) -> Tensor:
    """Turn a picture in [0, 1] (row 0 at the top) into an ``(n, 1, size, size)`` batch indexed ``[x, y]``."""
    image = picture_to_image(torch.from_numpy(np.ascontiguousarray(picture, dtype=np.float64)))
    image = resize(image[None, None], size)
    return image.to(dtype).expand(n, 1, size, size).clone()


def ct_slice(
    size: int = 128,
    n: int = 1,
    seed: int = 0,
    window: tuple[float, float] = (-1000.0, 1000.0),
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """The 128 x 128 CT slice ``CT_small.dcm`` from pydicom's test files, shape ``(n, 1, size, size)``.

    Stored values are converted to Hounsfield units, ``HU = RescaleSlope * p + RescaleIntercept``,
    then mapped to ``clip((HU - lo) / (hi - lo), 0, 1)`` for ``window = (lo, hi)``; the default
    window (-1000, 1000) HU maps air to 0 and water to 0.5 and clips only the densest bone
    (the slice spans about -900 to 1170 HU). The slice shows a vertebra with the patient's back at
    ``y = -1``. ``size != 128`` resamples with ``invprior.data.resample.resize``.
    Needs ``pydicom`` (extra ``data``).
    """
    check_request(size, n, dtype, "ct_slice")
    try:
        lo, hi = (float(w) for w in window)
    except (TypeError, ValueError):
        raise ConfigError(f"ct_slice: 'window' must be a (low, high) pair of HU values, got {window!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise ConfigError(f"ct_slice: 'window' needs finite low < high, got {window!r}")
    pydicom = require("pydicom", "data", "the 'ct_slice' dataset")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    if path is None:
        raise DataFileError("ct_slice: pydicom's test file 'CT_small.dcm' was not found in this installation")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return _to_dataset(np.clip((hu - lo) / (hi - lo), 0.0, 1.0), size, n, dtype)


def camera(size: int = 128, n: int = 1, seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """The 512 x 512 cameraman ``skimage.data.camera()`` divided by 255, shape ``(n, 1, size, size)``.

    ``size != 512`` resamples with ``invprior.data.resample.resize``. Needs ``scikit-image``
    (extra ``data``).
    """
    check_request(size, n, dtype, "camera")
    skdata = require("skimage.data", "data", "the 'camera' dataset")
    return _to_dataset(skdata.camera() / 255.0, size, n, dtype)
