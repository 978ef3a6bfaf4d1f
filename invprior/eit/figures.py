"""EIT figures: the mesh with its electrodes, and conductivities drawn on the mesh."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from invprior.eit.operator import EIT
from invprior.errors import ConfigError
from invprior.figures import new_figure, save_figure

__all__ = ["eit_figure"]


def eit_figure(path: str | Path, operator: EIT, images: list[tuple[str, Tensor]], title: str = "") -> Path:
    """The mesh (electrodes in colour) and, per ``(label, image)``, the conductivity ``sigma`` the
    operator gives the image, drawn element by element on one colour scale (the first image's range)."""
    if not images:
        raise ConfigError("eit_figure: give at least one (label, image) pair")
    mesh = operator.mesh
    fig = new_figure()
    fig.set_size_inches(3.3 * (len(images) + 1) + 0.6, 3.4)
    grid = fig.subplots(1, len(images) + 2, squeeze=False,
                        gridspec_kw={"width_ratios": [1.0] * (len(images) + 1) + [0.05]})[0]
    axes, colour_axis = grid[:-1], grid[-1]
    ax = axes[0]
    ax.triplot(mesh.nodes[:, 0], mesh.nodes[:, 1], mesh.elements, lw=0.2, color="0.5")
    for electrode in range(mesh.num_electrodes):
        for a, b in mesh.electrode_edges(electrode):
            ax.plot(*mesh.nodes[[a, b]].T, color="C3", lw=2.5, solid_capstyle="butt")
    quality = mesh.quality()
    ax.set_title(f"mesh: {quality['elements']} elements, min angle {quality['min_angle']:.0f} deg", fontsize=8)
    sigmas = [operator.conductivity(image.detach().cpu().to(torch.float64).reshape(1, *operator.domain_shape))[0]
              .detach().cpu().numpy() for _, image in images]
    low, high = float(np.min(sigmas[0])), float(np.max(sigmas[0]))
    for ax, (label, _), sigma in zip(axes[1:], images, sigmas):
        shown = ax.tripcolor(mesh.nodes[:, 0], mesh.nodes[:, 1], mesh.elements, facecolors=sigma, cmap="viridis",
                             vmin=low, vmax=high)
        ax.set_title(label, fontsize=8)
    fig.colorbar(shown, cax=colour_axis, label="conductivity")
    for ax in axes:
        ax.set_aspect("equal")
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
