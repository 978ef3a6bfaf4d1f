"""The demo command end to end (shrunk to a few iterations), and a DIP configuration through `run`."""

from __future__ import annotations

import json

import numpy as np

from invprior import demo
from invprior.cli import main


def test_demo_writes_three_methods_the_convergence_figure_and_error_bars(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(demo.QUICK, "size", 32)
    monkeypatch.setitem(demo.DEMO["method"]["params"], "max_iterations", 25)
    monkeypatch.setitem(demo.DEMO["method"]["params"], "init_iterations", 20)
    for key, value in {"iterations": 3, "num_samples": 16, "preconditioner_rank": 16, "cg_iterations": 10}.items():
        monkeypatch.setitem(demo.DEMO["posterior"]["params"], key, value)
    assert main(["demo", "--quick", "--quiet", "--out", str(tmp_path)]) == 0
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


def test_run_with_a_dip_config_checkpoints_in_the_output_folder(tmp_path):
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
stopping = "fixed"
stopping_params = { iterations = 12 }
checkpoint_every = 5
""")
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert (tmp_path / "out" / "checkpoint-dip.pt").exists()
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["method"]["method"] == "dip" and "fixed budget of 12" in metrics["method"]["stop_reason"]
