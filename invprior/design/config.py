"""The configuration of ``invprior design``: a run configuration whose problem holds every candidate, plus a
``[design]`` table::

    [problem]                      # the pool: CT with 180 candidate angles over 180 degrees
    operator = "ct_parallel"
    operator_params = { num_angles = 180 }
    image = "ct_slice"
    size = 128
    noise = { relative = 0.025 }
    [method]                       # the reconstruction after each acquisition
    name = "dip"
    [posterior]                    # optional; default lin-DIP (linearized_laplace)
    name = "linearized_laplace"
    [design]
    strategies = ["lin_dip", "variance", "tikhonov", "equidistant", "random"]
    budget = 20                    # measurements in the end
    start = 5                      # equidistant ones before the first choice
    batch = 5                      # chosen per acquisition
    samples = 64                   # posterior draws when it forms no dense covariance
    warm_start = true              # each refit starts from the previous network
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from invprior.config import ComponentSpec, RunConfig, parse_config, read_toml
from invprior.design.loop import STRATEGIES, DesignSettings
from invprior.errors import ConfigError

_DESIGN = {"strategies": f"a list of {', '.join(STRATEGIES)}", "budget": "a positive int",
           "start": "a positive int", "batch": "a positive int", "samples": "an int >= 2",
           "warm_start": "true or false"}
DEFAULT_POSTERIOR = ComponentSpec("linearized_laplace")


@dataclass(frozen=True)
class DesignConfig:
    """A validated ``invprior design`` configuration: the ``run`` part (problem = the pool, method, posterior),
    the ``strategies`` to compare and the loop's ``settings``."""

    run: RunConfig
    strategies: tuple[str, ...]
    settings: DesignSettings

    @property
    def posterior(self) -> ComponentSpec:
        """The posterior of the adaptive strategies (default lin-DIP)."""
        return self.run.posterior or DEFAULT_POSTERIOR


def parse_design_config(data: dict[str, Any], base: str | Path | None = None) -> DesignConfig:
    """Validate a design configuration; errors name the key and what was expected."""
    table = data.get("design", {})
    if not isinstance(table, dict):
        raise ConfigError(f"design: expected a table [design], got {table!r}")
    for key in table:
        if key not in _DESIGN:
            raise ConfigError(f"design.{key}: unknown key; expected one of: "
                              + ", ".join(f"{k} ({v})" for k, v in _DESIGN.items()))
    strategies = table.get("strategies", ["lin_dip", "equidistant"])
    if not isinstance(strategies, list) or not strategies or any(s not in STRATEGIES for s in strategies):
        raise ConfigError(f"design.strategies: expected a non-empty {_DESIGN['strategies']}, got {strategies!r}")
    if len(set(strategies)) != len(strategies):
        raise ConfigError(f"design.strategies: a strategy is listed twice in {strategies!r}")
    for key in ("budget", "start", "batch", "samples"):
        if key in table and (not isinstance(table[key], int) or isinstance(table[key], bool)):
            raise ConfigError(f"design.{key}: expected {_DESIGN[key]}, got {table[key]!r}")
    if "warm_start" in table and not isinstance(table["warm_start"], bool):
        raise ConfigError(f"design.warm_start: expected {_DESIGN['warm_start']}, got {table['warm_start']!r}")
    run = parse_config({k: v for k, v in data.items() if k != "design"}, base)
    if run.baseline is not None:
        raise ConfigError("baseline: invprior design compares designs, not methods; remove [baseline]")
    if getattr(run.problem, "num_images", 1) != 1:
        raise ConfigError("problem.num_images: a design is made for one image; set num_images = 1")
    settings = DesignSettings(**{k: table[k] for k in ("budget", "start", "batch", "samples", "warm_start")
                                 if k in table},
                              seed=run.seed)
    return DesignConfig(run, tuple(strategies), settings)


def load_design_config(path: str | Path) -> DesignConfig:
    """Read and validate a design configuration file."""
    path = Path(path)
    return parse_design_config(read_toml(path), path.parent)
