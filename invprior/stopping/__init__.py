"""Stopping rules for iterative fits: fixed budget, discrepancy principle, ES-WMV, patience."""
