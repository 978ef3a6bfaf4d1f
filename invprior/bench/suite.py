"""Benchmark suites: a grid of problems x methods x seeds, expanded into single run configurations.

A suite file (TOML)::

    name = "smoke"
    seeds = [0, 1]

    [[problems]]                       # any list-valued key is a grid axis
    operator = "denoising"
    image = ["ellipses", "shepp_logan"]
    size = 32
    noise = [0.05, 0.1]                # relative noise levels (or tables as in a run configuration)

    [[methods]]
    label = "TV"                       # optional; default: the method name
    name = "tv"
    params = { weight = "discrepancy" }

Each run is the run configuration ``{seed, problem, method[, posterior]}`` of ``invprior run``; its
identity is the SHA-256 of that configuration in canonical JSON, so a finished run is recognised
on a rerun whatever the order of the grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invprior.config import parse_config, read_toml
from invprior.errors import ConfigError
from invprior.io import content_hash

__all__ = ["Run", "load_suite", "expand_suite"]

_PROBLEM_KEYS = {"operator", "operator_params", "image", "image_params", "size", "noise", "fine_factor", "num_images"}
_METHOD_KEYS = {"label", "name", "params", "posterior"}


@dataclass(frozen=True)
class Run:
    """One run: its configuration (a valid run configuration), method label and content hash;
    ``setting`` hashes the problem without its noise, ``method`` the method (and posterior), so that
    summaries never average runs of different settings or of two methods that share a label."""

    config: dict[str, Any]
    label: str
    key: str
    setting: str = ""
    method: str = ""


def _grid(table: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the list-valued entries of ``table`` (other entries kept as they are)."""
    axes = {k: v for k, v in table.items() if isinstance(v, list)}
    combos = itertools.product(*axes.values()) if axes else [()]
    return [{**table, **dict(zip(axes, values))} for values in combos]


def _noise(value: Any) -> dict[str, Any]:
    return {"relative": float(value)} if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def expand_suite(suite: dict[str, Any], where: str = "suite") -> list[Run]:
    """The runs of a suite, each validated as a run configuration."""
    unknown = set(suite) - {"name", "seeds", "problems", "methods", "description"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}; "
                          "allowed: name, description, seeds, problems, methods")
    problems, methods = suite.get("problems", []), suite.get("methods", [])
    for key, tables in (("problems", problems), ("methods", methods)):
        if not tables or not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise ConfigError(f"{where}: {key} needs at least one [[{key}]] table, got {tables!r}")
    seeds = suite.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{where}: seeds must be a list of integers, got {seeds!r}")
    if not seeds:
        raise ConfigError(f"{where}: seeds is empty; give at least one, e.g. seeds = [0]")
    runs: dict[str, Run] = {}
    for p, problem in enumerate(problems):
        bad = set(problem) - _PROBLEM_KEYS
        if bad:
            raise ConfigError(f"{where}.problems[{p}]: unknown keys {sorted(bad)}")
        empty = [key for key, value in problem.items() if isinstance(value, list) and not value]
        if empty:
            raise ConfigError(f"{where}.problems[{p}].{empty[0]}: an empty list gives no runs; give at least one "
                              "value")
        for m, method in enumerate(methods):
            bad = set(method) - _METHOD_KEYS
            if bad or "name" not in method:
                raise ConfigError(f"{where}.methods[{m}]: needs 'name'; unknown keys {sorted(bad)}")
            for grid_problem in _grid(problem):
                for seed in seeds:
                    noise = _noise(grid_problem.get("noise", 0.05))
                    config: dict[str, Any] = {"seed": seed, "problem": {**grid_problem, "noise": noise},
                                              "method": {"name": method["name"], "params": method.get("params", {})}}
                    if "posterior" in method:
                        config["posterior"] = method["posterior"]
                    try:
                        _check_names(parse_config(config))
                    except ConfigError as exc:
                        raise ConfigError(f"{where}: problems[{p}] x methods[{m}]: {exc}") from None
                    key = content_hash(config)
                    setting = content_hash({k: v for k, v in config["problem"].items() if k != "noise"})
                    method_key = content_hash({k: v for k, v in config.items() if k in ("method", "posterior")})
                    runs[key] = Run(config, str(method.get("label", method["name"])), key, setting, method_key)
    return list(runs.values())


def _check_names(config) -> None:
    """Refuse unknown component names now rather than in a worker (nothing is imported)."""
    from invprior import registry
    wanted = [("operators", config.problem.operator.name), ("datasets", config.problem.image.name),
              ("methods", config.method.name)] + ([("posteriors", config.posterior.name)] if config.posterior else [])
    for kind, name in wanted:
        try:
            registry.require(kind, name)
        except KeyError as exc:
            raise ConfigError(exc.args[0]) from None


def load_suite(path: str | Path) -> tuple[str, list[Run]]:
    """``(name, runs)`` of the suite file ``path``."""
    path = Path(path)
    suite = read_toml(path, "suite")
    return str(suite.get("name", path.stem)), expand_suite(suite, where=path.name)
