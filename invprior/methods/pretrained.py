"""Pretrained-model files: weights plus what they were trained for, refused for any other problem.

A file holds the generator (registry name, parameters, weights) and the metadata of its training set
(``SyntheticPairs.metadata <invprior.data.synthetic.SyntheticPairs.metadata>``: operator and
geometry, image shape, noise model, input map), the operator's signature and the training history. ``check_compatible``
compares that with a problem before a fine-tuning run uses the weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from invprior import registry
from invprior.core.interfaces import Generator
from invprior.core.problem import InverseProblem
from invprior.data.synthetic import operator_signature
from invprior.errors import ConfigError, StateFileError
from invprior.io import load_torch_state, save_torch_state

FORMAT = "invprior-pretrained/1"
#: What to do with a model file that cannot be used.
REMEDY = "Delete it and pretrain again (EDIP with 'pretrain' settings writes a new one)"


@dataclass
class Pretrained:
    """A pretrained generator and its provenance (``metadata``: training set, settings, history)."""

    generator: Generator
    generator_name: str
    generator_params: dict[str, Any]
    metadata: dict[str, Any]
    history: dict[str, list[float]] = field(default_factory=dict)

    def save(self, path: str | Path) -> Path:
        """Write the model atomically (a crash never leaves a truncated file) in a checksummed state file."""
        state = {k: v.detach().cpu() for k, v in self.generator.state_dict().items()}
        payload = {"format": FORMAT, "generator": {"name": self.generator_name, "params": self.generator_params,
                                                   "state": state},
                   "metadata": self.metadata, "history": self.history}
        return save_torch_state(path, "pretrained_model", payload)


def load_pretrained(path: str | Path) -> Pretrained:
    """Read a file written by ``Pretrained.save`` once its checksum is verified (the generator is rebuilt from
    the registry, in eval mode; only tensors and plain containers are unpickled). An empty, truncated, damaged
    or foreign file, or one in another model format, is refused with ``StateFileError``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pretrained model {path} does not exist (pretrain first: invprior.methods.pretrain)")
    payload = load_torch_state(path, "pretrained_model", REMEDY)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else None
        raise StateFileError(f"{path}: pretrained model in format {found!r}, this version reads {FORMAT!r}; "
                             f"it is not used. {REMEDY}")
    spec = payload["generator"]
    try:
        generator = registry.get("generators", spec["name"], **spec["params"])
        generator.load_state_dict(spec["state"])
    except (KeyError, ImportError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"pretrained model {path}: cannot rebuild generator '{spec['name']}': {exc}") from None
    return Pretrained(generator.eval(), spec["name"], dict(spec["params"]), payload["metadata"], payload["history"])


def problem_noise_level(problem: InverseProblem) -> tuple[float, float] | None:
    """``(s, s / mean|A x|)`` for the first image: the noise std and the relative level. From the noise
    model the problem was simulated with when it says, else from ``noise_std`` (or ``noise_norm / sqrt(m)``)
    over ``mean|y|``; ``None`` when the problem carries no noise level."""
    if isinstance(problem.noise_std, Tensor):  # None, or a per-image tensor after __post_init__
        std = float(problem.noise_std[0])
    elif isinstance(problem.noise_norm, Tensor):
        std = float(problem.noise_norm[0]) / problem.y[0].numel() ** 0.5
    else:
        return None
    recorded = problem.metadata.get("noise", {}).get("relative")
    if recorded is not None:
        return std, float(recorded)
    scale = float(problem.y[0].abs().mean())
    return std, (std / scale if scale > 0 else float("inf"))


def _relative_difference(a: Tensor, b: Tensor) -> float:
    a, b = a.double().flatten().cpu(), b.double().flatten().cpu()
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def check_compatible(pretrained: Pretrained, problem: InverseProblem, noise_tolerance: float = 2.0) -> None:
    """Refuse weights trained for another operator, geometry, input map, image size or noise level.

    The operator is compared by what it does (``operator_signature``: its
    action on a fixed phantom and the input map's, to 1e-3 relative), so a different geometry, seed,
    mask or FBP filter is refused while another backend of the same operator is accepted. The noise
    level (relative, or the std when the model was trained with an absolute std) must lie within a
    factor ``noise_tolerance >= 1`` of the training one, for every image of the problem.
    """
    noise_tolerance = float(noise_tolerance)
    if not noise_tolerance >= 1:
        raise ConfigError(f"check_compatible: noise_tolerance must be >= 1, got {noise_tolerance}")
    meta = pretrained.metadata
    operator = problem.operator
    problems = []
    if list(operator.domain_shape) != list(meta["domain_shape"]):
        problems.append(f"image shape {tuple(meta['domain_shape'])} (this problem: {operator.domain_shape})")
    elif "signature" not in meta:
        problems.append("an operator it does not record (a file without an operator signature; pretrain again)")
    else:
        signature = operator_signature(operator, meta["input"])
        if _relative_difference(signature["forward"], meta["signature"]["forward"]) > 1e-3:
            problems.append(f"operator {meta['operator']} (this problem: {operator!r})")
        elif _relative_difference(signature["input"], meta["signature"]["input"]) > 1e-3:
            problems.append(f"another network input map '{meta['input']}' (e.g. another FBP filter)")
    noise = meta["noise"]
    for index in range(problem.batch_size):
        level = problem_noise_level(problem.select(index))
        if level is None:
            continue
        trained, actual, what = ((noise["relative"], level[1], "relative noise level") if noise["relative"] is not None
                                 else (noise["std"], level[0], "noise std"))
        if trained == 0 or actual == 0:
            mismatch = (trained == 0) != (actual == 0)
        else:
            mismatch = not 1 / noise_tolerance <= actual / trained <= noise_tolerance
        if mismatch:
            problems.append(f"{what} {trained:.3g} (this problem: {actual:.3g} in image {index}, "
                            f"tolerance x{noise_tolerance:g})")
            break
    if problems:
        raise ConfigError("the pretrained model was trained for " + "; ".join(problems)
                          + ". Pretrain for this problem (or pass a matching model)")
