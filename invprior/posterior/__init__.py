"""Uncertainty around a fitted reconstruction: linearised Laplace (lin-DIP) and its building blocks."""
