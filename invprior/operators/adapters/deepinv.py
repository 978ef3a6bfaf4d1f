"""deepinv physics as invprior operators, and invprior operators as deepinv physics.

``DeepinvOperator`` evaluates ``y = physics.A(x)`` (noise-free) through deepinv's own torch
operations, so autograd differentiates it directly. ``to_deepinv`` goes the other way. deepinv
is imported only when one of them is used (``pip install 'invprior[deepinv]'``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from invprior._optional import require
from invprior.core.operator import ForwardOperator, Shape
from invprior.errors import ShapeError, WrongTypeError

if TYPE_CHECKING:
    from deepinv.physics import Physics

__all__ = ["DeepinvOperator", "to_deepinv"]


def _state_tensors(physics: torch.nn.Module) -> list[Tensor]:
    return [*physics.parameters(), *physics.buffers()]


def _complex_counterpart(dtype: torch.dtype) -> torch.dtype:
    return {torch.float64: torch.complex128, torch.float16: torch.complex32}.get(dtype, torch.complex64)


def _follows(t: Tensor, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``t`` is on ``device`` and, when floating or complex, in ``dtype`` or its complex twin."""
    if t.device != device:
        return False
    if t.is_complex():
        return t.dtype == _complex_counterpart(dtype)
    return not t.is_floating_point() or t.dtype == dtype


def _converted_copy(physics: Physics, device: torch.device, dtype: torch.dtype) -> Physics:
    """A deep copy of ``physics`` whose real tensors are in ``dtype`` and complex ones in its complex twin.

    ``nn.Module.to(dtype)`` would drop the imaginary part of complex buffers (BlurFFT keeps some),
    and some deepinv physics record their dtype in a ``dtype`` attribute that they cast inputs to
    (CompressedSensing, Tomography); both are kept consistent here.
    """
    cdtype = _complex_counterpart(dtype)

    def convert(t: Tensor) -> Tensor:
        if t.is_complex():
            return t.to(device=device, dtype=cdtype)
        if t.is_floating_point():
            return t.to(device=device, dtype=dtype)
        return t.to(device=device)

    clone = copy.deepcopy(physics)
    clone._apply(convert)
    for module in clone.modules():
        recorded = vars(module).get("dtype")
        if isinstance(recorded, torch.dtype) and (recorded.is_floating_point or recorded.is_complex):
            module.dtype = cdtype if recorded.is_complex else dtype
    return clone


class DeepinvOperator(ForwardOperator):
    """A deepinv ``Physics`` as a ``ForwardOperator``: ``A(x) = physics.A(x)``, without noise.

    The operator is linear iff ``physics`` is a ``deepinv.physics.LinearPhysics``; then
    ``A^T y = physics.A_adjoint(y)`` and ``A^dagger y = physics.A_dagger(y)``. The range shape is
    found by applying ``physics.A`` once to zeros of shape ``(1, *domain_shape)``.

    Inputs whose device or dtype differ from the physics' tensors are evaluated on a converted
    copy of the physics, made once per (device, dtype); the physics passed in is never modified.
    Gradients with respect to the physics' own parameters therefore reach it only for inputs on its
    device and in its dtype, and changes made to the physics later do not reach such copies.
    """

    def __init__(self, physics: Physics, domain_shape: Shape) -> None:
        dinv = require("deepinv", "deepinv", "DeepinvOperator")
        if not isinstance(physics, dinv.physics.Physics):
            raise WrongTypeError(f"DeepinvOperator expects a deepinv.physics.Physics, got {type(physics).__name__}")
        self.physics = physics
        self.is_linear = isinstance(physics, dinv.physics.LinearPhysics)
        self._physics_cache: dict[tuple[torch.device, torch.dtype], Physics] = {}
        domain = tuple(int(s) for s in domain_shape)
        state = [t for t in _state_tensors(physics) if t.is_floating_point()]
        probe_dtype = state[0].dtype if state else torch.get_default_dtype()
        probe_device = state[0].device if state else torch.device("cpu")
        name = f"DeepinvOperator[{type(physics).__name__}]"
        try:
            with torch.no_grad():
                probe = physics.A(torch.zeros((1, *domain), dtype=probe_dtype, device=probe_device))
        except (RuntimeError, ValueError, IndexError) as exc:
            raise ShapeError(
                f"{name}: physics.A fails on real zeros of shape {(1, *domain)} and dtype {probe_dtype} "
                f"({exc}); check domain_shape {domain}, and that the physics is real-valued"
            ) from exc
        if not isinstance(probe, Tensor):
            raise ShapeError(f"{name}: physics.A must return a single tensor, got {type(probe).__name__}")
        if probe.is_complex() or not probe.is_floating_point():
            raise ShapeError(f"{name}: physics.A must return real floating-point values, got dtype {probe.dtype}")
        if probe.ndim == 0 or probe.shape[0] != 1:
            raise ShapeError(
                f"{name}: physics.A maps a batch of 1 of shape {(1, *domain)} to shape {tuple(probe.shape)}; "
                "the batch axis must be kept"
            )
        super().__init__(domain, tuple(probe.shape[1:]))

    @property
    def name(self) -> str:
        return f"DeepinvOperator[{type(self.physics).__name__}]"

    def _physics_like(self, x: Tensor) -> Physics:
        if all(_follows(t, x.device, x.dtype) for t in _state_tensors(self.physics)):
            return self.physics
        key = (x.device, x.dtype)
        if key not in self._physics_cache:
            self._physics_cache[key] = _converted_copy(self.physics, x.device, x.dtype)
        return self._physics_cache[key]

    def forward(self, x: Tensor) -> Tensor:
        return self._physics_like(x).A(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._physics_like(y).A_adjoint(y)

    @property
    def has_pseudo_inverse(self) -> bool:
        return self.is_linear

    def _pseudo_inverse(self, y: Tensor) -> Tensor:
        """``physics.A_dagger(y)``: closed form where deepinv has one, least squares otherwise."""
        return self._physics_like(y).A_dagger(y)


def _no_parameters(kwargs: dict[str, Any], owner: str) -> None:
    if kwargs:
        raise WrongTypeError(f"{owner} exported to deepinv takes no physics parameters, got {sorted(kwargs)}")


def to_deepinv(operator: ForwardOperator, noise_model: Any = None) -> Physics:
    """``operator`` as a deepinv physics: ``physics.A(x) = operator(x)``.

    A linear operator becomes a ``LinearPhysics`` with ``A_adjoint = operator.adjoint`` and
    ``img_size = operator.domain_shape``; a nonlinear one becomes a plain ``Physics``. The noise
    model is deepinv's ``ZeroNoise`` unless ``noise_model`` (a deepinv ``NoiseModel``) is given.
    """
    dinv = require("deepinv", "deepinv", "to_deepinv")
    if not isinstance(operator, ForwardOperator):
        raise WrongTypeError(f"to_deepinv expects an invprior ForwardOperator, got {type(operator).__name__}")
    owner = operator.name

    def forward(x: Tensor, **kwargs: Any) -> Tensor:
        _no_parameters(kwargs, owner)
        return operator(x)

    if not operator.is_linear:
        return dinv.physics.Physics(A=forward, noise_model=noise_model)

    def adjoint(y: Tensor, **kwargs: Any) -> Tensor:
        _no_parameters(kwargs, owner)
        return operator.adjoint(y)

    return dinv.physics.LinearPhysics(
        A=forward, A_adjoint=adjoint, img_size=operator.domain_shape, noise_model=noise_model
    )
