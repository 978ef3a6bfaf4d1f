"""Arrays from the files measurements come in: MATLAB ``.mat`` (v5 and v7.3/HDF5), ``.npz``, ``.npy``, ``.h5``.

Keys are paths through the file's structure, separated by ``/``: ``"CtDataLimited/sinogram"`` is
the field ``sinogram`` of the MATLAB struct ``CtDataLimited``. MATLAB v7.3 files store arrays in
column-major order; they come back in MATLAB's own orientation (transposed from what h5py reads),
so one key gives the same array from either version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from invprior._optional import require
from invprior.errors import DataFileError

__all__ = ["ArrayFile", "SUFFIXES"]

SUFFIXES = (".mat", ".npz", ".npy", ".h5", ".hdf5")


def _is_hdf5(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(512 + 8)
    return head[:8] == b"\x89HDF\r\n\x1a\n" or head[512:520] == b"\x89HDF\r\n\x1a\n"


class ArrayFile:
    """Read-only, key-addressed access to the arrays in one file (use as a context manager)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise DataFileError(f"{self.path}: no such file")
        suffix = self.path.suffix.lower()
        if suffix not in SUFFIXES:
            raise DataFileError(f"{self.path}: unknown file type {suffix!r}; expected one of {', '.join(SUFFIXES)}")
        self._h5: Any = None
        self._tree: Any = None
        self.matlab = suffix == ".mat"
        try:
            if suffix in (".h5", ".hdf5") or (self.matlab and _is_hdf5(self.path)):
                h5py = require("h5py", "data", "reading HDF5 and MATLAB v7.3 files")
                self._h5 = h5py.File(self.path, "r")
                self.format = "MATLAB v7.3 (HDF5)" if self.matlab else "HDF5"
            elif self.matlab:
                from scipy.io import loadmat
                self._tree = {k: v for k, v in loadmat(self.path, simplify_cells=True).items()
                              if not k.startswith("__")}
                self.format = "MATLAB v5"
            elif suffix == ".npz":
                with np.load(self.path, allow_pickle=False) as archive:
                    self._tree = {k: archive[k] for k in archive.files}
                self.format = "npz"
            else:
                self._tree = np.load(self.path, allow_pickle=False)
                self.format = "npy"
        except DataFileError:
            raise
        except Exception as exc:  # corrupt or foreign content: say which file, never a traceback
            raise DataFileError(f"{self.path}: cannot be read as {suffix} ({type(exc).__name__}: {exc})") from None

    def __enter__(self) -> ArrayFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._h5 is not None:
            self._h5.close()
            self._h5 = None

    # -- navigation ---------------------------------------------------------------------
    def _children(self, node: Any) -> list[str] | None:
        if self._h5 is not None:
            return sorted(k for k in node.keys() if k != "#refs#") if hasattr(node, "keys") else None
        return sorted(node) if isinstance(node, dict) else None

    def _node(self, key: str | None) -> Any:
        if self.format == "npy":
            if key:
                raise DataFileError(f"{self.path}: a .npy file holds one array and no keys; got key {key!r}")
            return self._tree
        if not key:
            raise DataFileError(f"{self.path}: name the array to read; keys: {', '.join(self.keys())}")
        node = self._h5 if self._h5 is not None else self._tree
        if self.format == "npz" and key in node:
            return node[key]
        walked: list[str] = []
        for part in key.strip("/").split("/"):
            children = self._children(node)
            if children is None or part not in children:
                where = "/".join(walked) or "the top level"
                known = ", ".join(children) if children else "none (it is an array)"
                raise DataFileError(f"{self.path}: no key {key!r} ({part!r} is not in {where}; there: {known})")
            node = node[part]
            walked.append(part)
        return node

    def keys(self, key: str | None = None) -> list[str]:
        """The names under ``key`` (the top level by default)."""
        if self.format == "npy":
            return []
        node = (self._h5 if self._h5 is not None else self._tree) if not key else self._node(key)
        return self._children(node) or []

    def _value(self, key: str | None) -> Any:
        node = self._node(key)
        if self._h5 is None:
            return node
        if hasattr(node, "keys"):
            return dict.fromkeys(node.keys())
        value = node[()]
        matlab_class = node.attrs.get("MATLAB_class", b"")
        matlab_class = matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)
        if matlab_class == "char":
            return "".join(map(chr, np.asarray(value).ravel()))
        value = np.asarray(value)
        return value.T if self.matlab else value  # MATLAB is column-major

    # -- typed reads --------------------------------------------------------------------
    def array(self, key: str | None = None) -> np.ndarray:
        """The numeric array at ``key`` as float64 (MATLAB singleton dimensions squeezed)."""
        value = self._value(key)
        if isinstance(value, str):
            raise DataFileError(f"{self.path}: {key!r} is text, not a numeric array")
        if isinstance(value, dict):
            raise DataFileError(f"{self.path}: {key!r} is a group/struct with keys {', '.join(map(str, value))}, "
                                "not a numeric array")
        dtype = np.asarray(value).dtype
        real_numbers = np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)
        if not real_numbers or np.issubdtype(dtype, np.complexfloating):
            raise DataFileError(f"{self.path}: {key!r} holds {dtype} values, not real numbers")
        value = np.asarray(value, dtype=np.float64)
        return value.squeeze() if self.matlab else value

    def scalar(self, key: str) -> float:
        """The single number at ``key``."""
        value = self.array(key)
        if value.size != 1:
            raise DataFileError(f"{self.path}: {key!r} should be one number, got an array of shape {value.shape}")
        return float(value.reshape(()))

    def text(self, key: str) -> str:
        """The text at ``key`` (a MATLAB char array or a string)."""
        value = self._value(key)
        if isinstance(value, np.ndarray) and value.dtype.kind in "US":
            value = str(value.reshape(())) if value.size == 1 else None
        if not isinstance(value, str):
            raise DataFileError(f"{self.path}: {key!r} is not text")
        return value
