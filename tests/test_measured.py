"""Measured data through configurations and the command line: a file in, a segmentation, MCC and figures out."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from invprior.cli import main
from invprior.config import ConstraintsSpec, MeasuredSpec, parse_config
from invprior.errors import ConfigError, ConvergenceWarning

pytest.importorskip("odl")
pytest.importorskip("h5py")
from invprior.analysis.segmentation import matthews_correlation  # noqa: E402
from invprior.experiment import build_problem  # noqa: E402
from invprior.readers.reference import read_reference  # noqa: E402

HTC = Path(__file__).resolve().parents[1] / "examples" / "data" / "htc2022"

MEASURED = """
[problem]
reader = "htc2022"
file = "data/htc2022_tb_90deg.mat"
reference = "data/htc2022_tb_full_recon_fbp_seg.png"
size = {size}
{extra}
[baseline]
name = "fbp"
[method]
name = "tv"
params = {{ iterations = 40, grid_size = 2, isotropic = true }}
"""


@pytest.fixture
def folder(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("htc2022_tb_90deg.mat", "htc2022_tb_full_recon_fbp_seg.png"):
        shutil.copy(HTC / name, data / name)
    return tmp_path


def test_paths_are_relative_to_the_configuration(folder):
    import tomllib

    raw = tomllib.loads(MEASURED.format(size=32, extra='noise = { std = 0.006 }\nconstraints = { lower = 0.0 }'))
    spec = parse_config(raw, folder).problem
    assert isinstance(spec, MeasuredSpec) and spec.size == 32 and spec.noise_std == 0.006
    assert spec.reader.params["file"] == folder / "data" / "htc2022_tb_90deg.mat"
    assert spec.reader.params["reference"] == folder / "data" / "htc2022_tb_full_recon_fbp_seg.png"
    assert spec.constraints == ConstraintsSpec(lower=0.0)
    assert spec.label == "htc2022 / htc2022_tb_90deg.mat"


@pytest.mark.parametrize("extra, match", [
    ("noise = { relative = 0.01 }", r"problem.noise.relative: unknown key"),
    ("noise = { std = -1.0 }", r"problem.noise.std: expected a number > 0"),
    ('reader_params = { file = "x.mat" }', r"problem.reader_params.file: set it as problem.file"),
    ("operator = 'ct_fan'", r"problem.operator: unknown key"),
    ("constraints = { lower = 1.0, upper = 0.5 }", r"lower \(1.0\) must be below upper"),
    ("constraints = { support = 'circle' }", r"problem.constraints.support: expected 'disc' or a table"),
    ("constraints = { support = { margin = 1.0 } }", r"support: missing file"),
    ("constraints = { support = { file = 'm.npy', margin = 1.0 } }", r"margin: applies to a fitted disc only"),
    ("constraints = { upper = 'high' }", r"problem.constraints.upper: expected a number"),
])
def test_bad_measured_configurations_name_the_key(folder, extra, match):
    import tomllib

    with pytest.raises(ConfigError, match=match):
        parse_config(tomllib.loads(MEASURED.format(size=32, extra=extra)), folder)


def test_reading_with_constraints_from_the_data_and_from_a_mask(folder):
    import tomllib

    raw = tomllib.loads(MEASURED.format(size=32, extra="constraints = { lower = 0.0, upper = 0.04, support = 'disc' }"))
    problem = build_problem(parse_config(raw, folder).problem)
    disc = problem.metadata["constraints"]["disc"]
    assert disc["radius"] == pytest.approx(35.0, abs=0.3) and problem.constraints.upper == 0.04
    assert problem.constraints.support.shape == (32, 32) and 0.6 < problem.constraints.support.float().mean() < 0.7

    mask = np.zeros((32, 32), dtype=bool)
    mask[4:20, 8:30] = True  # a picture: row 0 at the top
    np.save(folder / "mask.npy", mask)
    raw["problem"]["constraints"] = {"support": {"file": "mask.npy"}}
    problem = build_problem(parse_config(raw, folder).problem)
    support = problem.constraints.support
    assert np.array_equal(np.rot90(support.numpy()), mask)  # shown as invprior shows images: as the picture
    raw["problem"]["size"] = 16
    with pytest.raises(ConfigError, match=r"mask .* has shape \(32, 32\), the image grid is \(16, 16\)"):
        build_problem(parse_config(raw, folder).problem)


def test_cli_run_on_measured_data(folder, capsys):
    config = folder / "htc.toml"
    config.write_text(MEASURED.format(size=48, extra="constraints = { lower = 0.0, support = 'disc' }"))
    out = folder / "out"
    assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "noise level estimated from the data: std" in printed and "support: disc fitted" in printed
    assert "MCC" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["problem"]["noise"]["estimated"] is True
    assert metrics["method"]["mcc_mean"] > metrics["baseline"]["mcc_mean"] > 0.4
    # segmentation.png is a picture like the reference file: comparing the two files as they are gives the MCC
    saved = read_reference(out / "segmentation.png")
    reference = read_reference(folder / "data" / "htc2022_tb_full_recon_fbp_seg.png")
    assert saved.shape == (512, 512)
    assert matthews_correlation(saved, reference) == pytest.approx(metrics["method"]["mcc"][0], abs=1e-12)
    assert matthews_correlation(np.rot90(saved), reference) < metrics["method"]["mcc"][0] - 0.2
    for name in ("figure.png", "segmentation_figure.png", "reconstruction.npz"):
        assert (out / name).stat().st_size > 0


def test_cli_names_a_missing_file_in_one_line(folder, capsys):
    config = folder / "htc.toml"
    config.write_text(MEASURED.format(size=16, extra="").replace("htc2022_tb_90deg.mat", "missing.mat"))
    assert main(["run", str(config), "--out", str(folder / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "missing.mat: no such file" in error


def test_segmentation_figure_with_a_std_map(tmp_path):
    from PIL import Image

    from invprior.figures import segmentation_figure

    reference = np.zeros((40, 40), dtype=np.int64)
    reference[10:30, 5:25] = 1
    labels = np.roll(reference, 2, axis=0)
    image = torch.from_numpy(reference.astype(np.float32))[None, None]
    path = segmentation_figure(tmp_path / "seg.png", image, labels, reference, "method: MCC 0.9",
                               title="measured", std=0.1 * image)
    width, height = Image.open(path).size
    assert width > 4 * height  # five panels side by side: reconstruction, std, segmentation, reference, differences
    narrow = segmentation_figure(tmp_path / "seg4.png", image, labels, reference, "method")
    assert Image.open(narrow).size[0] < width


def test_cli_run_with_lin_dip_error_bars_on_measured_data(folder, capsys):
    """DIP on the measured scan with lin-DIP's subspace path: the std map and its segmentation forecast land in
    metrics.json, and the observed error rate is the one segmentation.png and the reference file give."""
    config = folder / "htc.toml"
    problem = MEASURED.format(size=24, extra="constraints = { lower = 0.0, support = 'disc' }").split("[method]")[0]
    config.write_text(problem + """[method]
name = "dip"
[method.params]
generator = "unet"
generator_params = { preset = "small", scales = 2, channels = 4 }
stopping = "fixed"
stopping_params = { iterations = 30 }
lr = 1e-2
weight = 0.0
init = "none"
average = 0.0
[posterior]
name = "linearized_laplace"
[posterior.params]
solver = { kind = "subspace", subspace_rank = 40 }
evidence = { noise = "learn" }
sampling = { num_samples = 64, mean = "network" }
""")
    out = folder / "out"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        assert main(["run", str(config), "--out", str(out), "--quiet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    forecast = metrics["posterior"]["segmentation"]
    saved = read_reference(out / "segmentation.png")
    reference = read_reference(folder / "data" / "htc2022_tb_full_recon_fbp_seg.png")
    assert metrics["posterior"]["mean_used"] == "network"
    assert forecast["observed_error_rate"] == pytest.approx(float((saved != reference).mean()), abs=1e-12)
    assert 0 < forecast["expected_error_rate"] < 1 and 0.5 < forecast["auroc"] <= 1
    with np.load(out / "reconstruction.npz") as arrays:
        assert arrays["std"].shape == (1, 1, 24, 24) and (arrays["std"] > 0).all()
