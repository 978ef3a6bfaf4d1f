"""Bayesian experimental design: choose the next measurements by their expected information gain under a fitted
posterior (lin-DIP), against equidistant and random designs (``run_design``)."""

from invprior.design.gain import GaussianFactor, GreedyChoice, greedy_batch, information_gains, whitened_projections
from invprior.design.loop import STRATEGIES, DesignResult, DesignSettings, DesignStep, run_design
from invprior.design.pool import CandidatePool, equidistant

__all__ = ["STRATEGIES", "CandidatePool", "DesignResult", "DesignSettings", "DesignStep", "GaussianFactor",
           "GreedyChoice", "equidistant", "greedy_batch", "information_gains", "run_design", "whitened_projections"]
