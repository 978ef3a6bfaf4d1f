"""The package's array convention and the pictures users know.

Images are indexed ``image[i, j] = f(x_i, y_j)``: ``x`` the first axis, ``y`` the second, pointing
up (ODL's convention, used by the CT operators). A picture (a PNG, a MATLAB or numpy array shown
by ``plt.imshow``) has row 0 at the top. ``image = rot90(picture, k=-1)``: a quarter turn
clockwise; back with ``picture = rot90(image)``, which is what ``imshow(image.T, origin="lower")``
and invprior's figures show.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import Tensor

__all__ = ["picture_to_image", "image_to_picture"]

#: An array or a tensor; the functions below return the type they are given.
ArrayT = TypeVar("ArrayT", np.ndarray, Tensor)


def picture_to_image(picture: ArrayT) -> ArrayT:
    """A picture (row 0 at the top; the last two axes) in the package's ``[x, y]`` layout."""
    if isinstance(picture, Tensor):
        return torch.rot90(picture, k=-1, dims=(-2, -1))
    return np.ascontiguousarray(np.rot90(picture, k=-1, axes=(-2, -1)))


def image_to_picture(image: ArrayT) -> ArrayT:
    """An ``[x, y]`` image (the last two axes) as a picture: row 0 at the top, ``y`` pointing up."""
    if isinstance(image, Tensor):
        return torch.rot90(image, k=1, dims=(-2, -1))
    return np.ascontiguousarray(np.rot90(image, k=1, axes=(-2, -1)))
