"""The registry: built-ins registered through entry points, clear errors, broken plugins reported."""

from __future__ import annotations

import importlib.metadata as metadata

import pytest

from invprior import registry
from invprior.errors import UnknownComponentError


def test_builtins_are_registered_by_the_package():
    assert {"denoising", "inpainting", "cs_gaussian", "cs_dct", "ct_parallel", "ct_fan"} <= set(
        registry.names("operators"))
    assert {"tv", "tikhonov", "fbp", "pseudo_inverse"} <= set(registry.names("methods"))
    assert {"ellipses", "shepp_logan", "ct_slice", "camera"} <= set(registry.names("datasets"))
    assert {"none", "tv_anisotropic", "tv_isotropic"} <= set(registry.names("regularizers"))
    builtin = {"denoising", "inpainting", "cs_gaussian", "cs_dct", "ct_parallel", "ct_fan", "eit"}
    assert all(registry.entries("operators")[name].distribution == "invprior" for name in builtin)


def test_every_registered_component_loads():
    for kind in registry.KINDS:
        loaded, failed = registry.load_all(kind)
        assert failed == {}
        assert all(callable(obj) for obj in loaded.values())


def test_unknown_names_suggest_close_matches():
    with pytest.raises(UnknownComponentError, match="Did you mean 'ct_parallel'"):
        registry.get("operators", "ct_paralel")
    with pytest.raises(UnknownComponentError, match="unknown component kind"):
        registry.names("widgets")


class _FakeDist:
    name = "broken-plugin"


def _fake_entry_points(original, extra):
    def entry_points(group=None, **kw):
        found = list(original(group=group, **kw)) if group else original(**kw)
        return found + [e for e in extra if e.group == group]
    return entry_points


def test_broken_plugin_is_reported_and_does_not_hide_others(monkeypatch):
    broken = metadata.EntryPoint("broken_op", "no_such_module_xyz:Thing", "invprior.operators")
    broken = broken._for(_FakeDist()) if hasattr(broken, "_for") else broken
    monkeypatch.setattr(metadata, "entry_points", _fake_entry_points(metadata.entry_points, [broken]))
    loaded, failed = registry.load_all("operators")
    assert "denoising" in loaded and "broken_op" in failed
    assert "no_such_module_xyz" in failed["broken_op"]
    assert "broken-plugin" in failed["broken_op"]
    with pytest.raises(ImportError, match="broken-plugin"):
        registry.get("operators", "broken_op")
