"""What ``invprior design`` writes: one checksummed record per strategy (its steps, rewritten after each, and its
final image, so that a stopped comparison resumes where it stopped), ``design.json`` and the figure
``design.png``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invprior.design.loop import DesignStep
from invprior.design.pool import CandidatePool
from invprior.errors import StateFileError
from invprior.figures import new_figure, save_figure
from invprior.io import read_checked_json, write_checked_json, write_json, write_npz

#: The score a figure shows first, when the steps have it.
SCORE_ORDER = ("mcc", "psnr", "ssim")


def main_score(steps: Sequence[DesignStep]) -> str:
    """The score the figure and the summary lead with: the task score (MCC) with a reference, else PSNR."""
    for name in SCORE_ORDER:
        if all(name in step.scores for step in steps):
            return name
    return next(iter(steps[0].scores), "")


def record_path(out: Path, strategy: str) -> Path:
    return out / "strategies" / f"{strategy}.json"


def save_strategy(out: Path, strategy: str, steps: Sequence[DesignStep], fingerprint: str,
                  image: np.ndarray | None = None) -> None:
    """The ``steps`` of ``strategy`` so far (checksummed, with the configuration's ``fingerprint``) and, once it
    is finished, its final ``image`` (written first: a record without its image is unfinished)."""
    path = record_path(out, strategy)
    if image is not None:
        write_npz(path.with_suffix(".npz"), image=image)
    write_checked_json(path, {"strategy": strategy, "fingerprint": fingerprint, "finished": image is not None,
                              "steps": [asdict(step) for step in steps]})


def load_strategy(out: Path, strategy: str,
                  fingerprint: str) -> tuple[tuple[DesignStep, ...], np.ndarray | None] | None:
    """The stored steps of ``strategy`` and, when it finished, its final image, if the record exists, is intact
    and belongs to this configuration; else ``None`` (a damaged record is reported and not used)."""
    path = record_path(out, strategy)
    if not path.exists():
        return None
    try:
        record = read_checked_json(path, "design record", "the strategy is run again")
        image = np.load(path.with_suffix(".npz"))["image"] if record["finished"] else None
    except (StateFileError, OSError, KeyError, ValueError) as exc:
        warnings.warn(str(exc), stacklevel=2)
        return None
    if record.get("fingerprint") != fingerprint:
        return None
    steps = tuple(DesignStep(tuple(s["design"]), dict(s["scores"]), tuple(s["chosen"]), tuple(s["gains"]),
                             float(s["seconds"])) for s in record["steps"])
    return steps, image


def write_summary(out: Path, pool: CandidatePool, results: dict[str, tuple[DesignStep, ...]]) -> Path:
    """``design.json``: per strategy, the score after each acquisition and the final design (indices and
    labels, e.g. angles in degrees for CT)."""
    labels = pool.labels
    assert labels is not None
    summary: dict[str, Any] = {"candidates": pool.size, "strategies": {}}
    for strategy, steps in results.items():
        final = sorted(steps[-1].design)
        summary["strategies"][strategy] = {
            "measurements": [len(s.design) for s in steps],
            "scores": {name: [s.scores.get(name) for s in steps] for name in steps[-1].scores},
            "design": final,
            "labels": [float(labels[k]) for k in final],
            "seconds": sum(s.seconds for s in steps)}
    return write_json(out / "design.json", summary)


def design_figure(path: Path, pool: CandidatePool, results: dict[str, tuple[DesignStep, ...]],
                  images: dict[str, np.ndarray], title: str = "") -> Path:
    """Score against the number of measurements per strategy; the final designs (CT: rays on a half circle, one
    ring per strategy); each strategy's final image."""
    fig = new_figure()
    count = 2 + len(images)
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    fig.set_size_inches(3.8 * columns, 3.6 * rows + 0.4)
    score = main_score(next(iter(results.values())))
    curve = fig.add_subplot(rows, columns, 1)
    for strategy, steps in results.items():
        curve.plot([len(s.design) for s in steps], [s.scores.get(score, math.nan) for s in steps], "o-",
                   label=strategy)
    curve.set_xlabel("measurements")
    curve.set_ylabel(score.upper() + (" (dB)" if score == "psnr" else ""))
    curve.legend(fontsize=8)
    curve.grid(alpha=0.3)
    assert pool.labels is not None
    angles = "angles" in pool.problem.operator.layout()
    designs = fig.add_subplot(rows, columns, 2, projection="polar" if angles else None)
    for ring, (strategy, steps) in enumerate(results.items(), start=1):  # colours as in the curves
        chosen = pool.labels[sorted(steps[-1].design)].numpy()
        if angles:
            designs.plot(np.stack([chosen, chosen]), np.stack([np.full_like(chosen, ring - 0.8),
                                                                np.full_like(chosen, float(ring))]),
                         color=f"C{ring - 1}", lw=1.2)
        else:
            designs.plot(chosen, np.full_like(chosen, float(ring)), "|", color=f"C{ring - 1}", ms=10)
    if angles:  # the scanned arc only, one ring per strategy from the centre out
        low, high = np.degrees(float(pool.labels.min())), np.degrees(float(pool.labels.max()))
        designs.set_thetamin(math.floor(low / 5) * 5)
        designs.set_thetamax(math.ceil(high / 5) * 5)
        designs.set_yticks(range(1, len(results) + 1), [""] * len(results))
        designs.set_title("final designs (rings: strategies in the legend's order)", fontsize=9)
    else:
        designs.set_yticks(range(1, len(results) + 1), list(results))
        designs.set_xlabel("candidate")
        designs.set_title("final designs", fontsize=9)
    for k, (strategy, image) in enumerate(images.items(), start=3):
        ax = fig.add_subplot(rows, columns, k)
        ax.imshow(torch.as_tensor(image).squeeze().numpy(), cmap="gray")
        steps = results[strategy]
        value = steps[-1].scores.get(score, math.nan)
        ax.set_title(f"{strategy}: {len(steps[-1].design)} meas., {score.upper()} {value:.3g}", fontsize=9)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
