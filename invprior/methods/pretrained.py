"""Pretrained-model files: weights plus what they were trained for, refused for any other problem.

A file holds the generator (registry name, parameters, weights) and the metadata of its training set
(:attr:`SyntheticPairs.metadata <invprior.data.synthetic.SyntheticPairs.metadata>`: operator and
geometry, image shape, noise model, input map) with the training history. :func:`check_compatible`
compares that with a problem before a fine-tuning run uses the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from invprior import registry
from invprior.core.interfaces import Generator
from invprior.core.problem import InverseProblem
from invprior.errors import ConfigError
from invprior.io import atomic_write

FORMAT = "invprior-pretrained/1"


@dataclass
class Pretrained:
    """A pretrained generator and its provenance (``metadata``: training set, settings, history)."""

    generator: Generator
    generator_name: str
    generator_params: dict[str, Any]
    metadata: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the model atomically (a crash never leaves a truncated file)."""
        state = {k: v.detach().cpu() for k, v in self.generator.state_dict().items()}
        payload = {"format": FORMAT, "generator": {"name": self.generator_name, "params": self.generator_params,
                                                   "state": state},
                   "metadata": self.metadata, "history": self.history}
        return atomic_write(path, lambda f: torch.save(payload, f))


def load_pretrained(path: str | Path) -> Pretrained:
    """Read a file written by :meth:`Pretrained.save` (the generator is rebuilt from the registry)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pretrained model {path} does not exist (pretrain first: invprior.methods.pretrain)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a foreign or damaged file
        raise ConfigError(f"pretrained model {path} cannot be read: {exc}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an invprior pretrained model (expected format {FORMAT!r})")
    spec = payload["generator"]
    generator = registry.get("generators", spec["name"], **spec["params"])
    generator.load_state_dict(spec["state"])
    return Pretrained(generator, spec["name"], dict(spec["params"]), payload["metadata"], payload["history"])


def problem_noise_level(problem: InverseProblem) -> float | None:
    """The relative noise level ``s / mean|y|`` of the first image (``None`` without ``noise_std``)."""
    if problem.noise_std is None:
        return None
    scale = float(problem.y[0].abs().mean())
    return float(problem.noise_std[0]) / scale if scale > 0 else None


def check_compatible(pretrained: Pretrained, problem: InverseProblem, noise_tolerance: float = 2.0) -> None:
    """Refuse weights trained for another operator, geometry, image size or noise level.

    The operator must match exactly (its ``repr`` names class, grid size and geometry); the problem's
    relative noise level ``s / mean|y|`` must lie within a factor ``noise_tolerance`` of the training one
    (checked when both are known: ``std``-specified training noise is compared as ``s`` directly).
    """
    meta = pretrained.metadata
    operator = problem.operator
    problems = []
    if list(operator.domain_shape) != list(meta["domain_shape"]):
        problems.append(f"image shape {tuple(meta['domain_shape'])} (this problem: {operator.domain_shape})")
    if repr(operator) != meta["operator"]:
        problems.append(f"operator {meta['operator']} (this problem: {operator!r})")
    noise = meta["noise"]
    level = problem_noise_level(problem)
    if level is not None:
        trained, actual, what = ((noise["relative"], level, "relative noise level") if noise["relative"] is not None
                                 else (noise["std"], float(problem.noise_std[0]), "noise std"))
        if trained > 0 and actual > 0 and not 1 / noise_tolerance <= actual / trained <= noise_tolerance:
            problems.append(f"{what} {trained:.3g} (this problem: {actual:.3g}, tolerance x{noise_tolerance:g})")
        elif (trained == 0) != (actual == 0):
            problems.append(f"{what} {trained:.3g} (this problem: {actual:.3g})")
    if problems:
        raise ConfigError("the pretrained model was trained for " + "; ".join(problems)
                          + ". Pretrain for this problem (or pass a matching model)")
