"""Peer implementations as registered methods, so benchmark suites can compare against them.

``deepinv_dip`` is deepinv's ``DeepImagePrior`` (its ``ConvDecoder``, Adam on the data fit
``||A G(z) - y||^2`` for a fixed number of iterations, no regulariser, no stopping rule) on the
problem's operator through ``invprior.operators.adapters.deepinv.to_deepinv`` (in float32, deepinv's
dtype for ``z``).
"""

from __future__ import annotations

import time

import torch
from torch import nn

from invprior._optional import require
from invprior.core.interfaces import Method
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.methods.base import seeded_global_rng
from invprior.operators.adapters.deepinv import to_deepinv
from invprior.validation import positive_int, real


class DeepinvDIP(Method):
    """deepinv's Deep Image Prior: ``x = G(z)`` with deepinv's ``ConvDecoder`` (``layers`` layers,
    ``channels`` channels, a ``in_size`` input), fitted by Adam (``lr``) for ``iterations`` steps.

    deepinv draws the network weights and ``z`` from torch's global RNG; they are drawn inside
    ``seeded_global_rng`` with ``seed + b`` for image ``b``, so runs are reproducible and the caller's RNG
    state is untouched. Needs the ``deepinv`` extra and a linear or nonlinear operator on images.
    """

    name = "deepinv_dip"

    def __init__(self, iterations: int = 2500, channels: int = 256, layers: int = 7, in_size: tuple[int, int] = (4, 4),
                 lr: float = 1e-2, seed: int = 0) -> None:
        self.iterations = positive_int(iterations, "deepinv_dip: iterations")
        self.channels = positive_int(channels, "deepinv_dip: channels")
        self.layers = positive_int(layers, "deepinv_dip: layers")
        self.in_size = tuple(positive_int(s, "deepinv_dip: in_size") for s in in_size)
        self.lr = real(lr, "deepinv_dip: lr", minimum=0.0, strict=True)
        self.seed = int(seed)

    def network(self, problem: InverseProblem) -> nn.Module:
        """deepinv's ``ConvDecoder`` for the problem's image shape on the data's device, in float32 like
        deepinv's input ``z`` (drawn from the global RNG: call inside ``seeded_global_rng``)."""
        dinv = require("deepinv", "deepinv", "deepinv_dip")
        net = dinv.models.ConvDecoder(img_size=tuple(problem.operator.domain_shape), in_size=self.in_size,
                                      layers=self.layers, channels=self.channels)
        return net.to(device=problem.y.device)

    def reconstruct(self, problem: InverseProblem, progress: bool = True) -> Reconstruction:
        dinv = require("deepinv", "deepinv", "deepinv_dip")
        start = time.perf_counter()
        physics = to_deepinv(problem.operator)
        images = []
        for b in range(problem.batch_size):
            with seeded_global_rng(self.seed + b, problem.y.device):
                model = dinv.models.DeepImagePrior(self.network(problem), img_size=(self.channels, *self.in_size),
                                                   iterations=self.iterations, learning_rate=self.lr,
                                                   verbose=progress)
                images.append(model(problem.y[b:b + 1].float(), physics).detach().to(problem.y.dtype))
        params = {"iterations": self.iterations, "channels": self.channels, "layers": self.layers,
                  "in_size": list(self.in_size), "lr": self.lr, "seed": self.seed}
        return Reconstruction(image=torch.cat(images), method=self.name, params=params, iterations=self.iterations,
                              stop_reason=f"fixed budget of {self.iterations} iterations (deepinv)",
                              wall_time=time.perf_counter() - start)
