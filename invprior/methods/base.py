"""The method interface: ``reconstruct(problem) -> Reconstruction``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.metrics import psnr


class Method(ABC):
    """A reconstruction method; registered under ``invprior.methods`` so configs can name it."""

    name: str = "method"

    @abstractmethod
    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        """Reconstruct ``problem.x`` from ``problem.y``; ``progress`` shows a progress bar on long loops."""

    def checkpoint_files(self, batch: int) -> list[Path]:
        """The state files a run on ``batch`` images writes to resume from (none for a method without them)."""
        return []


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
