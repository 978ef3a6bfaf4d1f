"""Helpers shared by reconstruction methods: trace quality and seeded global random state.

``Method``, the interface, lives in ``invprior.core.interfaces``; it is re-exported here for plugins.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from invprior.core.interfaces import Method
from invprior.core.problem import InverseProblem
from invprior.metrics import psnr

__all__ = ["Method", "quality", "seeded_global_rng"]



def quality(x: Tensor, problem: InverseProblem) -> dict[str, float]:
    """Mean residual norm, and mean PSNR when the ground truth is known, for trace logging."""
    values = {"residual": float(problem.residual_norm(x).mean())}
    if problem.x_true is not None:
        values["psnr"] = float(psnr(x, problem.x_true).mean())
    return values


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNGs (the CPU's, and ``device``'s when it is a GPU) for code that draws from
    them (initialisation, dropout), and restore their previous state on exit: the caller's state is
    untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
