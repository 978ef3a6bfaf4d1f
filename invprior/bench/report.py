"""Suite results: a tidy table (CSV, and Parquet when pyarrow is installed), a Markdown summary
(mean +- standard error per method and setting), figures of PSNR (and, when runs fitted a posterior,
test log-likelihood and coverage) against the noise level, and a grid of reconstructions."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from invprior.io import atomic_write

__all__ = ["SETTING_KEYS", "write_table", "summary_markdown", "metric_figure", "reconstructions_figure",
           "write_results"]

#: The columns shown for a setting; runs are grouped by the ``setting`` hash (the whole problem but its
#: noise), the noise level and the ``method_key`` hash, so no two different settings or methods mix.
SETTING_KEYS = ("problem.operator", "problem.image", "problem.size", "problem.noise.relative", "problem.noise.std")


def write_table(records: list[dict[str, Any]], out: Path) -> list[Path]:
    """``results.csv`` (one row per run, the union of all columns) and ``results.parquet`` if possible."""
    columns = sorted({key for record in records for key in record if key != "traceback"})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    paths = [atomic_write(out / "results.csv", lambda f: f.write(buffer.getvalue().encode()))]
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return paths
    table = pa.table({c: [None if r.get(c) is None else str(r.get(c)) if not isinstance(r.get(c), (int, float))
                          else r.get(c) for r in records] for c in columns})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    paths.append(atomic_write(out / "results.parquet", lambda f: f.write(sink.getvalue())))
    return paths


def _mean_and_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and standard error ``s / sqrt(n)`` (``None`` for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))


def _mean_se(values: list[float]) -> str:
    mean, se = _mean_and_se(values)
    return f"{mean:.2f}" if se is None else f"{mean:.2f} +- {se:.2f}"


#: Posterior columns of the summary, shown when any run fitted a posterior: (header, record key).
POSTERIOR_COLUMNS = (("LL p=1", "posterior_ll_p1"), ("coverage 95", "posterior_coverage_95"))


def summary_markdown(records: list[dict[str, Any]], name: str) -> str:
    """Mean +- standard error over seeds of PSNR, SSIM and wall time per setting and method, and of the
    posterior's test log-likelihood (p = 1) and 95 % coverage when any run fitted a posterior."""
    groups: dict[tuple, dict[tuple, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    failed = [r for r in records if r.get("status") != "ok"]
    for record in records:
        if record.get("status") == "ok":
            shown = tuple(record.get(k) for k in SETTING_KEYS)
            groups[(*shown, record.get("setting"))][(record["label"], record.get("method_key"))].append(record)
    extra = [(head, key) for head, key in POSTERIOR_COLUMNS
             if any(key in r for r in records if r.get("status") == "ok")]
    heads = ["operator", "image", "size", "noise", "method", "runs", "PSNR", "SSIM", *(h for h, _ in extra), "time s"]
    lines = [f"# {name}", "", f"{len(records)} runs, {len(failed)} failed.", "",
             "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for setting in sorted(groups, key=lambda s: tuple(str(v) for v in s)):
        operator, image, size, relative, std, _ = setting
        noise = f"{relative:g} rel." if relative is not None else f"{std:g} std"
        for (label, _), rows in sorted(groups[setting].items()):
            posterior = [_mean_se([r[key] for r in rows]) if all(key in r for r in rows) else "-" for _, key in extra]
            cells = [operator, image, size, noise, label, len(rows), _mean_se([r["psnr"] for r in rows]),
                     _mean_se([r["ssim"] for r in rows]) if all(r.get("ssim") is not None for r in rows) else "-",
                     *posterior, _mean_se([r["wall_time_s"] for r in rows])]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    for record in failed:
        lines.append(f"\nfailed: {record['label']} {record['key']}: {record.get('error', '')}")
    return "\n".join(lines) + "\n"


#: Figures against the noise level: file name, record key, axis label; the posterior ones only when present.
METRIC_FIGURES = (("psnr.png", "psnr", "PSNR (dB)"),
                  ("calibration_ll.png", "posterior_ll_p1", "test log-likelihood per pixel (p = 1)"),
                  ("calibration_coverage.png", "posterior_coverage_95", "95 % coverage (0.95 = calibrated)"))


def metric_figure(records: list[dict[str, Any]], path: Path, name: str, key: str = "psnr",
                  label: str = "PSNR (dB)") -> Path | None:
    """Mean of ``key`` over seeds against the relative noise level, one line per method and problem
    (operator, image, setting hash); with a single noise level, one dot per method and problem with
    its standard error instead. ``None`` when no finished run has ``key``."""
    from invprior.figures import new_figure, save_figure

    curves: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("status") == "ok" and r.get("problem.noise.relative") is not None and key in r:
            curve = f"{r['label']} ({r['problem.operator']}, {r['problem.image']}, {r.get('setting', '')[:6]})"
            curves[curve][r["problem.noise.relative"]].append(r[key])
    if not curves:
        return None
    fig = new_figure()
    ax = fig.subplots()
    levels = {level for points in curves.values() for level in points}
    if len(levels) == 1:  # one noise level: a dot per method and problem with its standard error, sorted
        level = levels.pop()
        summary = {c: _mean_and_se(points[level]) for c, points in curves.items()}
        names = sorted(summary, key=lambda c: summary[c][0])
        stats = [summary[c] for c in names]
        fig.set_size_inches(6.5, 1.2 + 0.28 * len(names))
        ax.errorbar([m for m, _ in stats], range(len(names)), xerr=[se or 0.0 for _, se in stats], fmt="o",
                    capsize=3, lw=1.2)
        ax.set_yticks(range(len(names)), names, fontsize=7)
        ax.set_xlabel(f"{label}, mean +- s.e. over seeds (noise {100 * level:g} %)")
        if key == "posterior_coverage_95":
            ax.axvline(0.95, color="k", ls="--", lw=0.8)
    else:
        fig.set_size_inches(6.0, 4.0)
        for curve, points in sorted(curves.items()):
            ordered = sorted(points)
            ax.plot([100 * v for v in ordered], [sum(points[v]) / len(points[v]) for v in ordered], "o-", lw=1.2,
                    label=curve)
        if key == "posterior_coverage_95":
            ax.axhline(0.95, color="k", ls="--", lw=0.8)
        ax.set_xlabel("relative noise (%)")
        ax.set_ylabel(f"{label}, mean over seeds")
        ax.legend(fontsize=7)
    ax.set_title(name, fontsize=10)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def reconstructions_figure(records: list[dict[str, Any]], out: Path, name: str) -> Path | None:
    """A grid of reconstructions: one row per setting (its lowest seed), the truth and then one column
    per method, from the images the runs saved in ``out/runs/<key>.npz``; ``None`` when there are none."""
    from invprior.figures import new_figure, save_figure

    rows: dict[tuple, dict[str, dict[str, Any]]] = defaultdict(dict)
    for r in sorted((r for r in records if r.get("status") == "ok"), key=lambda r: r.get("seed", 0)):
        if (out / "runs" / f"{r['key']}.npz").exists():
            row = (r.get("setting"), r.get("problem.noise.relative"), r.get("problem.noise.std"))
            rows[row].setdefault(r["label"], r)
    if not rows:
        return None
    methods = sorted({label for row in rows.values() for label in row})
    fig = new_figure()
    fig.set_size_inches(1.9 * (len(methods) + 1), 2.0 * len(rows))
    axes = fig.subplots(len(rows), len(methods) + 1, squeeze=False)
    for i, row in enumerate(sorted(rows, key=lambda k: tuple(str(v) for v in k))):
        for j, label in enumerate(["truth", *methods]):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if label == "truth":
                record = next(iter(rows[row].values()))
            elif label in rows[row]:
                record = rows[row][label]
            else:
                ax.set_axis_off()
                continue
            with np.load(out / "runs" / f"{record['key']}.npz") as arrays:
                image = arrays["x_true" if label == "truth" else "x_hat"][0, 0]
                low, high = float(arrays["x_true"].min()), float(arrays["x_true"].max())
            ax.imshow(image.T, origin="lower", cmap="gray", vmin=low, vmax=high)
            title = label if label == "truth" else f"{label}\n{record['psnr']:.2f} dB"
            ax.set_title(title, fontsize=7)
            if j == 0:
                noise = record.get("problem.noise.relative") or record.get("problem.noise.std")
                ax.set_ylabel(f"{record.get('problem.image')}\n{record.get('problem.operator')}, {noise:g}", fontsize=7)
    fig.suptitle(f"{name}: reconstructions (lowest seed)", fontsize=9)
    return save_figure(fig, out / "reconstructions.png")


def write_results(records: list[dict[str, Any]], out: str | Path, name: str) -> list[Path]:
    """Table, ``summary.md``, ``psnr.png`` (and the calibration figures when runs fitted a posterior) and
    ``reconstructions.png`` in ``out``."""
    out = Path(out)
    paths = write_table(records, out)
    text = summary_markdown(records, name)
    paths.append(atomic_write(out / "summary.md", lambda f: f.write(text.encode())))
    figures = [metric_figure(records, out / file, name, key, label) for file, key, label in METRIC_FIGURES]
    figures.append(reconstructions_figure(records, out, name))
    return paths + [figure for figure in figures if figure is not None]
