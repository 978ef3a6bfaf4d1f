"""Let the C heap keep freed tensor memory (glibc), instead of returning it to the OS on every free.

glibc serves large blocks (from 128 KiB, adapting upwards) with their own ``mmap`` and unmaps them on
``free``, and it trims the top of the heap once enough of it is free. A tensor allocated again after
that starts as fresh pages that the kernel faults in and zeroes one by one. lin-DIP's batched Jacobian
products allocate and free activations of about 17 MB (8 images x 32 channels x 128 x 128 floats) many
thousand times; at 128x128 on two CPU cores the page faults cost about an eighth of lin-DIP's time
(``benchmarks/uq_calibration.py --plain-allocator`` against the default, ``benchmarks/jacobian_products.py
--reuse-freed-memory`` for the products alone). ``reuse_freed_memory`` raises both
thresholds as far as glibc allows: blocks up to 32 MiB come from the heap, and the heap keeps up to
2 GiB of free memory. Resident memory then stays at its peak instead of shrinking between peaks.

This changes the whole process, so the library never calls it: the ``invprior`` command does, and so
can any script that owns its process. Setting ``MALLOC_MMAP_THRESHOLD_=33554432`` and
``MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment before Python starts has the same effect.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1        # mallopt parameters, from glibc's <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 2 ** 20   # glibc's ceiling for M_MMAP_THRESHOLD on 64-bit systems
TRIM_THRESHOLD = 2 ** 31 - 1        # mallopt takes an int


def reuse_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; ``True`` if glibc accepted both, ``False``
    where there is no glibc ``mallopt`` (macOS, Windows, musl) and nothing was changed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
