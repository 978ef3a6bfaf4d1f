"""Checks for user-supplied parameters; each failure is a ConfigError that names the parameter."""

from __future__ import annotations

import math
import os
import tempfile
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch

from invprior.errors import ConfigError

#: Floating-point precisions by the names configurations and the command line use.
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def available_devices() -> str:
    """The devices this machine offers torch, e.g. ``"cpu, cuda:0, cuda:1"``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        names.append("mps")
    return ", ".join(names)


def torch_device(name: str) -> torch.device:
    """The device a run uses: ``"auto"`` is the first CUDA GPU when torch sees one, else the CPU; any other
    name (``cpu``, ``cuda``, ``cuda:1``, ``mps``) must name hardware this machine has. Refusals list the
    devices there are."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    here = f"this machine has: {available_devices()}"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device: unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps ({here})") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"device {name!r}: torch sees no CUDA GPU on this machine ({here}); use cpu or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"device {name!r}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1} "
                              f"({here})")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r}: MPS is not available on this machine ({here}); use cpu or auto")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r}: invprior runs on cpu, cuda or mps, not {device.type} ({here})")
    return device


def output_folder(path: str | Path, option: str = "--out") -> Path:
    """``path`` if results can be written there: a folder (or one that can be created) in which a file can be
    made; refused with a ConfigError naming ``option`` otherwise. Nothing is left behind: a missing folder is
    not created, and the file written to test the nearest existing folder is removed."""
    path = Path(path)
    existing = path
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "exists and" if existing == path else f"cannot be created: {existing}"
        raise ConfigError(f"{option} {path}: {where} is not a folder; give a folder for the results")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".invprior-write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot write in {existing} ({exc.strerror or exc}); "
                          "give a folder you can write to") from None
    return path


def torch_dtype(name: str, device: torch.device) -> torch.dtype:
    """The floating-point precision ``name`` (a key of ``DTYPES``), refused where ``device`` lacks it
    (MPS has no float64)."""
    dtype = DTYPES[choice(name, DTYPES, "dtype")]
    if device.type == "mps" and dtype == torch.float64:
        raise ConfigError(f"dtype {name!r}: MPS has no float64; use float32 or the cpu device")
    return dtype


def positive_int(value: Any, name: str) -> int:
    """An integer >= 1 (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def nonnegative_int(value: Any, name: str) -> int:
    """An integer >= 0 (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 0:
        raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def real(value: Any, name: str, minimum: float = -math.inf, strict: bool = False) -> float:
    """A finite real number >= ``minimum`` (> when ``strict``); booleans and strings refused."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if value < minimum or (strict and value == minimum):
        raise ConfigError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return value


def fraction(value: Any, name: str, allow_zero: bool = False) -> float:
    """A number in (0, 1], or [0, 1] when ``allow_zero``."""
    value = real(value, name)
    if not ((0.0 <= value if allow_zero else 0.0 < value) and value <= 1.0):
        raise ConfigError(f"{name} must lie in {'[0, 1]' if allow_zero else '(0, 1]'}, got {value!r}")
    return value


def number_pair(value: Any, name: str, meaning: str) -> tuple[float, float]:
    """Two finite numbers, e.g. a range; ``meaning`` says what they are in the error (e.g. ``"(start, stop)"``)."""
    try:
        first, second = (real(v, name) for v in value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{name} must be a pair {meaning}, got {value!r}") from None
    return first, second


def choice(value: Any, options: tuple | list | dict, name: str) -> Any:
    """``value`` if it is one of ``options`` (a dict's keys), else a ConfigError listing them."""
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")
    return value
