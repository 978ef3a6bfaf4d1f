"""Current-injection and measurement protocols as matrices.

Currents are an ``(L, P)`` matrix: column ``p`` holds the current into every electrode for pattern
``p`` (columns sum to zero). Measurements are an ``(M, L)`` matrix: row ``m`` is the combination of
electrode potentials read out (e.g. ``U_m - U_{m+1}``). Named protocols: ``"adjacent"`` (pairs of
neighbours), ``"opposite"`` (currents only: electrode ``l`` against ``l + L/2``) and
``"potentials"`` (measurements only: every electrode potential against the grounding
``sum_l U_l = 0``). Custom protocols are arrays (numpy or torch) or lists of ``(plus, minus)``
electrode pairs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from invprior.errors import ConfigError

__all__ = ["current_patterns", "measurement_patterns"]

CURRENTS = ("adjacent", "opposite")
MEASUREMENTS = ("adjacent", "potentials")


def _pairs(pairs: Any, electrodes: int, what: str) -> np.ndarray:
    """Rows ``e_plus - e_minus`` (K, L) from ``(plus, minus)`` pairs."""
    rows = []
    for k, pair in enumerate(pairs):
        try:
            plus, minus = (int(v) for v in pair)
        except (TypeError, ValueError):
            raise ConfigError(f"EIT {what}: entry {k} must be a (plus, minus) electrode pair, got {pair!r}") from None
        for v in (plus, minus):
            if not 0 <= v < electrodes:
                raise ConfigError(f"EIT {what}: pair {k} refers to electrode {v}, but the mesh has electrodes "
                                  f"0..{electrodes - 1}")
        if plus == minus:
            raise ConfigError(f"EIT {what}: pair {k} uses electrode {plus} twice")
        row = np.zeros(electrodes)
        row[plus], row[minus] = 1.0, -1.0
        rows.append(row)
    if not rows:
        raise ConfigError(f"EIT {what}: no patterns given")
    return np.stack(rows)


def _matrix(value: Any, what: str) -> np.ndarray | None:
    """``value`` as a float matrix when it is an array (numpy or torch), else ``None`` (a list of pairs)."""
    if not hasattr(value, "shape"):
        return None
    matrix = np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=np.float64)
    if matrix.ndim != 2:
        raise ConfigError(f"EIT {what}: a pattern matrix must be 2-D, got shape {matrix.shape}")
    return matrix


def current_patterns(protocol: Any, electrodes: int, amplitude: float = 1.0) -> np.ndarray:
    """The ``(L, P)`` current matrix of a named protocol, a list of (source, sink) pairs
    (``amplitude`` in, ``amplitude`` out) or an explicit ``(L, P)`` matrix (columns summing to zero)."""
    if isinstance(protocol, str):
        if protocol not in CURRENTS:
            raise ConfigError(f"EIT currents: unknown protocol {protocol!r}; choose one of {CURRENTS}, a list of "
                              "(source, sink) pairs or an (L, P) matrix")
        shift = 1 if protocol == "adjacent" else electrodes // 2
        pairs = [(source, (source + shift) % electrodes) for source in range(electrodes)]
        return amplitude * _pairs(pairs, electrodes, "currents").T
    matrix = _matrix(protocol, "currents")
    if matrix is None:
        return amplitude * _pairs(protocol, electrodes, "currents").T
    if matrix.shape[0] != electrodes or not np.isfinite(matrix).all():
        raise ConfigError(f"EIT currents: a current matrix must be finite with shape (L={electrodes}, P), "
                          f"got {matrix.shape}")
    imbalance = np.abs(matrix.sum(axis=0))
    if (imbalance > 1e-9 * np.abs(matrix).max(initial=1.0)).any():
        raise ConfigError(f"EIT currents: pattern {int(imbalance.argmax())} does not sum to zero "
                          f"(net current {float(matrix.sum(axis=0)[imbalance.argmax()]):.3g})")
    return matrix


def measurement_patterns(protocol: Any, electrodes: int) -> np.ndarray:
    """The ``(M, L)`` measurement matrix of a named protocol, a list of (plus, minus) pairs or a matrix."""
    if isinstance(protocol, str):
        if protocol not in MEASUREMENTS:
            raise ConfigError(f"EIT measurements: unknown protocol {protocol!r}; choose one of {MEASUREMENTS}, "
                              "a list of (plus, minus) pairs or an (M, L) matrix")
        if protocol == "potentials":
            return np.eye(electrodes)
        return _pairs([(plus, (plus + 1) % electrodes) for plus in range(electrodes)], electrodes, "measurements")
    matrix = _matrix(protocol, "measurements")
    if matrix is None:
        return _pairs(protocol, electrodes, "measurements")
    if matrix.shape[1] != electrodes or not np.isfinite(matrix).all():
        raise ConfigError(f"EIT measurements: a measurement matrix must be finite with shape (M, L={electrodes}), "
                          f"got {matrix.shape}")
    return matrix
