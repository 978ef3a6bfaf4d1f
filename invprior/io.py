"""Atomic result files: written to a temporary file in the same folder, then renamed; an exclusive lock
for processes that would produce the same file; and checksummed state files (checkpoints, models, run
records) that are verified before they are trusted."""

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
import torch

from invprior.errors import FolderInUseError, StateFileError

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


STATE_MAGIC = b"invprior-state"


def write_state(path: str | Path, kind: str, payload: bytes) -> Path:
    """Atomically write ``payload`` behind a one-line header ``invprior-state <kind> <length> <sha256>``, so
    that ``read_state`` can tell an intact file from an empty, truncated, damaged or foreign one."""
    if not kind.isidentifier():
        raise ValueError(f"state kind {kind!r} must be an identifier")
    header = b" ".join([STATE_MAGIC, kind.encode(), str(len(payload)).encode(),
                        hashlib.sha256(payload).hexdigest().encode()]) + b"\n"
    return atomic_write(path, lambda f: f.write(header + payload))


def read_state(path: str | Path, kind: str, remedy: str) -> bytes:
    """The payload of a file written by ``write_state`` with the same ``kind``, after checking its header,
    length and SHA-256; otherwise ``StateFileError`` naming the file, the fault and ``remedy``."""
    path = Path(path)
    data = path.read_bytes()
    head, newline, payload = data.partition(b"\n")
    fields = head.split(b" ")

    def refuse(fault: str) -> StateFileError:
        return StateFileError(f"{path}: {fault}; it is not used. {remedy}")

    name = kind.replace("_", " ")
    if not data:
        raise refuse(f"empty {name} file")
    if not newline or len(fields) != 4 or fields[0] != STATE_MAGIC:
        raise refuse(f"not an invprior {name} file (no invprior-state header)")
    if fields[1].decode(errors="replace") != kind:
        raise refuse(f"holds a {fields[1].decode(errors='replace').replace('_', ' ')}, not a {name}")
    if not fields[2].isdigit() or int(fields[2]) != len(payload):
        raise refuse(f"truncated or extended {name} file ({len(payload)} bytes after the header, "
                     f"{fields[2].decode(errors='replace')} written)")
    if hashlib.sha256(payload).hexdigest().encode() != fields[3]:
        raise refuse(f"damaged {name} file (SHA-256 checksum mismatch)")
    return payload


def save_torch_state(path: str | Path, kind: str, obj: Any) -> Path:
    """``torch.save(obj)`` into a checksummed state file (see ``write_state``)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return write_state(path, kind, buffer.getvalue())


def load_torch_state(path: str | Path, kind: str, remedy: str, weights_only: bool = True) -> Any:
    """The object saved by ``save_torch_state``, on the CPU, once the file has been verified."""
    payload = read_state(path, kind, remedy)
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # verified bytes that torch cannot read: written by an incompatible version
        raise StateFileError(f"{path}: {kind.replace('_', ' ')} cannot be read ({type(exc).__name__}); "
                             f"it is not used. {remedy}") from None


CHECKSUM_KEY = "sha256"


def write_checked_json(path: str | Path, data: dict) -> Path:
    """``write_json`` with a ``"sha256"`` entry: the checksum of the canonical JSON of the other entries."""
    body = _strict(data)
    return write_json(path, {**body, CHECKSUM_KEY: content_hash(body, digits=64)})


def read_checked_json(path: str | Path, what: str, remedy: str) -> dict:
    """The entries (less the checksum) of a file written by ``write_checked_json``, after verifying it;
    otherwise ``StateFileError`` naming the file, the fault and ``remedy``."""
    path = Path(path)
    try:
        data = json.loads(path.read_bytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        fault = "empty" if path.stat().st_size == 0 else f"truncated or damaged ({exc})"
        raise StateFileError(f"{path}: {fault} {what}; it is not used. {remedy}") from None
    if not isinstance(data, dict) or CHECKSUM_KEY not in data:
        raise StateFileError(f"{path}: not an invprior {what} (no checksum); it is not used. {remedy}")
    checksum = data.pop(CHECKSUM_KEY)
    if checksum != content_hash(data, digits=64):
        raise StateFileError(f"{path}: damaged {what} (SHA-256 checksum mismatch); it is not used. {remedy}")
    return data


#: The file in an output folder whose lock marks the folder as in use (see ``folder_lock``); it holds the pid.
LOCK_FILE = ".invprior.lock"
_LOCKED: set[str] = set()  # folders this process holds


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[Path]:
    """Hold the output folder ``folder`` (created if missing) for the block: an exclusive advisory lock (POSIX
    ``flock``) on its ``.invprior.lock``, which records this process's pid. Another process holding it is a
    ``FolderInUseError`` at once, naming its pid. Holding a folder again in the same process (a command and the
    library function it calls) is allowed. The operating system releases the lock when the process dies, so a
    killed process never blocks a later one; a no-op where ``flock`` is missing. A folder this call created is
    removed again when the block fails before anything but the lock was written into it."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if fcntl is None or key in _LOCKED:
        yield folder
        return
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            raise FolderInUseError(f"output folder {folder} is in use by another invprior process (pid {holder}); "
                                   "wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _LOCKED.add(key)
        try:
            yield folder
        finally:
            _LOCKED.discard(key)
    except BaseException:
        if created and {p.name for p in folder.iterdir()} <= {LOCK_FILE}:  # refused before any result
            (folder / LOCK_FILE).unlink(missing_ok=True)
            folder.rmdir()
        raise
    finally:
        os.close(fd)  # releases the lock
