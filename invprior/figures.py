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
    require("matplotlib", "plot", "Writing figures")
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    images = [(caption, img[0, 0].detach().cpu().float().numpy()) for caption, img in panels]
    low, high = float(images[0][1].min()), float(images[0][1].max())
    count = len(images) + (error_panel is not None)
    fig, axes = plt.subplots(1, count, figsize=(3.2 * count, 3.6), squeeze=False)
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
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
