"""Figures written by the command-line tools."""

from __future__ import annotations

import io
from pathlib import Path

from torch import Tensor

from invprior._optional import require
from invprior.core.reconstruction import Reconstruction
from invprior.io import atomic_write


def comparison_figure(path: str | Path, panels: list[tuple[str, Tensor]], error_panel: tuple[str, Tensor] | None = None,
                      title: str = "", curve: Reconstruction | None = None) -> Path:
    """Images side by side on a shared grey scale (first channel of the first image), an error map,
    and optionally the PSNR-vs-iteration curve of an iterative reconstruction with its kept
    iterate and its stop marked.

    ``panels`` are ``(caption, image)`` pairs of ``(B, C, H, W)`` tensors; ``error_panel`` is drawn with
    its own colour bar.
    """
    fig = new_figure()
    images = [(caption, img[0, 0].detach().cpu().float().numpy()) for caption, img in panels]
    low, high = float(images[0][1].min()), float(images[0][1].max())
    show_curve = curve is not None and "psnr" in curve.trace
    count = len(images) + (error_panel is not None) + show_curve
    fig.set_size_inches(3.2 * count, 3.6)
    axes = fig.subplots(1, count, squeeze=False)[0]
    for ax, (caption, array) in zip(axes, images):
        ax.imshow(array.T, cmap="gray", vmin=low, vmax=high, origin="lower")
        ax.set_title(caption, fontsize=9)
        ax.axis("off")
    if error_panel is not None:
        ax = axes[len(images)]
        shown = ax.imshow(error_panel[1][0, 0].detach().cpu().float().numpy().T, cmap="magma", origin="lower")
        ax.set_title(error_panel[0], fontsize=9)
        ax.axis("off")
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    if show_curve:
        _convergence(axes[-1], curve)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _convergence(ax, reconstruction: Reconstruction) -> None:
    trace = reconstruction.trace
    ax.plot(trace["iteration"], trace["psnr"], lw=1.2, color="tab:blue")
    kept = reconstruction.extras.get("best_iteration", [None])[0]
    if kept is not None and kept > 0:
        ax.axvline(kept, color="tab:green", ls="--", lw=1, label=f"kept: {kept}")
    ax.axvline(reconstruction.iterations, color="tab:red", ls=":", lw=1, label=f"stopped: {reconstruction.iterations}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{reconstruction.method}: PSNR vs iteration", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)


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
