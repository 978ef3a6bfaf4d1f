"""Validated run configurations (TOML): one problem x one method, components named by registry.

A configuration looks like::

    seed = 0
    [problem]
    operator = "ct_parallel"          # registry name (invprior list operators)
    operator_params = { num_angles = 30 }
    image = "ct_slice"                # registry name (invprior list datasets)
    image_params = {}
    size = 128
    noise = { relative = 0.025 }      # or { std = 0.01 }
    fine_factor = 3                   # simulate data on a 3x finer grid (CT)
    [method]
    name = "tv"
    params = { weight = "discrepancy" }
    [baseline]                        # optional; default: the pseudo-inverse, else Tikhonov
    name = "fbp"
    [posterior]                       # optional: uncertainty around the method's result (DIP)
    name = "linearized_laplace"
    params = { iterations = 200 }
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invprior.core.noise import GaussianNoise
from invprior.errors import ConfigError

_TOP = {"seed": "an int", "problem": "a table", "method": "a table", "baseline": "a table", "posterior": "a table"}
_PROBLEM = {"operator": "a registry name", "operator_params": "a table", "image": "a registry name",
            "image_params": "a table", "size": "a positive int", "noise": "a table {relative=...} or {std=...}",
            "fine_factor": "an int >= 1", "num_images": "a positive int"}
_COMPONENT = {"name": "a registry name", "params": "a table"}


@dataclass
class ComponentSpec:
    """A registry name and the keyword parameters to build it with."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProblemSpec:
    """How to simulate the problem: operator, image, size, noise, grid refinement."""

    operator: ComponentSpec
    image: ComponentSpec
    size: int
    noise: GaussianNoise
    fine_factor: int = 1
    num_images: int = 1


@dataclass
class RunConfig:
    """A validated configuration for ``invprior run``."""

    problem: ProblemSpec
    method: ComponentSpec
    baseline: ComponentSpec | None
    posterior: ComponentSpec | None = None
    seed: int = 0
    raw: dict[str, Any] = field(default_factory=dict)


def _check_keys(table: dict, allowed: dict[str, str], where: str) -> None:
    for key in table:
        if key not in allowed:
            expected = ", ".join(f"{k} ({v})" for k, v in allowed.items())
            raise ConfigError(f"{where}{key}: unknown key; expected one of: {expected}")


def _get(table: dict, key: str, kind: type, where: str, expected: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}{key}: missing; expected {expected}")
        return default
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ConfigError(f"{where}{key}: expected {expected}, got {value!r}")
    return value


def _component(table: Any, where: str) -> ComponentSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table with 'name' and optional 'params', got {table!r}")
    _check_keys(table, _COMPONENT, f"{where}.")
    return ComponentSpec(_get(table, "name", str, f"{where}.", "a registry name"),
                         dict(_get(table, "params", dict, f"{where}.", "a table", {})))


def _positive(value: int, key: str, minimum: int = 1) -> int:
    if value < minimum:
        raise ConfigError(f"problem.{key}: expected an int >= {minimum}, got {value!r}")
    return value


def parse_config(data: dict[str, Any]) -> RunConfig:
    """Validate a configuration dictionary; errors name the offending key and what was expected."""
    _check_keys(data, _TOP, "")
    problem = _get(data, "problem", dict, "", "a table [problem]")
    _check_keys(problem, _PROBLEM, "problem.")
    noise_table = _get(problem, "noise", dict, "problem.", _PROBLEM["noise"])
    _check_keys(noise_table, {"relative": "a number >= 0", "std": "a number >= 0"}, "problem.noise.")
    try:
        noise = GaussianNoise(**noise_table)
    except ConfigError as exc:
        raise ConfigError(f"problem.{exc}") from None
    spec = ProblemSpec(
        operator=ComponentSpec(_get(problem, "operator", str, "problem.", "a registry name"),
                               dict(_get(problem, "operator_params", dict, "problem.", "a table", {}))),
        image=ComponentSpec(_get(problem, "image", str, "problem.", "a registry name"),
                            dict(_get(problem, "image_params", dict, "problem.", "a table", {}))),
        size=_positive(_get(problem, "size", int, "problem.", "a positive int", 64), "size"),
        noise=noise,
        fine_factor=_positive(_get(problem, "fine_factor", int, "problem.", "an int >= 1", 1), "fine_factor"),
        num_images=_positive(_get(problem, "num_images", int, "problem.", "a positive int", 1), "num_images"),
    )
    method = _component(_get(data, "method", dict, "", "a table [method] with a 'name'"), "method")
    baseline = _component(data["baseline"], "baseline") if "baseline" in data else None
    posterior = _component(data["posterior"], "posterior") if "posterior" in data else None
    if posterior is not None and spec.num_images != 1:
        raise ConfigError(f"posterior: uncertainty is fitted per image; set problem.num_images = 1 "
                          f"(got {spec.num_images})")
    return RunConfig(spec, method, baseline, posterior, _get(data, "seed", int, "", "an int", 0), data)


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file {path} does not exist")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data)
