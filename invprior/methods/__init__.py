"""Reconstruction methods: classical baselines and Deep Image Prior."""

from invprior.core.interfaces import Method
from invprior.methods.classical import FBP, PseudoInverse, Tikhonov, TVLeastSquares
from invprior.methods.dip import DIP

__all__ = ["Method", "PseudoInverse", "FBP", "Tikhonov", "TVLeastSquares", "DIP"]
