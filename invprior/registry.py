"""One registry per component kind, filled from the entry-point groups ``invprior.<kind>``.

Built-in components register through invprior's own entry points, exactly like plugins.
An entry that fails to load (whatever it raises on import, ``sys.exit`` included) is reported with its
distribution and error; the others still work. A plugin that ends the interpreter itself (``os._exit``, a
crash in native code) cannot be caught in the process that imports it.

Plugin API: a plugin distribution declares the version of this API it was written against in the
group ``invprior.api`` (one entry pointing at a version string, e.g. ``api =
"my_plugin:INVPRIOR_API"`` with ``INVPRIOR_API = "1.0"``). Its components load only when the major
version equals ``PLUGIN_API``'s; a plugin that declares none is loaded with a warning. What the
API covers: the five interfaces and ``Method`` with their documented methods, ``InverseProblem``,
``Reconstruction`` and ``FittedNetwork``, ``GaussianNoise`` and this module's functions.
"""

from __future__ import annotations

import difflib
import importlib.metadata as metadata
import inspect
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from invprior.errors import ConfigError, InvpriorError, PluginError, UnknownComponentError, WrongTypeError

KINDS: tuple[str, ...] = ("operators", "generators", "regularizers", "stopping", "posteriors", "datasets", "methods",
                          "readers")

#: The plugin API this invprior provides (``major.minor``; plugins must match the major version).
PLUGIN_API = "1.0"


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


def require(kind: str, name: str) -> Entry:
    """The entry registered as ``name`` (nothing is imported); raises with close matches if unknown."""
    known = entries(kind)
    if name not in known:
        close = difflib.get_close_matches(name, list(known), n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownComponentError(
            f"no {kind} component named {name!r}.{hint} Registered: {', '.join(sorted(known)) or 'none'}"
        )
    return known[name]


def load(kind: str, name: str) -> Any:
    """The class or factory registered as ``name``; raises with close matches if unknown."""
    entry = require(kind, name)
    if entry.distribution != "invprior":
        _check_api(entry.distribution)
    try:
        component = metadata.EntryPoint(entry.name, entry.target, f"invprior.{kind}").load()
    except (Exception, SystemExit) as exc:  # a broken plugin is reported, whatever it raises, also sys.exit()
        raise PluginError(
            f"{kind} component {name!r} from distribution {entry.distribution!r} ({entry.target}) "
            f"failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    base = _base_class(kind)
    if base is not None and not (isinstance(component, type) and issubclass(component, base)) \
            and not (callable(component) and not isinstance(component, type)):
        raise PluginError(f"{kind} component {name!r} from distribution {entry.distribution!r} ({entry.target}) "
                          f"is {component!r}, not a {base.__name__} subclass or a factory")
    return component


def _base_class(kind: str) -> type | None:
    """The interface a component of ``kind`` implements (``None``: datasets and readers are plain functions)."""
    from invprior.core import ForwardOperator, Generator, Method, PosteriorApproximation, Regularizer, StoppingRule
    return {"operators": ForwardOperator, "generators": Generator, "regularizers": Regularizer,
            "stopping": StoppingRule, "posteriors": PosteriorApproximation, "methods": Method}.get(kind)


def declared_api(distribution: str) -> str | None:
    """The plugin API version ``distribution`` declares in the group ``invprior.api``, if any."""
    for ep in metadata.entry_points(group="invprior.api"):
        if ep.dist is not None and ep.dist.name == distribution:
            try:
                return str(ep.load())
            except (Exception, SystemExit) as exc:
                raise PluginError(f"distribution {distribution!r} declares its invprior plugin API through "
                                  f"{ep.value}, which failed to load: {type(exc).__name__}: {exc}") from exc
    return None


_WARNED: set[str] = set()


def _check_api(distribution: str) -> None:
    """Refuse a plugin written for another major version of the plugin API; warn if it declares none."""
    version = declared_api(distribution)
    if version is None:
        if distribution not in _WARNED:
            _WARNED.add(distribution)
            warnings.warn(f"plugin distribution {distribution!r} does not declare the invprior plugin API it "
                          f"targets (entry point group 'invprior.api'); assuming {PLUGIN_API}", stacklevel=3)
        return
    if version.split(".")[0] != PLUGIN_API.split(".")[0]:
        raise PluginError(f"plugin distribution {distribution!r} targets invprior plugin API {version}, but this "
                          f"invprior {_own_version()} provides API {PLUGIN_API} (the major versions must match); "
                          f"install a release of {distribution!r} for API {PLUGIN_API.split('.')[0]}.x")


def _own_version() -> str:
    from invprior import __version__
    return __version__


def get(kind: str, name: str, **params: Any) -> Any:
    """Construct the component registered as ``name`` with keyword ``params`` (see ``build``)."""
    return build(kind, name, params)


def build(kind: str, name: str, params: Mapping[str, Any] | None = None, *, defaults: Mapping[str, Any] | None = None,
          where: str | None = None, params_where: str | None = None) -> Any:
    """The one way a component is constructed: the class or factory registered as ``name``, called with
    ``params``; each of ``defaults`` is passed too where the constructor takes it and ``params`` does not set it.
    The result must implement the kind's interface. With ``where`` (the configuration key that names the
    component; ``params_where``, default ``where.params``, the key of its parameters) every failure is a
    one-line ``ConfigError`` naming that key."""
    params = dict(params or {})
    try:
        factory = load(kind, name)
    except (UnknownComponentError, ImportError) as exc:
        if where is None:
            raise
        raise ConfigError(f"{where}: {exc}") from None
    accepted = _keywords(factory)
    chosen = {k: v for k, v in (defaults or {}).items() if (accepted is None or k in accepted) and k not in params}
    try:
        component = factory(**chosen, **params)
    except (InvpriorError, TypeError) as exc:
        if where is None:
            raise
        raise ConfigError(f"{params_where or f'{where}.params'}: cannot build {kind} '{name}' with {params}: "
                          f"{exc}") from None
    base = _base_class(kind)
    if base is not None and not isinstance(component, base):
        message = (f"{kind} component {name!r} from distribution {entries(kind)[name].distribution!r} built a "
                   f"{type(component).__name__}, not a {base.__name__}")
        if where is None:
            raise WrongTypeError(message)
        raise ConfigError(f"{where}: {message}")
    return component


def _keywords(factory: Any) -> set[str] | None:
    """The keyword parameters ``factory`` accepts (``None``: any, it takes ``**kwargs`` or has no signature)."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return set()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return set(parameters)


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
