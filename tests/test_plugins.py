"""Plugins: the separately installed invprior-blur package, the template, and broken plugins (import
errors, wrong types, name clashes, an incompatible plugin API) reported by distribution name
without hiding the others."""

from __future__ import annotations

import importlib
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from invprior import registry
from invprior.cli import main
from invprior.core.noise import GaussianNoise
from invprior.core.problem import InverseProblem
from invprior.metrics import psnr

ROOT = Path(__file__).resolve().parent.parent
blur_plugin = pytest.importorskip("invprior_blur", reason="install ./plugins/invprior-blur (make test does)")


def test_the_blur_plugin_is_discovered_and_listed(capsys):
    entries = registry.entries("operators")
    assert entries["blur"].distribution == "invprior-blur"
    assert entries["super_resolution"].distribution == "invprior-blur"
    assert registry.declared_api("invprior-blur") == registry.PLUGIN_API
    assert main(["list", "operators"]) == 0
    listed = capsys.readouterr().out
    assert "blur" in listed and "invprior-blur" in listed


def test_dip_deblurs_on_the_plugin_operator():
    from invprior.methods.dip import DIP
    operator = registry.get("operators", "blur", size=32, kernel="motion", length=7, angle=30)
    x = registry.get("datasets", "ellipses", size=32, seed=3)
    problem = InverseProblem.simulate(operator, x, GaussianNoise(relative=0.01), seed=0)
    result = DIP(generator_params={"preset": "small", "channels": 16}, stopping="fixed", weight=0.0, init="none",
                 average=0.0, stopping_params={"iterations": 800}, max_iterations=800,
                 lr=1e-2).reconstruct(problem, progress=False)
    # measured: 21.98 dB for the blurred data themselves, about 25 dB after 800 steps
    assert float(psnr(result.image, x)) > float(psnr(problem.y, x)) + 2.0


def test_the_template_components_work_unchanged(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "plugins" / "template"))
    module = importlib.import_module("my_invprior_plugin")
    assert module.INVPRIOR_API.split(".")[0] == registry.PLUGIN_API.split(".")[0]
    from invprior.core.operator import adjoint_mismatch
    assert adjoint_mismatch(module.ColumnSums(size=5)) < 1e-12
    text = (ROOT / "plugins" / "template" / "pyproject.toml").read_text()
    assert '[project.entry-points."invprior.api"]' in text and '"invprior.operators"' in text


def _fake_distribution(root: Path, name: str, entry_points: str, module: str = "", code: str = "") -> None:
    """A minimal installed distribution (dist-info folder) on ``root``, with an optional module."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    if module:
        (root / f"{module}.py").write_text(textwrap.dedent(code))


@pytest.fixture
def broken_plugins(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "broken-import", """
        [invprior.api]
        api = fine_module:INVPRIOR_API
        [invprior.operators]
        broken_op = missing_module_xyz:Thing
        """, "fine_module", """
        INVPRIOR_API = "1.0"
        """)
    _fake_distribution(tmp_path, "wrong-type", """
        [invprior.api]
        api = wrong_module:INVPRIOR_API
        [invprior.operators]
        not_an_operator = wrong_module:NotAnOperator
        a_number = wrong_module:VALUE
        """, "wrong_module", """
        INVPRIOR_API = "1.1"
        VALUE = 3.0
        class NotAnOperator:
            pass
        """)
    _fake_distribution(tmp_path, "clashing", """
        [invprior.operators]
        denoising = clash_module:Fake
        """, "clash_module", """
        class Fake:
            pass
        """)
    _fake_distribution(tmp_path, "future-plugin", """
        [invprior.api]
        api = future_module:INVPRIOR_API
        [invprior.operators]
        future_op = future_module:FutureOperator
        """, "future_module", """
        from invprior.operators.denoising import Denoising
        INVPRIOR_API = "2.0"
        class FutureOperator(Denoising):
            pass
        """)
    _fake_distribution(tmp_path, "undeclared", """
        [invprior.operators]
        undeclared_op = undeclared_module:Op
        """, "undeclared_module", """
        from invprior.operators.denoising import Denoising
        class Op(Denoising):
            pass
        """)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    for name in ("fine_module", "wrong_module", "clash_module", "future_module", "undeclared_module"):
        sys.modules.pop(name, None)
    return tmp_path


def test_broken_plugins_are_reported_by_distribution_and_do_not_hide_others(broken_plugins):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = registry.names("operators")
    assert {"broken_op", "not_an_operator", "future_op", "undeclared_op", "blur", "denoising"} <= set(names)
    assert any("clashing" in str(w.message) and "denoising" in str(w.message) for w in caught)
    assert registry.entries("operators")["denoising"].distribution == "invprior"  # built-ins win

    with pytest.raises(ImportError, match="'broken-import'.*failed to load: ModuleNotFoundError"):
        registry.load("operators", "broken_op")
    with pytest.raises(ImportError, match="'wrong-type'.*not a ForwardOperator subclass"):
        registry.load("operators", "not_an_operator")
    with pytest.raises(ImportError, match="'wrong-type'.*not a ForwardOperator subclass or a factory"):
        registry.load("operators", "a_number")
    with pytest.raises(ImportError, match="'future-plugin' targets invprior plugin API 2.0.*provides API 1.0"):
        registry.load("operators", "future_op")
    with pytest.warns(UserWarning, match="'undeclared' does not declare"):
        assert registry.get("operators", "undeclared_op", size=4).domain_shape == (1, 4, 4)

    loaded, failed = registry.load_all("operators")
    assert {"broken_op", "not_an_operator", "a_number", "future_op"} <= set(failed)
    assert {"blur", "denoising", "ct_parallel", "undeclared_op"} <= set(loaded)
    assert "broken-import" in failed["broken_op"]


def test_cli_list_marks_broken_plugins(broken_plugins, capsys):
    assert main(["list", "operators"]) == 1  # a non-zero exit status when a component is broken
    out = capsys.readouterr().out
    assert "broken_op" in out and "BROKEN" in out and "future-plugin" in out


def test_a_run_configuration_uses_the_plugin_operator(tmp_path):
    """`invprior run` with `operator = "super_resolution"`: no change to invprior is needed."""
    config = tmp_path / "sr.toml"
    config.write_text(textwrap.dedent("""
        seed = 0
        [problem]
        operator = "super_resolution"
        operator_params = { factor = 2, sigma = 1.0 }
        image = "ellipses"
        size = 32
        noise = { relative = 0.01 }
        [method]
        name = "tv"
        params = { weight = "discrepancy" }
        """))
    assert main(["run", str(config), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    import json
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["method"]["psnr"][0] > 20.0
