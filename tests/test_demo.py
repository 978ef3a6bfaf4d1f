"""The demo command end to end (shrunk to a few iterations), and a DIP configuration through `run`."""

from __future__ import annotations

import io
import json

import numpy as np

from invprior import demo
from invprior.cli import main


def test_demo_writes_three_methods_the_convergence_figure_and_error_bars(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(demo.QUICK, "size", 32)
    monkeypatch.setitem(demo.DEMO["method"]["params"], "max_iterations", 25)
    monkeypatch.setitem(demo.DEMO["method"]["params"], "init_iterations", 20)
    for group, key, value in (("evidence", "iterations", 3), ("evidence", "preconditioner_rank", 16),
                              ("evidence", "cg_iterations", 10), ("sampling", "num_samples", 16)):
        monkeypatch.setitem(demo.DEMO["posterior"]["params"][group], key, value)
    assert main(["demo", "--quick", "--quiet", "--keep-checkpoint", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [metrics[k]["method"] for k in ("fbp", "tv", "dip_tv")] == ["fbp", "tv", "dip"]
    assert metrics["problem"]["fine_factor"] == 3 and metrics["config"]["problem"]["size"] == 32
    assert metrics["dip_tv"]["params"]["weight"][0] > 0  # chosen from the data, not set by hand
    arrays = np.load(tmp_path / "reconstruction.npz")
    assert {"x_true", "fbp", "tv", "dip_tv", "x_hat", "std"} <= set(arrays.files)
    assert (tmp_path / "figure.png").stat().st_size > 10_000
    assert arrays["std"].shape == arrays["x_hat"].shape and (arrays["std"] > 0).all()
    posterior = metrics["posterior"]
    assert posterior["name"] == "lin-DIP" and 0.0 <= posterior["coverage_95"] <= 1.0
    assert {"ll_p1", "ll_p2", "ll_p10"} <= set(posterior)
    assert (tmp_path / "uncertainty.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "dip_tv" in out and "DIP+TV:" in out and "lin-DIP" in out
    assert [path.name for path in tmp_path.glob("checkpoint-*")] == ["checkpoint-dip-32px.pt"]  # kept: asked to
    # a rerun reads the finished fit back (the same image) and, by default, removes the checkpoint
    first = arrays["dip_tv"]
    assert main(["demo", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
    assert np.array_equal(np.load(tmp_path / "reconstruction.npz")["dip_tv"], first)
    assert not list(tmp_path.glob("checkpoint-*"))


def test_run_with_a_dip_config_checkpoints_in_the_output_folder_and_removes_it_when_done(tmp_path):
    config = tmp_path / "dip.toml"
    config.write_text("""
[problem]
operator = "denoising"
image = "ellipses"
size = 16
noise = { std = 0.1 }
[method]
name = "dip"
[method.params]
generator_params = { preset = "small", channels = 8 }
weight = 0.01
init = "none"
stopping = "fixed"
stopping_params = { iterations = 12 }
checkpoint_every = 5
log_every = 4
""")
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--quiet", "--keep-checkpoint"]) == 0
    assert (out / "checkpoint-dip.pt").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"]["method"] == "dip" and "fixed budget of 12" in metrics["method"]["stop_reason"]
    trace = (out / "trace.csv").read_text().splitlines()
    columns = trace[0].split(",")
    assert [float(row.split(",")[columns.index("iteration")]) for row in trace[1:]] == [4.0, 8.0, 12.0]
    first = (out / "reconstruction.npz").read_bytes()
    # the rerun finds the finished checkpoint (no new fit: the same image), then removes it
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    assert not (out / "checkpoint-dip.pt").exists()
    assert np.array_equal(np.load(io.BytesIO(first))["x_hat"], np.load(out / "reconstruction.npz")["x_hat"])
