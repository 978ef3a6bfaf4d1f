"""Faults of the environment (a device the machine lacks, an output folder that cannot be written, a config file
that is not UTF-8 TOML, a problem too large for memory, bad posterior settings) are one line on stderr and exit
code 2, before any work."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

import invprior.bench
import invprior.demo
import invprior.experiment
import invprior.memory
from invprior.cli import main
from invprior.config import load_config, parse_config
from invprior.design.config import load_design_config
from invprior.errors import ConfigError
from invprior.memory import problem_bytes, require_memory

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "benchmarks" / "suites" / "smoke.toml"
CONFIG = """
[problem]
operator = "{operator}"
operator_params = {{ {operator_params} }}
image = "ellipses"
size = {size}
noise = {{ std = 0.05 }}
[method]
name = "tv"
{extra}
"""


def _config(tmp_path: Path, operator: str = "denoising", size: int = 16, operator_params: str = "",
            extra: str = "") -> Path:
    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(operator=operator, operator_params=operator_params, size=size, extra=extra))
    return path


@pytest.fixture
def no_work(monkeypatch):
    """Building a problem, running the demo's problem or a suite fails the test: a refusal must come first."""
    def work(*args, **kwargs):
        pytest.fail("the work started before the fault was reported")

    for module, name in ((invprior.experiment, "simulate_problem"), (invprior.experiment, "read_problem"),
                         (invprior.demo, "build_problem"), (invprior.bench, "run_suite")):
        monkeypatch.setattr(module, name, work)


def _error(capsys) -> str:
    """The command's stderr, checked to be one ``invprior: error:`` line."""
    err = capsys.readouterr().err
    assert err.startswith("invprior: error: ") and err.count("\n") == 1, err
    return err


def _commands(out: Path, config: Path) -> list[list[str]]:
    return [["run", str(config), "--out", str(out)], ["demo", "--out", str(out)],
            ["bench", str(SUITE), "--out", str(out)]]


# -- devices ------------------------------------------------------------------------------------

def _absent_devices() -> list[tuple[str, str]]:
    cases = [("cuda:x", "unknown device 'cuda:x'"), ("GPU", "unknown device 'GPU'"),
             ("cuda:7", "CUDA GPU")]  # none, or fewer than 8
    if not torch.cuda.is_available():
        cases.append(("cuda", "torch sees no CUDA GPU"))
    if not torch.backends.mps.is_available():
        cases.append(("mps", "MPS is not available"))
    return cases


@pytest.mark.parametrize("device, message", _absent_devices())
def test_a_device_the_machine_lacks_names_it_and_the_devices_there_are(tmp_path, capsys, no_work, device, message):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    for command in _commands(tmp_path / "out", _config(tmp_path)):
        assert main([*command, "--device", device]) == 2
        err = _error(capsys)
        assert f"'{device}'" in err and message in err and "this machine has: cpu" in err
    assert not (tmp_path / "out").exists()


# -- the output folder --------------------------------------------------------------------------

def test_an_output_path_that_is_a_file_is_refused_before_the_work(tmp_path, capsys, no_work):
    taken = tmp_path / "results.txt"
    taken.write_text("keep me")
    for command in _commands(taken, _config(tmp_path)):
        assert main(command) == 2
        assert f"--out {taken}: exists and is not a folder" in _error(capsys)
    for command in _commands(taken / "sub", _config(tmp_path)):  # its parent cannot be created
        assert main(command) == 2
        assert f"--out {taken / 'sub'}: cannot be created: {taken} is not a folder" in _error(capsys)
    assert taken.read_text() == "keep me"


def test_an_output_folder_that_cannot_be_written_is_refused_before_the_work(tmp_path, capsys, no_work):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        try:
            (locked / "probe").touch()
        except PermissionError:
            pass
        else:
            pytest.skip("this user writes into a read-only folder (root)")
        for command in _commands(locked / "out", _config(tmp_path)):
            assert main(command) == 2
            err = _error(capsys)
            assert f"--out {locked / 'out'}: cannot write in {locked} (Permission denied)" in err
        assert list(locked.iterdir()) == []  # nothing created, the test file removed
    finally:
        locked.chmod(0o755)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc is Linux's")
