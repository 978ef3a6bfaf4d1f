"""MC dropout around a DIP fitted with dropout: the predictive from random dropout masks.

``x_s = G_{theta*, mask_s}(z)``, ``s = 1..S``; mean and pixel-wise std are the sample moments.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError
from invprior.posterior.fitted import kept_network
from invprior.posterior.sample_predictive import SamplePredictive
from invprior.validation import positive_int


class MCDropout(SamplePredictive):
    """Predictive moments from ``num_samples`` forward passes with dropout active (seeded).

    Needs a DIP whose generator has dropout, e.g. ``generator_params={"dropout": 0.05}``.
    ``log_likelihood`` uses independent Gaussians per pixel with the sample moments;
    ``covariance`` is the sample covariance (plus ``1e-10`` times its mean variance on the
    diagonal) for patch log-likelihoods on small images.
    """

    _drawn, _more = "samples were drawn in fit", "num_samples"

    def __init__(self, num_samples: int = 100, seed: int = 0) -> None:
        self.num_samples = positive_int(num_samples, "MCDropout: num_samples")
        self.seed = int(seed)
        self._samples: Tensor | None = None

    def fit(self, reconstruction: Reconstruction, problem: InverseProblem) -> MCDropout:
        network, z = kept_network(reconstruction, "MCDropout")
        if not any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in network.modules()):
            raise ConfigError(f"{type(self).__name__}: the generator has no dropout; fit the DIP with generator_params "
                              "{'dropout': 0.05}")
        network.train()
        with torch.no_grad(), torch.random.fork_rng(devices=[z.device] if z.device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            self._samples = torch.stack([network(z) for _ in range(self.num_samples)])
        return self
