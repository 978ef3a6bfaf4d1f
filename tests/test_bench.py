"""The benchmark harness: suite expansion, isolated runs on a process pool and on a Dask cluster
(equal results), atomic per-run records, resume, failures recorded, the table and the summary."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from invprior.bench import expand_suite, load_suite, run_suite, write_results
from invprior.cli import main
from invprior.config import parse_config
from invprior.errors import ConfigError
from invprior.experiment import build_method, build_problem
from invprior.metrics import psnr

ROOT = Path(__file__).resolve().parent.parent
TINY = {"name": "tiny", "seeds": [0, 1],
        "problems": [{"operator": "denoising", "image": "ellipses", "size": 16, "noise": [0.05, 0.1]}],
        "methods": [{"label": "Tikhonov", "name": "tikhonov", "params": {"weight": 0.1}},
                    {"label": "broken", "name": "tikhonov", "params": {"no_such_option": 1}}]}


def test_a_suite_expands_into_a_grid_of_valid_run_configurations():
    runs = expand_suite(TINY)
    assert len(runs) == 2 * 2 * 2 and len({r.key for r in runs}) == 8
    reordered = {**TINY, "problems": [dict(reversed(list(TINY["problems"][0].items())))]}
    assert {r.key for r in expand_suite(reordered)} == {r.key for r in runs}  # content hash, not order
    assert {r.config["problem"]["noise"]["relative"] for r in runs} == {0.05, 0.1}
    name, smoke = load_suite(ROOT / "benchmarks" / "suites" / "smoke.toml")
    assert name == "smoke" and len(smoke) == 12
    for path in sorted((ROOT / "benchmarks" / "suites").glob("*.toml")):
        assert load_suite(path)[1], path


@pytest.mark.parametrize("suite,match", [
    ({**TINY, "extra": 1}, "unknown keys"),
    ({**TINY, "methods": []}, "at least one"),
    ({**TINY, "seeds": "0"}, "seeds"),
    ({**TINY, "problems": [{"operator": "no_such_operator", "image": "ellipses", "size": 8}]}, r"problems\[0\]"),
    ({**TINY, "methods": [{"params": {}}]}, "needs 'name'"),
    ({**TINY, "methods": [{"name": "tikhonv"}]},
     r"methods\[0\]: no methods component named 'tikhonv'\. Did you mean 'tikhonov'"),
])
def test_bad_suites_are_refused(suite, match):
    with pytest.raises(ConfigError, match=match):
        expand_suite(suite)


def test_runs_are_isolated_recorded_atomically_resumed_and_summarised(tmp_path):
    runs = expand_suite(TINY)
    records = run_suite(runs, tmp_path, workers=2)
    assert len(records) == 8 and len(list((tmp_path / "runs").glob("*.json"))) == 8
    ok = [r for r in records if r["status"] == "ok"]
    failed = [r for r in records if r["status"] == "failed"]
    assert len(ok) == 4 and len(failed) == 4
    assert all("no_such_option" in r["error"] for r in failed)
    # an independent evaluation of one run gives the same PSNR
    first = next(run for run in runs if run.key == ok[0]["key"])
    config = parse_config(first.config)
    problem = build_problem(config.problem, config.seed)
    direct = float(psnr(build_method(config.method, "method").reconstruct(problem, False).image, problem.x_true))
    assert ok[0]["psnr"] == pytest.approx(direct, abs=1e-5)
    # the run's saved images give its recorded PSNR; failed runs save none
    with np.load(tmp_path / "runs" / f"{ok[0]['key']}.npz") as arrays:
        saved = float(psnr(torch.from_numpy(arrays["x_hat"]), torch.from_numpy(arrays["x_true"])))
    assert saved == pytest.approx(ok[0]["psnr"], abs=1e-5)
    assert not any((tmp_path / "runs" / f"{r['key']}.npz").exists() for r in failed)
    assert all("_images" not in r for r in records)
    assert ok[0]["peak_memory_mib"] > 10 and ok[0]["commit"] and ok[0]["torch"]
    # a rerun skips the finished runs and retries the failed ones
    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*.json")}
    again = run_suite(runs, tmp_path, workers=2)
    for record in again:
        changed = stamps[f"{record['key']}.json"] != (tmp_path / "runs" / f"{record['key']}.json").stat().st_mtime_ns
        assert changed == (record["status"] == "failed")
    paths = write_results(again, tmp_path, "tiny")
    assert {p.name for p in paths} >= {"results.csv", "summary.md", "psnr.png", "reconstructions.png"}
    assert "calibration_ll.png" not in {p.name for p in paths}   # no run fitted a posterior
    rows = list(csv.DictReader((tmp_path / "results.csv").open()))
    assert len(rows) == 8 and {"psnr", "wall_time_s", "problem.noise.relative", "label", "key"} <= set(rows[0])
    summary = (tmp_path / "summary.md").read_text()
    assert "4 failed" in summary and "| Tikhonov | 2 |" in summary


def test_the_dask_executor_gives_the_local_executors_results(tmp_path):
    pytest.importorskip("dask.distributed")
    suite = {**TINY, "methods": TINY["methods"][:1]}
    local = {r["key"]: r for r in run_suite(expand_suite(suite), tmp_path / "local", workers=2)}
    dask = {r["key"]: r for r in run_suite(expand_suite(suite), tmp_path / "dask", executor="dask", workers=2)}
    assert set(local) == set(dask) and len(local) == 4
    for key, record in local.items():
        assert dask[key]["status"] == record["status"] == "ok"
        assert dask[key]["psnr"] == pytest.approx(record["psnr"], abs=1e-9)


def test_the_smoke_suite_runs_from_the_command_line(tmp_path, capsys):
    assert main(["bench", str(ROOT / "benchmarks" / "suites" / "smoke.toml"), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "12 runs (0 failed)" in out
    records = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    by_label: dict[str, list[float]] = {}
    for r in records:
        by_label.setdefault(r["label"], []).append(r["psnr"])
    # TV is the best of the three on piecewise-constant phantoms
    assert min(by_label["TV"]) > max(by_label["DIP (200 steps)"])


def test_a_run_on_images_too_small_for_ssim_keeps_its_psnr_and_shows_no_ssim():
    from invprior.bench import run_one
    from invprior.bench.report import summary_markdown

    suite = {**TINY, "seeds": [0], "problems": [{**TINY["problems"][0], "size": 8, "noise": 0.05}],
             "methods": TINY["methods"][:1]}
    (run,) = expand_suite(suite)
    threads = torch.get_num_threads()
    record = run_one(run, commit="test", threads=threads + 1)
    assert record["status"] == "ok" and record["ssim"] is None
    # the run used its own thread count and gave the caller's back
    assert record["threads"] == threads + 1 and torch.get_num_threads() == threads
    config = parse_config(run.config)
    problem = build_problem(config.problem, config.seed)
    direct = float(psnr(build_method(config.method, "method").reconstruct(problem, False).image, problem.x_true))
    assert record["psnr"] == pytest.approx(direct, abs=1e-5)
    assert "| Tikhonov | 1 | " in summary_markdown([record], "small")
    assert " | - | " in summary_markdown([record], "small")


def test_summary_shows_posterior_calibration_when_runs_fitted_one():
    from invprior.bench.report import summary_markdown

    base = {"status": "ok", "problem.operator": "ct_parallel", "problem.image": "ellipses", "problem.size": 28,
            "problem.noise.relative": 0.05, "setting": "s", "ssim": 0.5, "wall_time_s": 1.0}
    records = [{**base, "label": "lin", "method_key": "a", "psnr": 20.0, "posterior_ll_p1": 1.0,
                "posterior_coverage_95": 0.9},
               {**base, "label": "lin", "method_key": "a", "psnr": 22.0, "posterior_ll_p1": 2.0,
                "posterior_coverage_95": 0.8},
               {**base, "label": "tv", "method_key": "b", "psnr": 21.0}]
    lines = summary_markdown(records, "calibration").splitlines()
    assert "| method | runs | PSNR | SSIM | LL p=1 | coverage 95 | time s |" in lines[4]
    # mean +- standard error by hand: (1 + 2) / 2 = 1.5, se = sqrt(0.5 / 2) = 0.5; coverage 0.85 +- 0.05
    assert "| lin | 2 | 21.00 +- 1.00 | 0.50 +- 0.00 | 1.50 +- 0.50 | 0.85 +- 0.05 | 1.00 +- 0.00 |" in lines[6]
    assert lines[7].endswith("| tv | 1 | 21.00 | 0.50 | - | - | 1.00 |")
    plain = summary_markdown([records[2]], "plain").splitlines()
    assert "LL p=1" not in plain[4]


def test_metric_figure_with_one_noise_level_shows_means_and_standard_errors(tmp_path, monkeypatch):
    """With a single noise level the figure is one dot per method (sorted by mean) with its standard
    error over seeds, not a line plot of single points."""
    import invprior.figures as figures
    from invprior.bench.report import metric_figure
    captured = []
    monkeypatch.setattr(figures, "save_figure", lambda fig, path: captured.append(fig) or path)
    records = [{"status": "ok", "label": label, "problem.operator": "op", "problem.image": "img", "setting": "abcdef0",
                "problem.noise.relative": 0.05, "psnr": value}
               for label, values in (("A", [30.0, 32.0]), ("B", [25.0, 26.0, 27.0])) for value in values]
    assert metric_figure(records, tmp_path / "psnr.png", "tiny") == tmp_path / "psnr.png"
    ax = captured[0].axes[0]
    means = list(ax.lines[0].get_xdata())
    assert means == pytest.approx([26.0, 31.0])                        # B first: sorted by mean
    assert [t.get_text().split(" ")[0] for t in ax.get_yticklabels()] == ["B", "A"]
    caps = sorted(x for line in ax.lines[1:] for x in line.get_xdata())   # error bar caps at mean -+ s.e.
    assert caps == pytest.approx(sorted([26 - 1 / 3 ** 0.5, 26 + 1 / 3 ** 0.5, 30.0, 32.0]))
