"""invprior: untrained neural networks for ill-posed inverse problems, with calibrated error bars.

The public API is what this module exports; components are reached by name through
``invprior.registry`` or imported from their subpackages. The exports load on first use, so that
``import invprior`` alone does not load torch: a script may still set torch's environment (OpenMP, threads)
after it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from invprior import registry

if TYPE_CHECKING:
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

_FROM_CORE = frozenset(__all__) - {"registry", "__version__"}


def __getattr__(name: str) -> Any:
    """The exports of ``invprior.core``, imported when first asked for."""
    if name in _FROM_CORE:
        value = getattr(importlib.import_module("invprior.core"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'invprior' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _FROM_CORE)
