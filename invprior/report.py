"""Write the results of one problem and several reconstructions: metrics, arrays, figure."""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import Tensor

from invprior.analysis.calibration import posterior_calibration
from invprior.analysis.segmentation import segmentation_calibration, segmentation_scores
from invprior.core.interfaces import PosteriorApproximation
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.core.task import SCORE_LABELS
from invprior.data.orientation import image_to_picture
from invprior.errors import ConfigError
from invprior.experiment import scores, support
from invprior.figures import comparison_figure, segmentation_figure, uncertainty_figure
from invprior.io import atomic_write, write_json, write_npz


def write_report(out: str | Path, problem: InverseProblem, results: dict[str, Reconstruction],
                 config: dict[str, Any], title: str = "", posterior: PosteriorApproximation | None = None,
                 posterior_name: str = "") -> dict[str, Any]:
    """Write ``metrics.json``, ``reconstruction.npz``, ``trace.csv`` (the main result's per-iteration trace, when
    it has one) and ``figure.png`` to ``out`` (atomically).

    ``results`` maps a role (e.g. ``"baseline"``, ``"method"``) to a reconstruction; the last one is
    the main result: its image is ``x_hat`` and its error map and convergence curve are drawn.
    With a fitted ``posterior`` its mean and std maps go into the arrays (``posterior_mean``, ``std``), its calibration
    into ``metrics["posterior"]`` and the uncertainty panels into ``uncertainty.png``.
    With a reference segmentation the main result's segmentation is written as ``segmentation.png``
    (a picture on the reference's grid, row 0 at the top, like the reference file) and drawn beside the
    reference and their differences in ``segmentation_figure.png``. Arrays in ``reconstruction.npz``
    are in the ``[x, y]`` layout (``invprior.data.orientation``); ``layout_*`` arrays say where the entries of
    ``y`` sit (``ForwardOperator.layout``: inpainting's ``layout_observed`` mask, CT's ``layout_angles``).
    """
    out = Path(out)
    main = list(results.values())[-1]
    metrics: dict[str, Any] = {
        "config": config, "problem": problem.metadata,
        "noise_norm": problem.noise_norm.tolist() if isinstance(problem.noise_norm, Tensor) else None,
        **{role: scores(r, problem) for role, r in results.items()}}
    if posterior is not None:
        metrics["posterior"] = {"name": posterior_name or type(posterior).__name__,
                                "wall_time_s": getattr(posterior, "wall_time", None),
                                **mean_choice(posterior), **kept_variance(posterior),
                                **(posterior_calibration(posterior, problem.x_true) if problem.x_true is not None
                                   else {"mean_std": float(posterior.std.double().mean())}),
                                **({"segmentation": asdict(segmentation_calibration(
                                    posterior.mean[:1], posterior.std[:1], problem.reference[:1], problem.task,
                                    support(problem)))}
                                   if problem.reference is not None else {})}
    write_json(out / "metrics.json", metrics)
    arrays = {"x_hat": main.image, "y": problem.y, **{role: r.image for role, r in results.items()}}
    if posterior is not None:
        arrays["posterior_mean"], arrays["std"] = posterior.mean, posterior.std
    if problem.x_true is not None:
        arrays["x_true"] = problem.x_true
    arrays.update({f"layout_{name}": value for name, value in problem.operator.layout().items()})
    write_npz(out / "reconstruction.npz", **{k: v.detach().cpu().numpy() for k, v in arrays.items()})
    if main.trace:
        write_trace(out / "trace.csv", main.trace)

    def caption(role: str) -> str:
        m = metrics[role]
        quality = f"\nPSNR {m['psnr'][0]:.2f} dB" if "psnr" in m else ""
        quality += "".join(f"\n{label} {m[metric][0]:.3f}" for metric, label in SCORE_LABELS.items() if metric in m)
        return m["method"] + quality + (f", SSIM {m['ssim'][0]:.3f}" if "ssim" in m else "")

    panels = [("ground truth", problem.x_true)] if problem.x_true is not None else []
    panels += [(caption(role), r.image) for role, r in results.items()]
    error = (f"|error| of {main.method}", (main.image - problem.x_true).abs()) if problem.x_true is not None else None
    # grey scale: the ground truth's, else the main result's
    comparison_figure(out / "figure.png", panels, error, title=title, curve=main if main.trace else None,
                      scale_from=0 if problem.x_true is not None else -1)
    if posterior is not None and problem.x_true is not None:
        uncertainty_figure(out / "uncertainty.png", problem.x_true, posterior.mean, posterior.std,
                           title=title, label=metrics["posterior"]["name"])
    if problem.reference is not None:
        write_segmentation(out, main, problem, title, posterior)
    return metrics


def write_trace(path: Path, trace: dict[str, list[float]]) -> None:
    """The trace as CSV, one column per quantity and one row per logged iteration (a quantity logged less
    often leaves its later cells empty)."""
    rows = max(len(values) for values in trace.values())
    lines = [",".join(trace)] + [",".join(repr(values[i]) if i < len(values) else "" for values in trace.values())
                                 for i in range(rows)]
    atomic_write(path, lambda f: f.write(("\n".join(lines) + "\n").encode()))


