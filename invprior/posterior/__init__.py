"""Uncertainty around a fitted reconstruction: linearised Laplace (lin-DIP) and its building blocks."""

from invprior.posterior.ensemble import DeepEnsemble
from invprior.posterior.laplace_mixture import LaplaceMixture
from invprior.posterior.lin_dip_options import EvidenceOptions, PriorOptions, SamplingOptions, SolverOptions
from invprior.posterior.linearized_laplace import LinearizedLaplace
from invprior.posterior.mc_dropout import MCDropout

__all__ = ["LinearizedLaplace", "SolverOptions", "PriorOptions", "EvidenceOptions", "SamplingOptions", "MCDropout",
           "DeepEnsemble", "LaplaceMixture"]
