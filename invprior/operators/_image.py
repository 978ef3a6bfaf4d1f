"""Validation shared by operators that act on ``(B, C, H, W)`` images."""

from __future__ import annotations

from invprior.errors import ConfigError


def image_shape(size: int | tuple[int, int], channels: int) -> tuple[int, int, int]:
    """``(channels, H, W)`` from a square ``size`` or an ``(H, W)`` pair, validated."""
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and s > 0 for s in hw):
        raise ConfigError(f"size must be a positive int or a pair (H, W) of positive ints, got {size!r}")
    if not isinstance(channels, int) or channels < 1:
        raise ConfigError(f"channels must be a positive int, got {channels!r}")
    return (channels, hw[0], hw[1])
