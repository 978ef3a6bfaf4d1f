"""The command line: a full run writes its files; bad configurations name the key at fault."""

from __future__ import annotations

import json

import numpy as np
import pytest

from invprior.cli import main
from invprior.config import parse_config
from invprior.errors import ConfigError

CONFIG = """
seed = 2
[problem]
operator = "inpainting"
operator_params = {{ missing_fraction = 0.5 }}
image = "ellipses"
size = 24
noise = {{ std = 0.05 }}
[method]
name = "{method}"
params = {{ {params} }}
"""


def test_run_writes_metrics_arrays_and_figure(tmp_path, capsys):
    import matplotlib

    backend = matplotlib.get_backend()
    config = tmp_path / "run.toml"
    config.write_text(CONFIG.format(method="tv", params="iterations = 100, grid_size = 5"))
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert matplotlib.get_backend() == backend  # the user's plotting set-up is left alone

    def strict(token):
        raise ValueError(f"non-standard JSON {token}")

    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text(), parse_constant=strict)
    assert metrics["method"]["method"] == "tv" and metrics["baseline"]["method"] == "pseudo_inverse"
    assert metrics["method"]["psnr_mean"] > metrics["baseline"]["psnr_mean"] + 3
    arrays = np.load(tmp_path / "out" / "reconstruction.npz")
    assert set(arrays.files) == {"x_hat", "x_true", "y", "baseline", "method", "layout_observed"}
    observed = arrays["layout_observed"]  # y lists the observed pixels, row-major: it places y back
    assert observed.shape == (24, 24) and observed.sum() == arrays["y"].shape[-1] == 24 * 24 // 2
    misfit = arrays["y"][0, 0] - arrays["x_true"][0, 0][observed]  # the noise (std 0.05) if y is placed right
    assert 0.035 < misfit.std() < 0.065 and abs(misfit.mean()) < 0.02
    assert np.array_equal(arrays["x_hat"], arrays["method"])
    assert arrays["x_hat"].shape == arrays["x_true"].shape == (1, 1, 24, 24)
    assert (tmp_path / "out" / "figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "out").glob(".*.tmp"))
    assert "PSNR" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ('[problem]\noperator="denoising"\nimage="ellipses"\nnoise={std=0.1}\nsize=8\n', "method: missing"),
    ('[problem]\noperator="denoising"\nimage="ellipses"\nnoise={std=0.1}\ncolour=1\n[method]\nname="tv"',
     "problem.colour: unknown key"),
    ('[problem]\noperator="denoising"\nimage="ellipses"\nnoise={std=-1}\n[method]\nname="tv"',
     "problem.noise.std must be"),
    ('[problem]\noperator="denoising"\nimage="ellipses"\nnoise={std=0.1}\nsize="big"\n[method]\nname="tv"',
     "problem.size: expected a positive int"),
    ('[problem]\noperator="denoising"\nimage="ellipses"\nnoise={std=0.1}\n[method]\nname="tv"\nparams=3',
     "method.params: expected a table"),
])
def test_bad_configs_name_the_key(text, message):
    import tomllib

    with pytest.raises(ConfigError, match=message):
        parse_config(tomllib.loads(text))


def test_cli_reports_unknown_component_and_bad_parameters(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(CONFIG.format(method="tvv", params=""))
    assert main(["run", str(config), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "method: no methods component named 'tvv'" in err and "Did you mean 'tv'" in err
    config.write_text(CONFIG.format(method="tv", params="colour = 3"))
    assert main(["run", str(config), "--out", str(tmp_path / "o")]) == 2
    assert "method.params: cannot build methods 'tv'" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_list_shows_components_with_their_distribution(capsys):
    assert main(["list", "operators"]) == 0
    out = capsys.readouterr().out
    assert "ct_parallel" in out and "invprior.operators.ct:ParallelBeamCT" in out and " invprior " in out


def _python(*args: str) -> str:
    """stdout of ``python *args`` in a fresh interpreter (umask changes stay there, not in the test process)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True).stdout


def test_version_and_python_dash_m_match_the_package_metadata():
    import tomllib
    from pathlib import Path

    version = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["version"]
    assert _python("-m", "invprior", "--version").strip() == f"invprior {version}"


def test_result_files_get_the_permissions_the_umask_allows(tmp_path):
    code = """import os, sys, invprior.io as io
for umask in (0o022, 0o027, 0o077):
    os.umask(umask)
    io.atomic_write(os.path.join(sys.argv[1], oct(umask)), lambda f: f.write(b"x"))"""
    _python("-c", code, str(tmp_path))
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {"0o22": 0o644, "0o27": 0o640, "0o77": 0o600}  # and no temporary file left


@pytest.mark.parametrize("command", [["run", "missing.toml", "--out", "o"], ["demo", "--out", "o"],
                                     ["bench", "missing.toml", "--out", "o"]])
@pytest.mark.parametrize("device, message", [("gpu", "unknown device 'gpu'"), ("xpu", "runs on cpu, cuda or mps"),
                                             ("cuda:99", "cuda")])
def test_a_device_the_machine_lacks_is_one_line_before_any_work(tmp_path, capsys, command, device, message):
    """Checked before the configuration is even read (the file does not exist) and before any output is made."""
    assert main([*command[:-1], str(tmp_path / "o"), "--device", device]) == 2
    error = capsys.readouterr().err
    assert error.startswith("invprior: error: device") and message in error and error.count("\n") == 1
    assert not (tmp_path / "o").exists()


def test_auto_device_is_a_gpu_exactly_when_torch_sees_one():
    import torch

    from invprior.validation import torch_device

    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch_device("cpu") == torch.device("cpu")
