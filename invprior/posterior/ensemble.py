"""Deep ensemble of DIP runs: the predictive from independently initialised fits of the same problem.

``x_k = DIP_{seed + k * seed_offset}(y)``, ``k = 0..K-1`` (``x_0`` the given reconstruction); mean and pixel-wise
std are the member moments.
"""

from __future__ import annotations

import time

import torch
from torch import Tensor
from tqdm.auto import tqdm

from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import Reconstruction
from invprior.errors import ConfigError, ShapeError
from invprior.methods.dip import DIP
from invprior.posterior.sample_predictive import SamplePredictive
from invprior.validation import positive_int


class DeepEnsemble(SamplePredictive):
    """Predictive moments from ``members`` DIP fits that differ only in their seed.

    Member 0 is the reconstruction given to ``fit``; members ``k = 1..members-1`` are fresh fits
    of the same problem by a copy of its DIP with ``seed = dip.seed + seed_offset * k`` (new network
    weights, input and input noise) and no checkpoint, so the original's checkpoint files are never
    read or overwritten. ``sample`` returns the member images, ``log_likelihood`` uses
    independent Gaussians per pixel with the member moments and ``covariance`` is their sample
    covariance (plus ``1e-10`` times its mean variance on the diagonal). ``fits`` keeps the member
    reconstructions (for ``LaplaceMixture.fit_around``) and ``wall_time`` the seconds ``fit`` took (the
    ``members - 1`` new fits).
    """

    _drawn, _more = "members were fitted", "members"

    def __init__(self, members: int = 5, seed_offset: int = 1000, progress: bool = True) -> None:
        self.members = positive_int(members, "DeepEnsemble: members")
        if self.members < 2:
            raise ConfigError(f"{type(self).__name__}: "
                              f"members must be >= 2 (one member has no spread), got {members!r}")
        self.seed_offset = positive_int(seed_offset, "DeepEnsemble: seed_offset")
        self.progress = bool(progress)
        self.wall_time = 0.0
        self.fits: list[Reconstruction] = []
        self._samples: Tensor | None = None

    def _member(self, method: DIP, k: int) -> DIP:
        """A copy of ``method`` with seed ``method.seed + seed_offset * k``; the original is left as it is."""
        member = method.reseeded(method.seed + self.seed_offset * k)
        member.checkpoint, member.resume = None, False
        return member

    def fit_members(self, reconstruction: Reconstruction, problem: InverseProblem,
                    owner: str = "DeepEnsemble") -> list[Reconstruction]:
        """``reconstruction`` and the ``members - 1`` new DIP fits (in ``owner``'s name in errors)."""
        method = reconstruction.fitted_by
        if not isinstance(method, DIP):
            raise ConfigError(f"{owner}: the ensemble needs a DIP reconstruction (one whose fitted_by is the DIP "
                              f"that fitted it), got one from method {reconstruction.method!r}")
        fits = [reconstruction]
        with tqdm(total=self.members, initial=1, desc=owner, disable=not self.progress, leave=False) as bar:
            for k in range(1, self.members):
                fit = self._member(method, k).reconstruct(problem, progress=False)
                if fit.image.shape != reconstruction.image.shape:
                    raise ShapeError(f"{owner}: member {k} has shape {tuple(fit.image.shape)}, but the given "
                                     f"reconstruction {tuple(reconstruction.image.shape)}; fit on the problem it was "
                                     "made from")
                fits.append(fit)
                bar.update(1)
        return fits

    def fit(self, reconstruction: Reconstruction, problem: InverseProblem) -> DeepEnsemble:
        start = time.perf_counter()
        self.fits = self.fit_members(reconstruction, problem)
        images = [fit.image.detach() for fit in self.fits]
        self._samples = torch.stack([image.to(images[0]) for image in images])
        self.wall_time = time.perf_counter() - start
        return self
