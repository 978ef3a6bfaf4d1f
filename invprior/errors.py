"""Exceptions raised by invprior. Each one names the offending input."""

from __future__ import annotations


class InvpriorError(Exception):
    """Base class of every error raised on purpose by invprior."""


class MissingExtraError(InvpriorError, ImportError):
    """An optional dependency is missing; the message names the extra that provides it."""

    def __init__(self, module: str, extra: str, feature: str) -> None:
        self.module, self.extra, self.feature = module, extra, feature
        super().__init__(
            f"{feature} needs the optional package '{module}', which is not installed. "
            f"Install it with: pip install 'invprior[{extra}]'"
        )


class ShapeError(InvpriorError, ValueError):
    """A tensor has the wrong shape, dtype or device for the component it is given to."""


class ConfigError(InvpriorError, ValueError):
    """A configuration value or argument is missing or invalid; the message names the key."""


class WrongTypeError(InvpriorError, TypeError):
    """An argument is not of the type a component takes (an operator, a physics model), or a call passes
    arguments it does not take; the message names the argument."""


class NonlinearOperatorError(InvpriorError, TypeError):
    """A linear-only operation (adjoint ``A^T``, operator norm ``||A||_2``) was asked of a nonlinear operator."""


class NotSupportedError(InvpriorError, NotImplementedError):
    """A component lacks an optional capability that was asked of it (a pseudo-inverse, a forward-mode derivative)."""


class PluginError(InvpriorError, ImportError):
    """A registered component (a plugin's, or a built-in whose optional dependency is broken) failed to load or is
    written for another plugin API; the message names its distribution and entry point."""


class NotFittedError(InvpriorError, RuntimeError):
    """A result was asked for before ``fit`` or ``reconstruct`` produced it."""


class UnknownComponentError(InvpriorError, KeyError):
    """A registry name that no built-in component or plugin provides."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class FitDivergedError(InvpriorError, FloatingPointError):
    """An iterative fit produced a non-finite loss; ``reconstruction`` holds the last good iterate."""

    def __init__(self, message: str, reconstruction: object) -> None:
        super().__init__(message)
        self.reconstruction = reconstruction


class ConvergenceWarning(RuntimeWarning):
    """An iterative solver (e.g. conjugate gradients) stopped before reaching its tolerance; its result is
    still used, and the warning says how many solves missed and by how much."""


class NonFiniteError(InvpriorError, FloatingPointError):
    """A quantity that must be finite (a Jacobian, a hyperparameter, a likelihood) is NaN or infinite."""


class NonFiniteInputError(NonFiniteError, ValueError):
    """A tensor passed in (a measurement ``y``, a ground truth ``x_true``) holds NaN or infinite values."""


class DataFileError(InvpriorError, ValueError):
    """A data file is missing, unreadable or not in the expected layout; the message names the file and key."""


class StateFileError(InvpriorError, ValueError):
    """A state file (checkpoint, model, run record) is empty, truncated, damaged or foreign: its checksum or
    header does not match, so it is refused rather than trusted. The message names the file and what to do."""


class MeshError(ConfigError):
    """A mesh is invalid (non-finite coordinates, isolated nodes, duplicated, degenerate, folded or overlapping
    elements, boundary edges off the mesh's boundary); the message names the first offending indices and the count."""


class FolderInUseError(InvpriorError, RuntimeError):
    """An output folder is held by another invprior process (its ``.invprior.lock``); the message names its pid."""
