"""Inpainting: observe a subset of pixels, ``A x = x[mask]``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from invprior.core.operator import ForwardOperator
from invprior.errors import ConfigError
from invprior.operators._image import image_shape
from invprior.validation import fraction


def random_mask(shape: tuple[int, int], missing_fraction: float, seed: int) -> Tensor:
    """Boolean ``(H, W)`` mask (True = observed) with ``round(missing_fraction * H * W)`` pixels missing."""
    n = shape[0] * shape[1]
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    missing = torch.randperm(n, generator=gen)[: round(missing_fraction * n)]
    mask = torch.ones(n, dtype=torch.bool)
    mask[missing] = False
    return mask.view(shape)


def box_mask(shape: tuple[int, int], box: Sequence[int]) -> Tensor:
    """Boolean ``(H, W)`` mask with the rectangle ``(top, left, height, width)`` missing."""
    if len(box) != 4 or any(int(b) != b or b < 0 for b in box):
        raise ConfigError(f"box must be (top, left, height, width) of non-negative ints, got {box!r}")
    top, left, height, width = (int(b) for b in box)
    if height == 0 or width == 0 or top + height > shape[0] or left + width > shape[1]:
        raise ConfigError(f"box {tuple(box)} is empty or does not fit in an image of size {shape}")
    mask = torch.ones(shape, dtype=torch.bool)
    mask[top: top + height, left: left + width] = False
    return mask


class Inpainting(ForwardOperator):
    """``A x = x[:, :, mask]``: the observed pixels of every channel, range ``(C, m)``.

    The mask (True = observed) is shared by all channels and images. Give exactly one of
    ``mask`` (user-supplied ``(H, W)`` booleans), ``box`` (``(top, left, height, width)``
    missing) or ``missing_fraction`` (random pixels missing, seeded; the default, 0.5).
    ``A A^T = I``, so the zero-filled image ``A^T y`` is the pseudo-inverse.
    """

    is_linear = True

    def __init__(self, size: int | tuple[int, int] = 64, channels: int = 1,
                 missing_fraction: float | None = None, box: Sequence[int] | None = None,
                 mask: Tensor | Sequence | None = None, seed: int = 0) -> None:
        shape = image_shape(size, channels)
        hw = shape[1:]
        chosen = [k for k, v in (("missing_fraction", missing_fraction), ("box", box), ("mask", mask)) if v is not None]
        if len(chosen) > 1:
            raise ConfigError(f"{type(self).__name__}: "
                              f"give only one of missing_fraction, box, mask (got {', '.join(chosen)})")
        if mask is not None:
            mask = torch.as_tensor(mask)
            if tuple(mask.shape) != hw:
                raise ConfigError(f"{type(self).__name__}: mask has shape {tuple(mask.shape)}, expected {hw}")
            if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
                raise ConfigError(f"{type(self).__name__}: mask must be boolean or contain only 0 and 1")
            mask = mask.to(torch.bool).cpu()
        elif box is not None:
            mask = box_mask(hw, box)
        else:
            missing = 0.5 if missing_fraction is None else missing_fraction
            mask = random_mask(hw, fraction(missing, "missing_fraction", allow_zero=True), seed)
        if not mask.any():
            raise ConfigError(f"{type(self).__name__}: the mask observes no pixel")
        self.mask = mask
        self.index = mask.flatten().nonzero().squeeze(1)
        super().__init__(shape, (channels, int(self.index.numel())))

    def layout(self) -> dict[str, Tensor]:
        """``observed``: the ``(H, W)`` mask; ``y[b, c]`` lists the observed pixels of ``x[b, c]`` in row-major
        order."""
        return {"observed": self.mask}

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2)[:, :, self._cast("index", self.index, x)]

    def _adjoint(self, y: Tensor) -> Tensor:
        c, h, w = self.domain_shape
        out = y.new_zeros(y.shape[0], c, h * w)
        out[:, :, self._cast("index", self.index, y)] = y
        return out.view(y.shape[0], c, h, w)

    def _pseudo_inverse(self, y: Tensor) -> Tensor:
        return self._adjoint(y)
