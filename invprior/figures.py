"""Figures written by the command-line tools."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from invprior._optional import require
from invprior.analysis.calibration import calibration_curve, calibration_summary
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ShapeError
from invprior.io import atomic_write


def comparison_figure(path: str | Path, panels: list[tuple[str, Tensor]], error_panel: tuple[str, Tensor] | None = None,
                      title: str = "", curve: Reconstruction | None = None, scale_from: int = 0) -> Path:
    """Images in rows of ``COLUMNS`` on a shared grey scale (first channel of panel ``scale_from``), an error map,
    and optionally the PSNR-vs-iteration curve of an iterative reconstruction with its kept
    iterate and its stop marked.

    ``panels`` are ``(caption, image)`` pairs of ``(B, C, H, W)`` tensors; ``error_panel`` is drawn with
    its own colour bar.
    """
    fig = new_figure()
    images = [(caption, img[0, 0].detach().cpu().float().numpy()) for caption, img in panels]
    low, high = float(images[scale_from][1].min()), float(images[scale_from][1].max())
    show_curve = curve is not None and "psnr" in curve.trace
    count = len(images) + (error_panel is not None) + show_curve
    axes = _grid(fig, count)
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
        assert curve is not None  # show_curve needs a curve
        _convergence(axes[-1], curve)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


#: Quantile of the std map at which the segmentation figure's colour scale ends.
STD_CLIP = 0.995


def segmentation_figure(path: str | Path, image: Tensor, labels, reference, caption: str, title: str = "",
                        std: Tensor | None = None) -> Path:
    """The reconstruction, its predictive std (when given; colour scale up to its ``STD_CLIP`` quantile), its
    segmentation, the reference and where they differ (red: labelled above the reference's class, blue: below),
    all in the figures' orientation.

    ``image`` is ``(1, 1, H, W)``; ``labels`` and ``reference`` are label maps on the reference's grid.
    """
    import numpy as np
    from matplotlib.colors import ListedColormap

    fig = new_figure()
    panels = 4 + (std is not None)
    fig.set_size_inches(3.2 * panels, 3.6)
    grid = fig.subplots(1, panels, squeeze=False)[0]
    for ax in grid:
        ax.axis("off")
    axes = iter(grid)

    def show(ax: Any, array: Any, **kw: Any) -> Any:
        return ax.imshow(np.asarray(array).T, origin="lower", **kw)

    ax = next(axes)
    shown = show(ax, image[0, 0].detach().cpu().float().numpy(), cmap="gray")
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title("reconstruction", fontsize=9)
    if std is not None:
        ax = next(axes)
        spread = std[0, 0].detach().cpu().float().numpy()
        top = float(np.quantile(spread, STD_CLIP))  # a few pixels far above the rest would wash the map out
        shown = show(ax, spread, cmap="magma", vmin=0, vmax=top if top > 0 else None)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, extend="max" if top < spread.max() else "neither")
        ax.set_title("predictive std", fontsize=9)
    classes = max(int(np.max(reference)), int(np.max(labels)), 1)
    for name, array in ((caption, labels), ("reference", reference)):
        ax = next(axes)
        show(ax, array, cmap="gray", vmin=0, vmax=classes, interpolation="nearest")
        ax.set_title(name, fontsize=9)
    difference = np.sign(np.asarray(labels) - np.asarray(reference))
    ax = next(axes)
    show(ax, difference, cmap=ListedColormap(["tab:blue", "white", "tab:red"]), vmin=-1.5, vmax=1.5,
         interpolation="nearest")
    wrong = float((difference != 0).mean())
    ax.set_title(f"differences ({100 * wrong:.1f} % of pixels)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def uncertainty_figure(path: str | Path, x_true: Tensor, mean: Tensor, std: Tensor, title: str = "",
                       curve_bins: int = 20, *, label: str = "", extra: list[tuple[str, Tensor, Tensor]] | None = None
                       ) -> Path:
    """Four panels in a 2 x 2 grid: the reconstruction ``mean`` (grey scale of ``x_true``), the predictive
    ``std`` map, the ``|x_true - mean|`` map, and a calibration plot.

    The std and error maps share one colour scale, from 0 to the larger of the largest std and
    the 99.5th percentile of the error, so equal colours mean equal values (errors above it are
    clipped). The calibration plot shows the RMS error against the mean predicted std in
    ``curve_bins`` quantile bins of the std (``calibration_curve``)
    on log-log axes, with the diagonal ``y = x`` of perfect calibration, and notes each method's
    coverage of the +-1.96 std interval (0.95 when calibrated) and its ``p = 1`` log-likelihood per
    pixel. ``label`` names the method in the legend; ``extra`` lists further ``(label, mean, std)``
    predictives (e.g. MC dropout) whose curves are overlaid on the same calibration panel.

    Images are ``(1, 1, H, W)`` or ``(H, W)`` tensors indexed ``[x, y]`` and shown as
    ``imshow(image.T, origin="lower")``.
    """
    truth = _plane(x_true, "x_true")
    methods = [(label or "predictive", _plane(mean, "mean", truth.shape), _plane(std, "std", truth.shape))]
    for item in extra or []:
        try:
            name, m, s = item
        except (TypeError, ValueError):
            raise ShapeError(f"uncertainty_figure: 'extra' entries must be (label, mean, std) triples, "
                             f"got {item!r}") from None
        methods.append((str(name), _plane(m, f"extra mean {name!r}", truth.shape),
                        _plane(s, f"extra std {name!r}", truth.shape)))
    _, recon, sigma = methods[0]
    error = (truth - recon).abs()
    scale = max(float(sigma.max()), float(torch.quantile(error.flatten(), 0.995)))
    scale = scale if scale > 0 else 1.0

    fig = new_figure()
    axes = _grid(fig, 4, columns=2)
    low, high = float(truth.min()), float(truth.max())
    axes[0].imshow(recon.numpy().T, cmap="gray", vmin=low, vmax=high, origin="lower")
    axes[0].set_title(f"reconstruction ({methods[0][0]})" if label else "reconstruction (mean)", fontsize=9)
    for ax, array, caption in ((axes[1], sigma, "predictive std"), (axes[2], error, "|error|")):
        shown = ax.imshow(array.numpy().T, cmap="magma", vmin=0.0, vmax=scale, origin="lower")
        ax.set_title(caption, fontsize=9)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04).ax.tick_params(labelsize=7)
    for ax in axes[:3]:
        ax.axis("off")
    _calibration_panel(axes[3], truth, methods, curve_bins)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def convergence_figure(path: str | Path, curves: list[tuple[str, Sequence[float], Sequence[float]]],
                       spectra: list[tuple[str, Tensor]] | None = None, title: str = "",
                       marks: dict[str, int | None] | None = None, reference: float | None = None) -> Path:
    """PSNR against iteration for several runs (``(label, iterations, psnr)``), each run's rise time from
    ``marks`` as a dot and an optional ``reference`` PSNR line; with ``spectra`` (``(label, singular
    values)``) a second panel of normalised singular values ``s_i / s_1`` on a log scale.
    """
    fig = new_figure()
    count = 1 + (spectra is not None)
    fig.set_size_inches(5.0 * count, 3.8)
    axes = fig.subplots(1, count, squeeze=False)[0]
    ax = axes[0]
    for label, iterations, values in curves:
        line, = ax.plot(iterations, values, lw=1.2, label=label)
        mark = (marks or {}).get(label)
        if mark is not None:
            ax.plot([mark], [values[list(iterations).index(mark)]], "o", color=line.get_color(), ms=5)
    if reference is not None:
        ax.axhline(reference, color="grey", ls=":", lw=1, label=f"target {reference:.2f} dB")
    ax.set_xlabel("iteration")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title("PSNR vs iteration (dots: rise time)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    if spectra is not None:
        ax = axes[1]
        for label, spectrum in spectra:
            singular = spectrum.detach().double().cpu()
            ax.semilogy(range(1, singular.numel() + 1), (singular / singular[0]).numpy(), lw=1.2, label=label)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("index i")
        ax.set_ylabel("s_i / s_1")
        ax.set_title("singular values of dG/dtheta at the start of the fit", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


def _plane(image: Tensor, name: str, shape: torch.Size | None = None) -> Tensor:
    """A ``(1, 1, H, W)`` or ``(H, W)`` tensor as a float64 ``(H, W)`` CPU tensor."""
    if not isinstance(image, Tensor) or image.dim() not in (2, 4) or (image.dim() == 4 and image.shape[:2] != (1, 1)):
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ShapeError(f"uncertainty_figure: {name} must be a (1, 1, H, W) or (H, W) tensor, got {got}")
    plane = image.detach().cpu().double().reshape(image.shape[-2:])
    if shape is not None and plane.shape != shape:
        raise ShapeError(f"uncertainty_figure: {name} is {tuple(plane.shape)} but x_true is {tuple(shape)}")
    return plane


def _calibration_panel(ax, truth: Tensor, methods: list[tuple[str, Tensor, Tensor]], bins: int) -> None:
    lines, extent = [], []
    for (name, m, s), colour in zip(methods, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
                                              "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:gray")):
        predicted, observed = calibration_curve(truth, m, s, bins=bins)
        points = [(a, b) for a, b in zip(predicted, observed)
                  if a > 0 and b > 0 and math.isfinite(a) and math.isfinite(b)]
        if points:
            ax.plot(*zip(*points), marker="o", ms=3, lw=1.2, color=colour, label=name)
            extent += [v for pair in points for v in pair]
        numbers = calibration_summary(truth, m, s, patches=(1,))
        lines.append(f"{name}: cov95 = {numbers['coverage_95']:.3f}, LL(p=1) = {numbers['ll_p1']:.3g}")
    if extent:
        lo, hi = min(extent) / 1.5, max(extent) * 1.5
        ax.plot([lo, hi], [lo, hi], ls="--", lw=1, color="k", label="y = x")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xscale("log")
        ax.set_yscale("log")
        from matplotlib.ticker import NullFormatter

        # four labelled ticks spread geometrically over the range (default minor labels overlap or vanish)
        ticks = [lo * (hi / lo) ** (k / 3) for k in range(4)]
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(NullFormatter())
            axis.set_ticks(ticks, labels=[f"{t:.2g}" for t in ticks])
    ax.set_xlabel("predicted std (bin mean)")
    ax.set_ylabel("RMS error")
    ax.set_title("calibration", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left")
    ax.text(0.98, 0.02, "\n".join(lines), transform=ax.transAxes, ha="right", va="bottom", fontsize=6.5,
            bbox=dict(boxstyle="round", facecolor="white", alpha=0.8, lw=0.5))


def _convergence(ax, reconstruction: Reconstruction) -> None:
    trace = reconstruction.trace
    averaged = "psnr_average" in trace
    ax.plot(trace["iteration"], trace["psnr"], lw=0.8 if averaged else 1.2, color="tab:blue",
            alpha=0.5 if averaged else 1.0, label="iterate" if averaged else None)
    if averaged:
        ax.plot(trace["iteration"], trace["psnr_average"], lw=1.2, color="tab:orange", label="averaged weights")
    kept = reconstruction.extras.get("best_iteration", [None])[0]
    if kept is not None and kept > 0:
        ax.axvline(kept, color="tab:green", ls="--", lw=1, label=f"kept: {kept}")
    if reconstruction.iterations != kept:
        ax.axvline(reconstruction.iterations, color="tab:red", ls=":", lw=1,
                   label=f"stopped: {reconstruction.iterations}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"{reconstruction.method}: PSNR vs iteration", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)


#: Panels per row of a figure grid, and the size of one panel in inches: readable at page width.
COLUMNS, PANEL_INCHES = 3, 4.0


def _grid(fig, count: int, columns: int = COLUMNS) -> list:
    """``count`` axes in rows of at most ``columns`` (the figure sized to match); unused cells are hidden."""
    columns = min(count, columns)
    rows = -(-count // columns)
    fig.set_size_inches(PANEL_INCHES * columns, PANEL_INCHES * rows + 0.4)
    axes = list(fig.subplots(rows, columns, squeeze=False).flat)
    for ax in axes[count:]:
        ax.set_visible(False)
    return axes[:count]


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
