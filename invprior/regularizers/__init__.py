"""Regularizers R(x)."""
