"""Synthetic training pairs for pretraining (EDIP): random ellipses pushed through the real operator.

Pair ``i`` is ``(A^+ y_i, x_i)`` with ``x_i`` a random-ellipse phantom, ``y_i = A x_i + eta_i`` under the
target noise model and ``A^+`` the network-input map (FBP for CT, pseudo-inverse, or scaled adjoint).
Everything is drawn from ``(seed, i)``, so a pair is the same whenever and in whatever batch it is made:
no files are needed, and ``SyntheticPairs.cache`` can keep a generated set on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from invprior.core.noise import GaussianNoise
from invprior.core.operator import ForwardOperator
from invprior.core.problem import InverseProblem
from invprior.data.phantoms import random_ellipse_parameters, rasterize_ellipses
from invprior.errors import ConfigError
from invprior.generators.inputs import check_input_kind, operator_image
from invprior.io import load_torch_state, save_torch_state
from invprior.validation import number_pair, positive_int

PHANTOM, NOISE = 0, 1  # random streams of an item


def pair_seed(seed: int, index: int, stream: int) -> int:
    """An independent 63-bit seed for ``stream`` (phantom or noise) of item ``index`` of the set ``seed``."""
    state = np.random.SeedSequence([int(seed), int(index), int(stream)]).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


SIGNATURE_SEED = 7_919


def operator_signature(operator: ForwardOperator, input: str) -> dict[str, Tensor]:
    """What an operator and its input map do to a fixed ellipse phantom: ``A x_0`` and ``A^+ A x_0``
    (float64). Two operators with equal signatures act alike for pretraining, whatever their
    implementation or backend; a different seed, mask, geometry or filter changes it."""
    size, channels = operator.domain_shape[-1], operator.domain_shape[0]
    objects = random_ellipse_parameters(1, SIGNATURE_SEED)[0]
    probe = rasterize_ellipses(objects, size).expand(1, channels, size, size).double()
    with torch.no_grad():
        forward = operator(probe)
        return {"forward": forward.flatten(),
                "input": operator_image(InverseProblem(operator, forward), input).flatten()}


class SyntheticPairs(Dataset):
    """``count`` on-the-fly pairs ``(input, target)``, each of shape ``operator.domain_shape``.

    ``noise`` is the target noise model (e.g. ``GaussianNoise(relative=0.025)``); ``input`` the network
    input (``"fbp"``/``"pseudo_inverse"`` or ``"adjoint"``); ``fine_factor > 1`` renders and projects the
    phantom on a finer grid (operators with ``on_grid``, e.g. CT) so that the pairs avoid the inverse
    crime as the real data do. ``num_ellipses``, ``intensity_range``, ``axis_range`` and ``background`` (a body
    ellipse under the others, for CT-like slices) shape the phantoms (``random_ellipse_parameters``);
    ``support`` (a boolean ``(n, n)`` mask, e.g. the problem's) zeroes them outside it, where the object
    cannot be; ``value_range`` clips the summed intensities (default ``(0, 1)``; signed images such as EIT's
    log-conductivity changes need e.g. ``(-3, 2)`` with an ``intensity_range`` of both signs).
    """

    def __init__(self, operator: ForwardOperator, count: int, noise: GaussianNoise, seed: int = 0,
                 input: str = "fbp", fine_factor: int = 1, num_ellipses: int | tuple[int, int] = (5, 12),
                 intensity_range: tuple[float, float] = (0.1, 0.6), axis_range: tuple[float, float] = (0.05, 0.4),
                 background: float | tuple[float, float] | None = None, support: Tensor | None = None,
                 value_range: tuple[float, float] = (0.0, 1.0), dtype: torch.dtype = torch.float32) -> None:
        if not isinstance(operator, ForwardOperator):
            raise ConfigError(f"{type(self).__name__}: "
                              f"operator must be a ForwardOperator, got {type(operator).__name__}")
        if not isinstance(noise, GaussianNoise):
            raise ConfigError(f"{type(self).__name__}: noise must be a GaussianNoise, got {type(noise).__name__}")
        self.input = check_input_kind(input)
        if self.input == "noise":
            raise ConfigError(f"{type(self).__name__}: "
                              f"input must be computed from the measurement (fbp, pseudo_inverse "
                              "or adjoint), not 'noise'")
        if self.input in ("fbp", "pseudo_inverse") and not operator.has_pseudo_inverse:
            raise ConfigError(f"{type(self).__name__}: input '{input}' needs an operator with a pseudo-inverse; "
                              f"{operator.name} has none (use input='adjoint')")
        if len(operator.domain_shape) != 3 or operator.domain_shape[1] != operator.domain_shape[2]:
            raise ConfigError(f"{type(self).__name__}: ellipse phantoms are square single images; {operator.name} "
                              f"expects {operator.domain_shape}")
        self.operator, self.noise, self.dtype = operator, noise, dtype
        self.count = positive_int(count, "SyntheticPairs: count")
        self.seed = int(seed)
        self.fine_factor = positive_int(fine_factor, "SyntheticPairs: fine_factor")
        self.size = operator.domain_shape[-1]
        self.channels = operator.domain_shape[0]
        self._fine = None
        if self.fine_factor > 1:
            if not hasattr(operator, "on_grid"):
                raise ConfigError(f"{type(self).__name__}: "
                                  f"fine_factor > 1 needs an operator with on_grid; {operator.name} "
                                  "has none")
            self._fine = operator.on_grid(self.size * self.fine_factor)
        self.phantom: dict[str, Any] = {"num_ellipses": num_ellipses, "intensity_range": tuple(intensity_range),
                        "axis_range": tuple(axis_range),
                        "background": tuple(background) if isinstance(background, (list, tuple)) else background}
        low, high = number_pair(value_range, "SyntheticPairs: value_range", "(low, high)")
        if not low < high:
            raise ConfigError(f"{type(self).__name__}: value_range must have low < high, got {value_range!r}")
        self.value_range = (low, high)
        lowest, highest = self.phantom["intensity_range"]
        if background is None and (lowest < low or highest > high):
            raise ConfigError(f"{type(self).__name__}: intensity_range {intensity_range!r} reaches outside value_range "
                              f"{value_range!r}, which would clip those ellipses away; widen value_range")
        random_ellipse_parameters(1, 0, **self.phantom)  # validates the ranges now, not at the first item
        if support is not None and tuple(support.shape) != (self.size, self.size):
            raise ConfigError(f"{type(self).__name__}: support must be a ({self.size}, {self.size}) mask, got "
                              f"{tuple(support.shape)}")
        self.support = None if support is None else support.detach().cpu().bool()
        self._stored: tuple[Tensor, Tensor] | None = None

    def __len__(self) -> int:
        return self.count

    @property
    def metadata(self) -> dict[str, Any]:
        """What identifies this set (and a model pretrained on it)."""
        return {"operator": repr(self.operator), "operator_name": self.operator.name,
                "domain_shape": list(self.operator.domain_shape), "noise": {"std": self.noise.std,
                                                                             "relative": self.noise.relative},
                "input": self.input, "fine_factor": self.fine_factor, "count": self.count, "seed": self.seed,
                "support": None if self.support is None else int(self.support.sum()),
                "value_range": list(self.value_range),
                "dtype": str(self.dtype).removeprefix("torch."),
                "phantom": {k: list(v) if isinstance(v, tuple) else v for k, v in self.phantom.items()}}

    def targets(self, indices: list[int]) -> Tensor:
        """The phantoms ``x_i`` (reconstruction grid), ``(b, *domain_shape)``."""
        return torch.stack([self._phantom(i, self.size) for i in indices]).to(self.dtype)

    def _phantom(self, index: int, size: int) -> Tensor:
        objects = random_ellipse_parameters(1, pair_seed(self.seed, index, PHANTOM), **self.phantom)[0]
        image = rasterize_ellipses(objects, size, value_range=self.value_range)
        if self.support is not None:
            mask = self.support if size == self.size else self.support.repeat_interleave(
                size // self.size, 0).repeat_interleave(size // self.size, 1)
            image = image * mask
        return image.unsqueeze(0).expand(self.channels, size, size)

    def batch(self, indices: list[int] | range) -> tuple[Tensor, Tensor]:
        """``(inputs, targets)`` of the items ``indices``, each ``(b, *domain_shape)``."""
        indices = [int(i) for i in indices]
        bad = [i for i in indices if not 0 <= i < self.count]
        if bad:
            raise IndexError(f"{type(self).__name__}: indices {bad[:5]} out of range for {self.count} pairs")
        if self._stored is not None:
            inputs, targets = self._stored
            return inputs[indices], targets[indices]
        y, targets = self.measurements(indices)
        inputs = operator_image(InverseProblem(self.operator, y), self.input)
        return inputs.to(self.dtype), targets

    @torch.no_grad()
    def measurements(self, indices: list[int] | range) -> tuple[Tensor, Tensor]:
        """``(y, targets)``: the noisy measurements ``y_i = A x_i + eta_i`` and the phantoms ``x_i``."""
        indices = [int(i) for i in indices]
        if self._fine is None:
            targets = self.targets(indices)
            clean = self.operator(targets)
        else:
            fine = torch.stack([self._phantom(i, self.size * self.fine_factor) for i in indices]).to(self.dtype)
            clean = self._fine(fine)
            targets = F.avg_pool2d(fine, self.fine_factor)
        etas = [self.noise.sample(clean[k:k + 1], pair_seed(self.seed, i, NOISE))[0] for k, i in enumerate(indices)]
        return clean + torch.cat(etas), targets

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        inputs, targets = self.batch([index])
        return inputs[0], targets[0]

    def cache_in_memory(self, batch_size: int = 64) -> SyntheticPairs:
        """Generate every pair once (in batches of ``batch_size``) and serve them from memory. Returns ``self``."""
        if self._stored is None:
            parts = [self.batch(range(start, min(start + batch_size, self.count)))
                     for start in range(0, self.count, batch_size)]
            self._stored = (torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
        return self

    def cache(self, path: str | Path, batch_size: int = 64) -> SyntheticPairs:
        """Serve the pairs from the file ``path``: load it when it holds this very set, else generate all
        pairs and write them there atomically, in a checksummed state file. An empty, truncated, damaged or
        foreign file is refused (``StateFileError``). Returns ``self``."""
        path = Path(path)
        if path.exists():
            payload = load_torch_state(path, "synthetic_pairs", "Delete it (the pairs are generated again) or "
                                       "choose another path")
            if payload.get("metadata") != self.metadata:
                raise ConfigError(f"{type(self).__name__}: cache {path} holds another set ({payload.get('metadata')}); "
                                  "delete it or choose another path")
            self._stored = (payload["inputs"], payload["targets"])
            return self
        self.cache_in_memory(batch_size)
        assert self._stored is not None  # filled by cache_in_memory
        inputs, targets = self._stored
        save_torch_state(path, "synthetic_pairs", {"metadata": self.metadata, "inputs": inputs, "targets": targets})
        return self
