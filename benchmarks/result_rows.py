"""What the benchmarks that write results pages share: rows kept in ``rows.jsonl`` under the output folder
(rewritten atomically after every run, so a rerun skips finished runs of the same settings), the posterior part of
a row's progress line, and the results page with the command, machine and date it ran with."""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

import torch

from invprior.io import atomic_write


def load_rows(out: Path, settings: dict) -> list[dict]:
    """The rows of earlier runs with these ``settings``."""
    path = out / "rows.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r.get("settings") == settings]


def save_rows(out: Path, rows: list[dict]) -> None:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write(out / "rows.jsonl", lambda f: f.write(text.encode()))


def posterior_summary(row: dict) -> str:
    """The error bars' time and segmentation forecast, for rows that have them (else empty)."""
    if "auroc" not in row:
        return ""
    return (f"  posterior {row['posterior_seconds']:.0f} s, expected / observed error rate "
            f"{row['expected_error_rate']:.4f} / {row['observed_error_rate']:.4f}, AUROC {row['auroc']:.3f}")


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, torch {torch.__version__}"


def provenance() -> str:
    """The command that made a results page, the machine and the date, for the line under its title."""
    command = " ".join(["python", *(Path(a).as_posix() if a.endswith(".py") else a for a in sys.argv)])
    return (f"Written by `{command}` on {machine()}, {torch.get_num_threads()} torch threads, "
            f"{datetime.date.today().isoformat()}.")


def write_results(out: Path, page: str, docs: Path | None, header: str) -> None:
    """Print the page, write it to ``out``/results.md and, with ``docs``, as a documentation page under ``header``."""
    print(page)
    atomic_write(out / "results.md", lambda f: f.write(page.encode()))
    if docs:
        atomic_write(docs, lambda f: f.write((header + page).encode()))