def test_an_output_folder_on_a_filesystem_that_takes_no_files_is_refused_even_for_root(tmp_path, capsys, no_work):
    out = Path("/proc/invprior-results")
    for command in _commands(out, _config(tmp_path)):
        assert main(command) == 2
        assert f"--out {out}: cannot write in /proc (" in _error(capsys)


def test_a_missing_output_folder_is_accepted_and_not_created_by_the_check(tmp_path):
    from invprior.validation import output_folder

    out = tmp_path / "a" / "b"
    assert output_folder(out) == out and not (tmp_path / "a").exists()
    assert list(tmp_path.iterdir()) == []


# -- configuration files ------------------------------------------------------------------------

@pytest.mark.parametrize("content, byte", [(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "0x89 at offset 0"),
                                           ("seed = 0  # café\n".encode("latin-1"), "0xe9 at offset 15"),
                                           (bytes(range(128, 256)), "0x80 at offset 0")])
def test_a_binary_or_non_utf8_config_is_one_line_naming_the_file(tmp_path, capsys, no_work, content, byte):
    config = tmp_path / "bad.toml"
    config.write_bytes(content)
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    err = _error(capsys)
    assert f"configuration file {config}: not a UTF-8 TOML file (byte {byte}" in err
    assert main(["bench", str(config), "--out", str(tmp_path / "out")]) == 2
    assert f"suite {config}: not a UTF-8 TOML file" in _error(capsys)


