"""One registry per component kind, filled from the entry-point groups ``invprior.<kind>``.

Built-in components register through invprior's own entry points, exactly like plugins.
An entry that fails to load is reported with its distribution and error; the others still work.
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
import warnings
from dataclasses import dataclass
from typing import Any

from invprior.errors import UnknownComponentError

KINDS: tuple[str, ...] = ("operators", "generators", "regularizers", "stopping", "posteriors", "datasets", "methods")


@dataclass(frozen=True)
class Entry:
    """A registered component: its name, kind, providing distribution and import target."""

    name: str
    kind: str
    distribution: str
    target: str


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UnknownComponentError(f"unknown component kind {kind!r}; kinds are: {', '.join(KINDS)}")


def entries(kind: str) -> dict[str, Entry]:
    """Every entry registered for ``kind``, by name (nothing is imported)."""
    _check_kind(kind)
    found: dict[str, Entry] = {}
    candidates = [Entry(ep.name, kind, ep.dist.name if ep.dist is not None else "unknown", ep.value)
                  for ep in metadata.entry_points(group=f"invprior.{kind}")]
    # built-ins first, then plugins by distribution name: the first registration of a name wins
    for entry in sorted(candidates, key=lambda e: (e.name, e.distribution != "invprior", e.distribution)):
        if entry.name in found:
            if found[entry.name] != entry:
                warnings.warn(f"{entry.distribution} registers {kind} '{entry.name}', already provided by "
                              f"{found[entry.name].distribution}; ignored", stacklevel=2)
            continue
        found[entry.name] = entry
    return found


def names(kind: str) -> list[str]:
    """Sorted names of the components registered for ``kind``."""
    return sorted(entries(kind))


def load(kind: str, name: str) -> Any:
    """The class or factory registered as ``name``; raises with close matches if unknown."""
    known = entries(kind)
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownComponentError(
            f"no {kind} component named {name!r}.{hint} Registered: {', '.join(sorted(known)) or 'none'}"
        )
    entry = known[name]
    try:
        return metadata.EntryPoint(entry.name, entry.target, f"invprior.{kind}").load()
    except Exception as exc:  # a broken plugin must be reported, whatever it raises
        raise ImportError(
            f"{kind} component {name!r} from distribution {entry.distribution!r} ({entry.target}) "
            f"failed to load: {type(exc).__name__}: {exc}"
        ) from exc


def get(kind: str, name: str, **params: Any) -> Any:
    """Construct the component registered as ``name`` with keyword ``params``."""
    return load(kind, name)(**params)


def load_all(kind: str) -> tuple[dict[str, Any], dict[str, str]]:
    """Load every entry of ``kind``: ``(components by name, error message by name)``."""
    loaded: dict[str, Any] = {}
    failed: dict[str, str] = {}
    for name in names(kind):
        try:
            loaded[name] = load(kind, name)
        except ImportError as exc:
            failed[name] = str(exc)
    return loaded, failed
