"""Suite results: a tidy table (CSV, and Parquet when pyarrow is installed), a Markdown summary
(mean +- standard error per method and setting) and a figure of PSNR against the noise level."""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from invprior.io import atomic_write

__all__ = ["SETTING_KEYS", "write_table", "summary_markdown", "write_results"]

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


def _mean_se(values: list[float]) -> str:
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f"{mean:.2f}"
    se = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
    return f"{mean:.2f} +- {se:.2f}"


def summary_markdown(records: list[dict[str, Any]], name: str) -> str:
    """Mean +- standard error over seeds of PSNR, SSIM and wall time per setting and method."""
    groups: dict[tuple, dict[tuple, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    failed = [r for r in records if r.get("status") != "ok"]
    for record in records:
        if record.get("status") == "ok":
            shown = tuple(record.get(k) for k in SETTING_KEYS)
            groups[(*shown, record.get("setting"))][(record["label"], record.get("method_key"))].append(record)
    lines = [f"# {name}", "", f"{len(records)} runs, {len(failed)} failed.", "",
             "| operator | image | size | noise | method | runs | PSNR | SSIM | time s |", "|---|---|---|---|---|---|---|---|---|"]
    for setting in sorted(groups, key=lambda s: tuple(str(v) for v in s)):
        operator, image, size, relative, std, _ = setting
        noise = f"{relative:g} rel." if relative is not None else f"{std:g} std"
        for (label, _), rows in sorted(groups[setting].items()):
            lines.append(f"| {operator} | {image} | {size} | {noise} | {label} | {len(rows)} | "
                         f"{_mean_se([r['psnr'] for r in rows])} | {_mean_se([r['ssim'] for r in rows])} | "
                         f"{_mean_se([r['wall_time_s'] for r in rows])} |")
    for record in failed:
        lines.append(f"\nfailed: {record['label']} {record['key']}: {record.get('error', '')}")
    return "\n".join(lines) + "\n"


def psnr_figure(records: list[dict[str, Any]], path: Path, name: str) -> Path | None:
    """Mean PSNR against the relative noise level, one line per method and problem (operator, image)."""
    from invprior.figures import new_figure, save_figure
    curves: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("status") == "ok" and r.get("problem.noise.relative") is not None:
            curve = f"{r['label']} ({r['problem.operator']}, {r['problem.image']}, {r.get('setting', '')[:6]})"
            curves[curve][r["problem.noise.relative"]].append(r["psnr"])
    if not curves:
        return None
    fig = new_figure()
    fig.set_size_inches(6.0, 4.0)
    ax = fig.subplots()
    for label, points in sorted(curves.items()):
        levels = sorted(points)
        ax.plot([100 * v for v in levels], [sum(points[v]) / len(points[v]) for v in levels], "o-", lw=1.2,
                label=label)
    ax.set_xlabel("relative noise (%)")
    ax.set_ylabel("PSNR (dB), mean over seeds")
    ax.set_title(name, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def write_results(records: list[dict[str, Any]], out: str | Path, name: str) -> list[Path]:
    """Table, ``summary.md`` and ``psnr.png`` in ``out``."""
    out = Path(out)
    paths = write_table(records, out)
    text = summary_markdown(records, name)
    paths.append(atomic_write(out / "summary.md", lambda f: f.write(text.encode())))
    figure = psnr_figure(records, out / "psnr.png", name)
    return paths + ([figure] if figure is not None else [])