def test_a_folder_or_a_missing_file_as_the_config_is_one_line(tmp_path, capsys, no_work):
    assert main(["run", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert f"configuration file {tmp_path} is a folder, not a TOML file" in _error(capsys)
    assert main(["run", str(tmp_path / "none.toml"), "--out", str(tmp_path / "out")]) == 2
    assert f"configuration file {tmp_path / 'none.toml'} does not exist" in _error(capsys)


def test_an_unreadable_config_is_one_line(tmp_path, capsys, no_work):
    config = _config(tmp_path)
    config.chmod(0o000)
    try:
        try:
            config.read_bytes()
        except PermissionError:
            pass
        else:
            pytest.skip("this user reads a file without read permission (root)")
        assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
        assert f"configuration file {config}: cannot be read (Permission denied)" in _error(capsys)
    finally:
        config.chmod(0o644)


def test_a_utf8_config_with_a_byte_order_mark_is_read(tmp_path):
    config = _config(tmp_path)
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    assert load_config(config).problem.size == 16


# -- memory -------------------------------------------------------------------------------------

GB = 10**9


@pytest.mark.parametrize("operator, size, params, available, message", [
    ("denoising", 100000, "", 12, "problem: size = 100000 needs at least 80 GB (image 40 GB, data 40 GB), but only "
                              "12 GB of memory available; use a smaller size"),
    ("cs_gaussian", 256, "", 2, "needs at least 8.59 GB (dense operator matrix 8.59 GB, image 1 MB, data 1 MB), "
                                "but only 2 GB of memory available; use a smaller size or fewer measurements (m or "
                                "ratio), or cs_dct, which stores no matrix"),
    ("ct_parallel", 2048, "num_angles = 360", 12, "(CT system matrices 27.2 GB, image 17 MB, data 3 MB), but only "
                                                  "12 GB of memory available; use a smaller size or fewer angles"),
])
def test_a_problem_too_large_for_memory_is_refused_before_allocating(tmp_path, capsys, monkeypatch, no_work,
                                                                      operator, size, params, available, message):
    monkeypatch.setattr(invprior.memory, "available_bytes", lambda device="cpu": available * GB)
    config = _config(tmp_path, operator, size, params)
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert message in _error(capsys)


def test_the_estimate_is_a_lower_bound_of_what_building_the_problem_allocates():
    pytest.importorskip("astra")
    cases = [({"operator": "denoising", "size": 24, "num_images": 2}, torch.float64),
             ({"operator": "cs_gaussian", "operator_params": {"ratio": 0.5}, "size": 12}, torch.float32),
             ({"operator": "ct_parallel", "operator_params": {"num_angles": 12}, "size": 32}, torch.float32),
             ({"operator": "ct_fan", "operator_params": {"num_angles": 9, "num_detectors": 20}, "size": 32,
               "fine_factor": 2}, torch.float32)]
    for problem, dtype in cases:
        spec = parse_config({"problem": {"image": "ellipses", "noise": {"std": 0.1}, **problem},
                             "method": {"name": "tv"}}).problem
        estimate = problem_bytes(spec, dtype)
        built = invprior.experiment.build_problem(spec, 0, dtype)
        op = built.operator
        assert estimate["image"] == built.x_true.nbytes * (1 if spec.fine_factor == 1 else 1 + spec.fine_factor ** 2)
        ct = spec.operator.name.startswith("ct_")
        assert estimate["data"] == built.y.nbytes or (ct and estimate["data"] < built.y.nbytes)  # CT: >= size cells
        if "dense operator matrix" in estimate:
            assert estimate["dense operator matrix"] == op.matrix.nbytes  # exact: a float64 m x n matrix
        if "CT system matrices" in estimate:
            stored = [op] + ([op.on_grid(spec.size * spec.fine_factor)] if spec.fine_factor > 1 else [])
            entries = sum(o._matrix._nnz() + o._matrix_t._nnz() for o in stored)
            assert 0.3 * entries * 12 < estimate["CT system matrices"] <= entries * 12  # float64 + int32 each


def test_the_examples_and_the_demo_fit_in_a_gigabyte(monkeypatch):
    monkeypatch.setattr(invprior.memory, "available_bytes", lambda device="cpu": GB)
    specs = [(load_design_config(path).run if path.name.startswith("design_") else load_config(path)).problem
             for path in sorted((ROOT / "examples").glob("*.toml"))]
    specs += [parse_config(invprior.demo.demo_config(quick)).problem for quick in (False, True)]
    assert len(specs) > 10
    for spec in specs:
        for dtype in (torch.float32, torch.float64):
            require_memory(spec, dtype)
            require_memory(spec, dtype, "cuda:0")


def test_a_cuda_device_is_checked_for_what_it_holds(monkeypatch):
    spec = parse_config({"problem": {"operator": "ct_parallel", "operator_params": {"num_angles": 100}, "image":
                                     "ellipses", "size": 512, "fine_factor": 3, "noise": {"std": 0.1}},
                         "method": {"name": "tv"}}).problem
    held = problem_bytes(spec, torch.float32, kept=True)  # the reconstruction grid only, float32 matrices
    built = problem_bytes(spec, torch.float32)
    assert sum(held.values()) < sum(built.values()) / 5
    free = {"cpu": 100 * GB, "cuda": sum(held.values()) - 1}
    monkeypatch.setattr(invprior.memory, "available_bytes", lambda device="cpu": free[torch.device(device).type])
    require_memory(spec, torch.float32)
    with pytest.raises(ConfigError, match=r"^problem: size = 512, fine_factor = 3 needs at least .* free on cuda:0; "):
        require_memory(spec, torch.float32, "cuda:0")


def test_available_memory_is_read_from_the_system():
    have = invprior.memory.available_bytes()
    assert have is not None and 10**7 < have <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


# -- settings checked before the work -----------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    ('[posterior]\nname = "linearized_laplace"\nparams = { solver = "dense" }',
     "posterior.params: cannot build posteriors 'linearized_laplace'"),
    ('[posterior]\nname = "linearized_laplace"\nparams = { evidence = { iteration = 5 } }', "iteration"),
    ('[posterior]\nname = "laplace"', "posterior: no posteriors component named 'laplace'"),
    ('[baseline]\nname = "fpb"', "baseline: no methods component named 'fpb'"),
])
def test_bad_posterior_and_baseline_settings_are_refused_before_the_problem_is_built(tmp_path, capsys, no_work,
                                                                                      extra, message):
    config = _config(tmp_path, extra=extra)
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    assert message in _error(capsys)


def test_a_refusal_inside_the_run_leaves_no_empty_output_folder(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[problem]\noperator = "denoising"\nimage = "ellipses"\nsize = 1000000\nnoise = { std = 0.1 }\n'
                      '[method]\nname = "tv"\n')
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out), "--threads", "1"]) == 2
    assert "needs at least" in capsys.readouterr().err
    assert not out.exists()
