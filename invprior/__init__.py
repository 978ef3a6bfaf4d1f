"""invprior: untrained neural networks for ill-posed inverse problems, with calibrated error bars.

The public API is what this module exports; components are reached by name through
``invprior.registry`` or imported from their subpackages.
"""

from invprior import registry
from invprior.core import (
    ForwardOperator,
    GaussianNoise,
    Generator,
    InverseProblem,
    Method,
    PosteriorApproximation,
    Reconstruction,
    Regularizer,
    StoppingRule,
)

__version__ = "0.1.0"

__all__ = [
    "ForwardOperator", "Generator", "Regularizer", "StoppingRule", "PosteriorApproximation", "Method",
    "InverseProblem", "Reconstruction", "GaussianNoise", "registry", "__version__",
]
