"""Figures written by the command-line tools."""

from __future__ import annotations

import io
from pathlib import Path

from torch import Tensor

from invprior._optional import require
from invprior.io import atomic_write


def comparison_figure(path: str | Path, panels: list[tuple[str, Tensor]], error_panel: tuple[str, Tensor] | None = None,
                      title: str = "") -> Path:
    """Images side by side on a shared grey scale (first channel of the first image), plus an error map.

    ``panels`` are ``(caption, image)`` pairs of ``(B, C, H, W)`` tensors; ``error_panel`` is drawn with
    its own colour bar.
    """
    fig = new_figure()
    images = [(caption, img[0, 0].detach().cpu().float().numpy()) for caption, img in panels]
    low, high = float(images[0][1].min()), float(images[0][1].max())
    count = len(images) + (error_panel is not None)
    fig.set_size_inches(3.2 * count, 3.6)
    axes = fig.subplots(1, count, squeeze=False)
    for ax, (caption, array) in zip(axes[0], images):
        ax.imshow(array.T, cmap="gray", vmin=low, vmax=high, origin="lower")
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if error_panel is not None:
        ax = axes[0, -1]
        shown = ax.imshow(error_panel[1][0, 0].detach().cpu().float().numpy().T, cmap="magma", origin="lower")
        ax.set_title(error_panel[0], fontsize=9)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def new_figure():
    """A matplotlib Figure drawn off-screen (the user's pyplot backend is left alone)."""
    require("matplotlib", "plot", "Writing figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure()
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG, atomically."""
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
