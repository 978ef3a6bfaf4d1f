"""TV-PredCP: a hyperprior on the prior lengthscales through the total variation of prior images.

For each block ``b`` with ``k x k`` filters (``k > 1``), ``kappa_b(l_b) = E TV(J_b theta_b)`` with
``theta_b ~ N(0, Sigma_b(l_b))`` is the expected TV of the images that block's prior produces; an
exponential prior on ``kappa_b`` gives ``log p(log l_b) = log rate - rate kappa_b + log |d kappa_b / d log l_b|``.
``kappa_b`` is estimated by Monte Carlo with reparameterised samples, so its gradients are exact in expectation.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from invprior.posterior.prior import MaternBlockPrior
from invprior.regularizers.tv import AnisotropicTV
from invprior.validation import positive_int, real


class TVPredCP:
    """``log p`` of the TV-PredCP hyperprior, summed over blocks, differentiable in the prior's hyperparameters.

    ``images`` maps weight vectors ``(b, P)`` to images ``J theta``, ``(b, *image)``; ``rate`` is the
    exponential rate (``1 / TV(x*)`` makes the prior expect block images as rough as the reconstruction).
    """

    def __init__(self, prior: MaternBlockPrior, images: Callable[[Tensor], Tensor], rate: float,
                 samples: int = 4, seed: int = 0) -> None:
        self.prior, self.images = prior, images
        self.rate = real(rate, "TVPredCP: rate", minimum=0.0, strict=True)
        self.samples = positive_int(samples, "TVPredCP: samples")
        self.blocks = [b for b, shape in enumerate(prior.shapes) if shape[2] > 1]
        self._generator = torch.Generator().manual_seed(seed)
        self._tv = AnisotropicTV()

    def _block_vectors(self) -> Tensor:
        """Reparameterised draws ``theta_b = L_b(l_b) eps``, zero outside block ``b``: ``(blocks * samples, P)``."""
        offsets = [0]
        for size in self.prior.sizes:
            offsets.append(offsets[-1] + size)
        rows = []
        for b in self.blocks:
            k2 = self.prior.shapes[b][2] ** 2
            factor = torch.linalg.cholesky(self.prior.covariance(b))
            size = self.prior.sizes[b]
            white = torch.randn(self.samples, size // k2, k2, generator=self._generator,
                                dtype=torch.float64).to(factor.device)
            block = (white @ factor.T).reshape(self.samples, size)
            rows.append(torch.nn.functional.pad(block, (offsets[b], offsets[-1] - offsets[b + 1])))
        return torch.cat(rows)

    def expected_tv(self) -> Tensor:
        """Monte-Carlo ``kappa_b`` for every block with a lengthscale, ``(blocks,)``."""
        images = self.images(self._block_vectors())
        return self._tv(images).view(len(self.blocks), self.samples).mean(dim=1)

    def log_density(self) -> Tensor:
        """``sum_b log rate - rate kappa_b + log |d kappa_b / d log l_b|``; zero when no block has a lengthscale."""
        if not self.blocks:
            return torch.zeros((), dtype=torch.float64)
        kappa = self.expected_tv()
        (slope,) = torch.autograd.grad(kappa.sum(), self.prior.log_lengthscale, create_graph=True)
        slope = slope[self.blocks].to(kappa)
        tiny = torch.finfo(kappa.dtype).tiny
        return (torch.log(torch.tensor(self.rate, dtype=kappa.dtype)) - self.rate * kappa
                + torch.log(slope.abs() + tiny)).sum()
