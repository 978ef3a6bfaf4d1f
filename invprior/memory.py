"""Memory a configured problem needs, checked before anything is allocated.

The estimate is a lower bound: it counts only the arrays that building the problem certainly allocates, the
true images (also on the finer grid with ``fine_factor``), the data, and the matrices the built-in operators
store (``cs_gaussian``'s dense matrix; the CT operators' sparse system matrix and its transpose, counted at three
quarters of an entry per ray and grid column, where ASTRA stores 0.85 to 2). The methods' working memory is not
counted, so a problem that passes may still run short later; one that is refused could not have been built.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import torch

from invprior.config import MeasuredSpec, ProblemSpec
from invprior.errors import ConfigError

#: Default number of angles of the CT operators, by registry name.
_CT_ANGLES = {"ct_parallel": 30, "ct_fan": 60}
#: What to change when a part is the largest.
_HINTS = {"dense operator matrix": "a smaller size or fewer measurements (m or ratio), or cs_dct, "
                                  "which stores no matrix",
          "CT system matrices": "a smaller size or fewer angles"}


def _count(value: Any, default: int) -> int:
    """``value`` if it is a positive int, else ``default`` (a bad value is reported when the component is built)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else default


def _measurements(params: Mapping[str, Any], pixels: int) -> int:
    """The number of compressed-sensing measurements ``m`` (given, or ``ratio`` times the pixels, default 0.25)."""
    ratio = params.get("ratio", 0.25)
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not 0 < ratio <= 1:
        ratio = 0.25
    return min(_count(params.get("m"), round(ratio * pixels)), pixels)


def _data_elements(name: str, params: Mapping[str, Any], size: int) -> int:
    """Elements of one image's data for the built-in operator ``name`` on a ``size x size`` grid (0 for other
    operators: nothing is assumed about them)."""
    pixels = _count(params.get("channels"), 1) * size * size
    if name == "denoising":
        return pixels
    if name in ("cs_dct", "cs_gaussian"):
        return _measurements(params, pixels)
    if name in _CT_ANGLES:
        return _ct_angles(name, params) * _count(params.get("num_detectors"), size)
    return 0


def _ct_angles(name: str, params: Mapping[str, Any]) -> int:
    angles = params.get("angles")
    return len(angles) if isinstance(angles, (list, tuple)) else _count(params.get("num_angles"), _CT_ANGLES[name])


def _ct_entries(name: str, params: Mapping[str, Any], size: int, grid: int) -> int:
    """A lower bound on the entries of the sparse system matrix of the CT operator ``name`` set up for a
    ``size x size`` image, on a ``grid x grid`` one (a finer grid keeps the detector): ASTRA's matrix has ``c``
    entries per ray and grid column, ``c`` = 0.85 to 2 (about 0.9 for fan, 1.3 for parallel beams); 3/4 is counted,
    and ``size`` detector cells for the default detector (it has at least that many). Zero for other operators,
    the ``odl`` backend (no matrix) and a detector of another width (its rays may miss the image)."""
    if name not in _CT_ANGLES or params.get("backend", "sparse") != "sparse" or "detector_half_width" in params:
        return 0
    return 3 * _ct_angles(name, params) * _count(params.get("num_detectors"), size) * grid // 4


def problem_bytes(spec: ProblemSpec | MeasuredSpec, dtype: torch.dtype = torch.float32,
                  kept: bool = False) -> dict[str, int]:
    """A lower bound on the bytes building ``spec`` allocates, by what they hold (see the module's text); with
    ``kept``, on the bytes a device holds once a method runs: the image and data of the reconstruction grid and the
    operator's matrices in ``dtype``."""
    item = torch.finfo(dtype).bits // 8
    if isinstance(spec, MeasuredSpec):
        return {"image": spec.size * spec.size * item}
    name, params = spec.operator.name, spec.operator.params
    channels = _count(params.get("channels"), 1)
    grids = [spec.size] if spec.fine_factor == 1 or kept else [spec.size, spec.size * spec.fine_factor]
    matrix_item = item if kept else 8  # the operators store float64 and cast to the data's dtype where used
    pixels = channels * spec.size * spec.size
    parts = {"image": spec.num_images * sum(channels * grid * grid for grid in grids) * item,
             "data": spec.num_images * _data_elements(name, params, spec.size) * item,
             "dense operator matrix": _measurements(params, pixels) * pixels * matrix_item if name == "cs_gaussian"
             else 0,
             "CT system matrices": sum(_ct_entries(name, params, spec.size, grid) for grid in grids)
             * 2 * (matrix_item + 4)}  # the matrix and its transpose, a value and an int32 index per entry
    return {what: count for what, count in parts.items() if count}


def available_bytes(device: torch.device | str = "cpu") -> int | None:
    """Free memory of ``device``: for a CUDA GPU what its driver reports free, otherwise the host's available
    memory (``MemAvailable`` on Linux, else the physical memory); ``None`` where it cannot be read."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _amount(count: float) -> str:
    return f"{count / 1e9:.3g} GB" if count >= 1e8 else f"{math.ceil(count / 1e6):d} MB"


def require_memory(spec: ProblemSpec | MeasuredSpec, dtype: torch.dtype = torch.float32,
                   device: torch.device | str = "cpu") -> None:
    """Refuse ``spec`` with a one-line ConfigError when the lower bound of ``problem_bytes`` exceeds the memory
    available: the host's (where the problem is built), or a CUDA ``device``'s free memory for what it holds."""
    device = torch.device(device)
    kept = device.type == "cuda"
    parts = problem_bytes(spec, dtype, kept)
    need, have = sum(parts.values()), available_bytes(device)
    if have is None or need <= have:
        return
    keys = f"size = {spec.size}"
    if isinstance(spec, ProblemSpec):
        keys += "".join(f", {key} = {getattr(spec, key)}" for key in ("num_images", "fine_factor")
                        if getattr(spec, key) != 1)
    largest = max(parts, key=parts.__getitem__)
    listed = ", ".join(f"{what} {_amount(count)}" for what, count in sorted(parts.items(), key=lambda p: -p[1]))
    place = f"free on {device}" if kept else "of memory available"
    raise ConfigError(f"problem: {keys} needs at least {_amount(need)} ({listed}), but only {_amount(have)} "
                      f"{place}; use {_HINTS.get(largest, 'a smaller size')}")