def write_segmentation(out: Path, main: Reconstruction, problem: InverseProblem, title: str,
                       posterior: PosteriorApproximation | None) -> None:
    """``segmentation.png`` (the main result's labels as a picture) and ``segmentation_figure.png``."""
    from PIL import Image

    reference = problem.reference
    if reference is None:
        raise ConfigError("write_segmentation: the problem has no reference segmentation")
    score = segmentation_scores(main.image[:1], reference[:1], problem.task, support(problem))[0]
    picture = image_to_picture(score.labels)
    binary = int(reference.max()) <= 1
    png = Image.fromarray(picture.astype(bool) if binary else picture.astype("uint8"))

    def save(handle) -> None:
        png.save(handle, format="PNG")

    atomic_write(out / "segmentation.png", save)
    caption = f"{main.method}: {SCORE_LABELS[score.metric]} {score.value:.3f}"
    segmentation_figure(out / "segmentation_figure.png", main.image[:1], score.labels,
                        reference[0].cpu().numpy(), caption, title=title,
                        std=None if posterior is None else posterior.std)


def kept_variance(posterior: PosteriorApproximation) -> dict[str, Any]:
    """``captured_variance``: the fraction of the prior's variance lin-DIP's subspace path keeps; empty otherwise."""
    captured = getattr(posterior, "captured_variance", math.nan)
    return {"captured_variance": captured} if math.isfinite(captured) else {}


def mean_choice(posterior: PosteriorApproximation) -> dict[str, Any]:
    """Which predictive mean a posterior chose and the discrepancy it chose by (``mean_used``, ``discrepancy``:
    lin-DIP's ``predictive_mean="auto"``); empty for posteriors without the choice."""
    if not (hasattr(posterior, "mean_used") and hasattr(posterior, "discrepancy")):
        return {}
    return {"mean_used": posterior.mean_used, "discrepancy": posterior.discrepancy}


def problem_notes(problem: InverseProblem) -> list[str]:
    """What the user should know about a problem that was read or set up for them: the noise level when it
    was estimated, a fitted support."""
    notes = []
    if problem.noise_estimated and isinstance(problem.noise_std, Tensor):
        values = ", ".join(f"{float(s):.4g}" for s in problem.noise_std)
        notes.append(f"noise level estimated from the data: std {values} per measurement "
                     "(give problem.noise = { std = ... } to set it)")
    calibration = problem.metadata.get("calibration")
    if calibration is not None:
        z = calibration["contact_impedance"]
        notes.append(f"model calibrated on the reference measurement: background conductivity "
                     f"{calibration['background']:.4g}, contact impedances {min(z):.3g}-{max(z):.3g}, misfit "
                     f"{100 * calibration['relative_misfit']:.1f} % over {calibration['channels']} channels")
    channels = problem.metadata.get("channels")
    if channels is not None and channels["kept"] < channels["total"]:
        silent = ", ".join(map(str, channels["electrodes_without_data"])) or "none"
        notes.append(f"measured channels: {channels['kept']} of {channels['total']} (NaN or unavailable ones left "
                     f"out); electrodes without data: {silent}")
    disc = problem.metadata.get("constraints", {}).get("disc")
    if disc is not None:
        notes.append(f"support: disc fitted to the sinogram, centre ({disc['centre'][0]:.3f}, "
                     f"{disc['centre'][1]:.3f}), radius {disc['radius']:.3f} (image units)")
    return notes


def summary_lines(metrics: dict[str, Any], roles: list[str]) -> list[str]:
    """One line per reconstruction: method, PSNR, SSIM, iterations and wall time."""
    lines = []
    for role in roles:
        m = metrics[role]
        quality = f"PSNR {m['psnr_mean']:.2f} dB  " if "psnr_mean" in m else ""
        quality += f"SSIM {m['ssim_mean']:.3f}  " if "ssim_mean" in m else ""
        quality += "".join(f"{label} {m[metric + '_mean']:.3f}  " for metric, label in SCORE_LABELS.items()
                           if metric + "_mean" in m)
        lines.append(f"{role:9s} {m['method']:15s} {quality}time {m['wall_time_s']:.2f} s")
    if "posterior" in metrics:
        p = metrics["posterior"]
        parts = [f"{key} {p[key]:.3f}" for key in ("ll_p1", "ll_p2", "ll_p10", "coverage_95") if key in p]
        if "segmentation" in p:
            seg = p["segmentation"]
            parts.append(f"segmentation errors expected {100 * seg['expected_error_rate']:.2f} % / observed "
                         f"{100 * seg['observed_error_rate']:.2f} % (AUROC {seg['auroc']:.3f})")
        calibration = "  ".join(parts)
        timing = f"  time {p['wall_time_s']:.2f} s" if p.get("wall_time_s") is not None else ""
        mean = f"  mean {p['mean_used']} (discrepancy {p['discrepancy']:.3f})" if "mean_used" in p else ""
        lines.append(f"posterior {p['name']:15s} {calibration}  mean std {p['mean_std']:.3g}{mean}{timing}")
    return lines
