"""Atomic result files: written to a temporary file in the same folder, then renamed; and an
exclusive lock for processes that would produce the same file."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: no advisory locks
    fcntl = None  # type: ignore[assignment]


def _new_file(folder: Path, name: str) -> tuple[int, Path]:
    """A new, empty file ``.name.<random>.tmp`` in ``folder``, opened for writing, with the permissions a plain
    ``open`` would give it (``0o666`` less the process's umask; ``tempfile.mkstemp`` would give ``0o600``)."""
    for _ in range(100):
        tmp = folder / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name} in {folder}")


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(file)`` on a temporary file and rename it to ``path``; no partial file is ever left. The
    file gets the permissions the umask allows (``0o644`` under the usual ``022``), as with ``open``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_file(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (POSIX ``flock``) on ``path`` + ``.lock`` for the block, so that
    processes (or threads) about to produce the same file take turns; a no-op where ``flock`` is missing."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if fcntl is not None:
                fcntl.flock(handle, fcntl.LOCK_UN)


def content_hash(data: Any, digits: int = 16) -> str:
    """The first ``digits`` hex digits of the SHA-256 of ``data`` in canonical JSON (sorted keys; other
    objects by ``str``): equal for equal content, whatever the key order."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:digits]


def _strict(value: Any) -> Any:
    """``value`` with non-finite floats replaced by None (strict JSON has no NaN or Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write ``data`` as indented, strict JSON (non-finite numbers become null)."""
    text = json.dumps(_strict(data), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text.encode()))


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """Atomically write a compressed ``.npz`` archive."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]  # numpy stubs match **arrays to allow_pickle: bool
    return atomic_write(path, lambda f: f.write(buffer.getvalue()))
