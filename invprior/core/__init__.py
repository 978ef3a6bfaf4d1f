"""Interfaces and containers shared by every part of invprior."""

from invprior.core.interfaces import (
    Generator,
    IterationState,
    Method,
    PosteriorApproximation,
    Regularizer,
    StoppingRule,
)
from invprior.core.noise import GaussianNoise
from invprior.core.operator import ForwardOperator, adjoint_mismatch, check_batch, linear_apply
from invprior.core.problem import InverseProblem
from invprior.core.reconstruction import FittedNetwork, Reconstruction

__all__ = [
    "ForwardOperator", "Generator", "Regularizer", "StoppingRule", "PosteriorApproximation", "Method",
    "IterationState", "InverseProblem", "Reconstruction", "FittedNetwork", "GaussianNoise",
    "adjoint_mismatch", "check_batch", "linear_apply",
]
