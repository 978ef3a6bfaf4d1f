"""Validated run configurations (TOML): one problem x one method, components named by registry.

A configuration looks like::

    seed = 0
    [problem]
    operator = "ct_parallel"          # registry name (invprior list operators)
    operator_params = { num_angles = 30 }
    image = "ct_slice"                # registry name (invprior list datasets)
    image_params = {}
    size = 128
    noise = { relative = 0.025 }      # or { std = 0.01 }
    fine_factor = 3                   # simulate data on a 3x finer grid (CT)
    [method]
    name = "tv"
    params = { weight = "discrepancy" }
    [baseline]                        # optional; default: the pseudo-inverse, else Tikhonov
    name = "fbp"
    [posterior]                       # optional: uncertainty around the method's result (DIP)
    name = "linearized_laplace"
    params = { iterations = 200 }

Measured data replace the simulation keys by a reader (``invprior list readers``) and a file::

    [problem]
    reader = "htc2022"
    file = "data/htc2022_tb_90deg.mat"        # relative to the configuration file
    reference = "data/htc2022_tb_full_recon_fbp_seg.png"   # optional, for task scores (MCC)
    size = 256
    reader_params = {}                        # the reader's other parameters
    noise = { std = 0.006 }                   # optional: estimated from the data when absent

Both forms take ``constraints = { lower = 0.0, upper = 0.041, support = "disc" }``: bounds on the
image values and a support (``"disc"``: fitted to a CT sinogram's silhouette; or ``{ file = ...,
key = ... }``, a mask of the image grid), which TV and DIP enforce.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from invprior.core.noise import GaussianNoise
from invprior.errors import ConfigError

_TOP = {"seed": "an int", "problem": "a table", "method": "a table", "baseline": "a table", "posterior": "a table"}
_PROBLEM = {"operator": "a registry name", "operator_params": "a table", "image": "a registry name",
            "image_params": "a table", "size": "a positive int", "noise": "a table {relative=...} or {std=...}",
            "fine_factor": "an int >= 1", "num_images": "a positive int",
            "constraints": "a table {lower=..., upper=..., support=...}"}
_MEASURED = {"reader": "a registry name (invprior list readers)", "file": "a path to the measurement file",
             "reference": "a path to a reference segmentation", "reference_key": "the reference's key in its file",
             "size": "a positive int", "reader_params": "a table", "noise": "a table {std=...}",
             "constraints": "a table {lower=..., upper=..., support=...}"}
_CONSTRAINTS = {"lower": "a number", "upper": "a number",
                "support": "'disc' or a table {file=..., key=..., margin=...}"}
_SUPPORT = {"file": "a path to a mask of the image grid", "key": "the mask's key in its file",
            "disc": "'fit' (a disc fitted to the sinogram's silhouette)", "margin": "pixels added to a fitted disc"}
_COMPONENT = {"name": "a registry name", "params": "a table"}


@dataclass
class ComponentSpec:
    """A registry name and the keyword parameters to build it with."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ConstraintsSpec:
    """Bounds on the image values and a support: ``"disc"`` (fitted to the data, grown by ``margin``
    pixels) or a mask file (``support_file``, ``support_key``)."""

    lower: float | None = None
    upper: float | None = None
    support: str | None = None
    support_file: Path | None = None
    support_key: str | None = None
    margin: float = 0.0


@dataclass
class ProblemSpec:
    """How to simulate the problem: operator, image, size, noise, grid refinement."""

    operator: ComponentSpec
    image: ComponentSpec
    size: int
    noise: GaussianNoise
    fine_factor: int = 1
    num_images: int = 1
    constraints: ConstraintsSpec | None = None

    @property
    def label(self) -> str:
        return f"{self.operator.name} / {self.image.name}"


@dataclass
class MeasuredSpec:
    """How to read the problem: a registered reader with the measurement file (and its parameters),
    the grid size, the noise std if known and the constraints."""

    reader: ComponentSpec
    size: int
    noise_std: float | None = None
    constraints: ConstraintsSpec | None = None

    @property
    def label(self) -> str:
        return f"{self.reader.name} / {Path(self.reader.params['file']).name}"


