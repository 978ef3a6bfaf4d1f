"""Stopping rules for iterative fits: fixed budget, discrepancy principle, ES-WMV, patience."""

from invprior.stopping.rules import ESWMV, DiscrepancyPrinciple, FixedBudget, Patience

__all__ = ["FixedBudget", "DiscrepancyPrinciple", "ESWMV", "Patience"]
