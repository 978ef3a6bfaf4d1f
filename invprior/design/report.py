"""What ``invprior design`` writes: one checksummed record per strategy (its steps, rewritten after each, the
warm start of its next refit, and its final image, so that a stopped comparison resumes where it stopped and as
it would have gone on), ``design.json`` and the figure ``design.png``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from invprior.core.reconstruction import WarmStart
from invprior.design.loop import DesignStep
from invprior.design.pool import CandidatePool
from invprior.errors import ConfigError, StateFileError
from invprior.figures import new_figure, save_figure
from invprior.io import load_torch_state, read_checked_json, save_torch_state, write_checked_json, write_json, write_npz

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


def warm_start_path(out: Path, strategy: str, measurements: int) -> Path:
    return out / "strategies" / f"{strategy}-{measurements}.warm"


def save_strategy(out: Path, strategy: str, steps: Sequence[DesignStep], fingerprint: str,
                  image: np.ndarray | None = None, warm: WarmStart | None = None) -> None:
    """The ``steps`` of ``strategy`` so far (checksummed, with the configuration's ``fingerprint``), the ``warm``
    start the last step left, if any, and, once it is finished, its final ``image``. The record is written last
    (a record without its image is unfinished; one names its warm start by its number of measurements), then the
    earlier steps' warm starts are removed."""
    path = record_path(out, strategy)
    measurements = len(steps[-1].design)
    if warm is not None:
        save_torch_state(warm_start_path(out, strategy, measurements), "design_warm_start", warm.payload())
    if image is not None:
        write_npz(path.with_suffix(".npz"), image=image)
    write_checked_json(path, {"strategy": strategy, "fingerprint": fingerprint, "finished": image is not None,
                              "warm_start": warm is not None, "steps": [asdict(step) for step in steps]})
    for older in steps[:-1]:
        warm_start_path(out, strategy, len(older.design)).unlink(missing_ok=True)


def load_warm_start(out: Path, strategy: str, steps: Sequence[DesignStep]) -> WarmStart | None:
    """The warm start the last of the recorded ``steps`` left; ``None`` with a warning when it is missing or
    damaged (the next refit then starts afresh)."""
    path = warm_start_path(out, strategy, len(steps[-1].design))
    remedy = "the next refit starts afresh, so the run can differ from an uninterrupted one"
    if not path.exists():
        warnings.warn(f"{path}: missing; {remedy}", stacklevel=2)
        return None
    try:
        return WarmStart.from_payload(load_torch_state(path, "design_warm_start", remedy))
    except (StateFileError, ConfigError) as exc:
        warnings.warn(str(exc), stacklevel=2)
        return None


@dataclass(frozen=True)
class StoredStrategy:
    """A strategy's record: its ``steps``, its final ``image`` (``None``: unfinished) and the ``warm`` start its
    last step left (``None``: none was written, or it was lost)."""

    steps: tuple[DesignStep, ...]
    image: np.ndarray | None
    warm: WarmStart | None


def load_strategy(out: Path, strategy: str, fingerprint: str) -> StoredStrategy | None:
    """The record of ``strategy`` if it exists, is intact and belongs to this configuration; else ``None`` (a
    damaged record is reported and not used)."""
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
    warm = load_warm_start(out, strategy, steps) if record.get("warm_start") and image is None else None
    return StoredStrategy(steps, image, warm)


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