@dataclass
class RunConfig:
    """A validated configuration for ``invprior run``."""

    problem: ProblemSpec | MeasuredSpec
    method: ComponentSpec
    baseline: ComponentSpec | None
    posterior: ComponentSpec | None = None
    seed: int = 0
    raw: dict[str, Any] = field(default_factory=dict)


def _check_keys(table: dict, allowed: dict[str, str], where: str) -> None:
    for key in table:
        if key not in allowed:
            expected = ", ".join(f"{k} ({v})" for k, v in allowed.items())
            raise ConfigError(f"{where}{key}: unknown key; expected one of: {expected}")


def _get(table: dict, key: str, kind: type, where: str, expected: str, default: Any = ...) -> Any:
    if key not in table:
        if default is ...:
            raise ConfigError(f"{where}{key}: missing; expected {expected}")
        return default
    value = table[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ConfigError(f"{where}{key}: expected {expected}, got {value!r}")
    return value


def _component(table: Any, where: str) -> ComponentSpec:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table with 'name' and optional 'params', got {table!r}")
    _check_keys(table, _COMPONENT, f"{where}.")
    return ComponentSpec(_get(table, "name", str, f"{where}.", "a registry name"),
                         dict(_get(table, "params", dict, f"{where}.", "a table", {})))


def _positive(value: int, key: str, minimum: int = 1) -> int:
    if value < minimum:
        raise ConfigError(f"problem.{key}: expected an int >= {minimum}, got {value!r}")
    return value


def _path(value: Any, where: str, base: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a path (a string), got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() or base is None else base / path


def _number(table: dict, key: str, where: str) -> float | None:
    if key not in table:
        return None
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}{key}: expected a number, got {value!r}")
    return float(value)


def _constraints(table: Any, base: Path | None) -> ConstraintsSpec | None:
    where = "problem.constraints."
    if table is None:
        return None
    if not isinstance(table, dict):
        raise ConfigError(f"problem.constraints: expected {_PROBLEM['constraints']}, got {table!r}")
    _check_keys(table, _CONSTRAINTS, where)
    lower, upper = _number(table, "lower", where), _number(table, "upper", where)
    if lower is not None and upper is not None and not lower < upper:
        raise ConfigError(f"{where}lower ({lower}) must be below upper ({upper})")
    support = table.get("support")
    if support is None:
        return ConstraintsSpec(lower, upper)
    if support == "disc":
        return ConstraintsSpec(lower, upper, "disc")
    if not isinstance(support, dict):
        raise ConfigError(f"{where}support: expected {_CONSTRAINTS['support']}, got {support!r}")
    _check_keys(support, _SUPPORT, f"{where}support.")
    margin = _number(support, "margin", f"{where}support.")
    if "disc" in support:
        if support["disc"] != "fit" or "file" in support:
            raise ConfigError(f"{where}support: give disc = 'fit' or a mask file, got {support!r}")
        return ConstraintsSpec(lower, upper, "disc", margin=0.0 if margin is None else margin)
    if "file" not in support:
        raise ConfigError(f"{where}support: missing file (a mask of the image grid) or disc = 'fit'")
    if margin is not None:
        raise ConfigError(f"{where}support.margin: applies to a fitted disc only")
    key = _get(support, "key", str, f"{where}support.", "a key", None)
    return ConstraintsSpec(lower, upper, "file", _path(support["file"], f"{where}support.file", base), key)


def _measured(problem: dict, base: Path | None) -> MeasuredSpec:
    _check_keys(problem, _MEASURED, "problem.")
    params = dict(_get(problem, "reader_params", dict, "problem.", "a table", {}))
    for key in ("file", "reference", "size", "noise_std", "reference_key"):
        if key in params:
            raise ConfigError(f"problem.reader_params.{key}: set it as problem.{key.replace('noise_std', 'noise')} "
                              "instead")
    for key, value in params.items():  # further files a reader takes, e.g. a reference measurement
        if key.endswith("_file") and isinstance(value, str):
            params[key] = _path(value, f"problem.reader_params.{key}", base)
    params["file"] = _path(problem.get("file"), "problem.file", base) if "file" in problem else None
    if params["file"] is None:
        raise ConfigError("problem.file: missing; expected a path to the measurement file")
    if "reference" in problem:
        params["reference"] = _path(problem["reference"], "problem.reference", base)
    if "reference_key" in problem:
        params["reference_key"] = _get(problem, "reference_key", str, "problem.", "a key")
    noise_std = None
    if "noise" in problem:
        noise = _get(problem, "noise", dict, "problem.", _MEASURED["noise"])
        _check_keys(noise, {"std": "a number > 0 (the std of one sinogram entry)"}, "problem.noise.")
        noise_std = _number(noise, "std", "problem.noise.")
        if noise_std is None or noise_std <= 0:
            raise ConfigError(f"problem.noise.std: expected a number > 0, got {noise.get('std')!r}")
    size = _positive(_get(problem, "size", int, "problem.", "a positive int", 256), "size")
    reader = ComponentSpec(_get(problem, "reader", str, "problem.", "a registry name"), params)
    return MeasuredSpec(reader, size, noise_std, _constraints(problem.get("constraints"), base))


def parse_config(data: dict[str, Any], base: str | Path | None = None) -> RunConfig:
    """Validate a configuration dictionary; errors name the offending key and what was expected.

    Paths in the configuration (measurement, reference and mask files) are relative to ``base``
    (the configuration file's folder), or to the working directory when it is ``None``.
    """
    base = None if base is None else Path(base)
    _check_keys(data, _TOP, "")
    problem = _get(data, "problem", dict, "", "a table [problem]")
    if "reader" in problem:
        spec: ProblemSpec | MeasuredSpec = _measured(problem, base)
    else:
        spec = _simulated(problem, base)
    method = _component(_get(data, "method", dict, "", "a table [method] with a 'name'"), "method")
    baseline = _component(data["baseline"], "baseline") if "baseline" in data else None
    posterior = _component(data["posterior"], "posterior") if "posterior" in data else None
    if posterior is not None and isinstance(spec, ProblemSpec) and spec.num_images != 1:
        raise ConfigError(f"posterior: uncertainty is fitted per image; set problem.num_images = 1 "
                          f"(got {spec.num_images})")
    return RunConfig(spec, method, baseline, posterior, _get(data, "seed", int, "", "an int", 0), data)


def _simulated(problem: dict, base: Path | None) -> ProblemSpec:
    _check_keys(problem, _PROBLEM, "problem.")
    noise_table = _get(problem, "noise", dict, "problem.", _PROBLEM["noise"])
    _check_keys(noise_table, {"relative": "a number >= 0", "std": "a number >= 0"}, "problem.noise.")
    try:
        noise = GaussianNoise(**noise_table)
    except ConfigError as exc:
        raise ConfigError(f"problem.{exc}") from None
    return ProblemSpec(
        operator=ComponentSpec(_get(problem, "operator", str, "problem.", "a registry name"),
                               dict(_get(problem, "operator_params", dict, "problem.", "a table", {}))),
        image=ComponentSpec(_get(problem, "image", str, "problem.", "a registry name"),
                            dict(_get(problem, "image_params", dict, "problem.", "a table", {}))),
        size=_positive(_get(problem, "size", int, "problem.", "a positive int", 64), "size"),
        noise=noise,
        fine_factor=_positive(_get(problem, "fine_factor", int, "problem.", "an int >= 1", 1), "fine_factor"),
        num_images=_positive(_get(problem, "num_images", int, "problem.", "a positive int", 1), "num_images"),
        constraints=_constraints(problem.get("constraints"), base),
    )


def read_toml(path: str | Path, what: str = "configuration file") -> dict[str, Any]:
    """The contents of the TOML file ``path`` (UTF-8, a byte-order mark allowed); a missing file, a folder, an
    unreadable, binary or non-UTF-8 file and invalid TOML are each a one-line ConfigError naming ``what`` and
    the file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a folder, not a TOML file")
    if not path.exists():
        raise ConfigError(f"{what} {path} does not exist")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path}: not a UTF-8 TOML file (byte 0x{raw[exc.start]:02x} at offset {exc.start} "
                          "is not UTF-8 text); give a TOML file saved as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path}: not valid TOML: {exc}") from None


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a TOML configuration file."""
    path = Path(path)
    return parse_config(read_toml(path), path.parent)
