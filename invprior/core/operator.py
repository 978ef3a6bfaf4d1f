"""The ``ForwardOperator`` interface and its algebra (composition, scaling, sums, adjoints).

Operators act on batches: ``x`` has shape ``(B, *domain_shape)`` and ``A(x)`` has shape
``(B, *range_shape)``. They follow the device and dtype of their input; tensors an operator
owns (masks, matrices) are cast on first use and cached per (device, dtype).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from numbers import Real

import torch
from torch import Tensor

from invprior.errors import NonlinearOperatorError, NotSupportedError, ShapeError

Shape = tuple[int, ...]


def check_batch(x: object, shape: Shape, what: str, owner: str) -> Tensor:
    """Raise ``ShapeError`` unless ``x`` is a real floating tensor of shape ``(B, *shape)``."""
    if not isinstance(x, Tensor):
        raise ShapeError(f"{owner} expects a torch.Tensor as {what}, got {type(x).__name__}")
    if not (x.is_floating_point() and not x.is_complex()):
        raise ShapeError(f"{owner} expects a real floating-point {what}, got dtype {x.dtype}")
    if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
        expected = "(B, " + ", ".join(str(s) for s in shape) + ")"
        raise ShapeError(f"{owner} expects {what} of shape {expected}, got {tuple(x.shape)}")
    return x


class _LinearApply(torch.autograd.Function):
    """y = apply(x) for a linear map evaluated outside autograd; the backward pass is its transpose."""

    @staticmethod
    def forward(ctx, x: Tensor, apply: Callable, transpose: Callable) -> Tensor:  # type: ignore[override]
        ctx.forward_map, ctx.transpose_map = apply, transpose  # ctx.apply is reserved by autograd
        with torch.no_grad():
            return apply(x)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        # The transpose is applied through the same function, so higher derivatives stay exact.
        return linear_apply(grad, ctx.transpose_map, ctx.forward_map), None, None


def linear_apply(x: Tensor, apply: Callable[[Tensor], Tensor], transpose: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply a linear map whose implementation autograd cannot see, with gradient ``transpose``."""
    if not (torch.is_grad_enabled() and x.requires_grad):
        return apply(x)  # nothing to differentiate: skip the autograd bookkeeping
    return _LinearApply.apply(x, apply, transpose)


class ForwardOperator(ABC):
    """A map ``A: x -> y`` between batched tensors; linear operators also have an exact adjoint.

    Subclasses implement ``forward`` (and ``_adjoint`` when linear), without shape
    checks: ``__call__`` and ``adjoint`` validate their inputs first.
    """

    is_linear: bool = False

    def __init__(self, domain_shape: Shape, range_shape: Shape) -> None:
        self.domain_shape: Shape = tuple(int(s) for s in domain_shape)
        self.range_shape: Shape = tuple(int(s) for s in range_shape)
        self._cast_cache: dict[tuple[str, torch.device, torch.dtype], Tensor] = {}

    # -- to implement -------------------------------------------------------------------
    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """Evaluate ``A(x)`` for ``x`` of shape ``(B, *domain_shape)``."""

    def _adjoint(self, y: Tensor) -> Tensor:
        raise NotSupportedError(f"{self.name} does not implement an adjoint")

    # -- public API ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return type(self).__name__

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(check_batch(x, self.domain_shape, "input x", self.name))

    def adjoint(self, y: Tensor) -> Tensor:
        """Apply ``A^T`` (exact Euclidean adjoint): ``<A x, y> = <x, A^T y>``."""
        if not self.is_linear:
            raise NonlinearOperatorError(
                f"{self.name} is nonlinear and has no adjoint; linearise it with torch.func.vjp")
        return self._adjoint(check_batch(y, self.range_shape, "measurement y", self.name))

    def layout(self) -> dict[str, Tensor]:
        """Arrays that say where the entries of ``y`` sit (inpainting: the mask of observed pixels; CT: the
        projection angles), saved beside ``y`` in ``reconstruction.npz``; none by default."""
        return {}

    @property
    def T(self) -> ForwardOperator:
        """The adjoint as an operator of its own."""
        return AdjointOperator(self)

    def linearized(self, x: Tensor) -> ForwardOperator:
        """The tangent map ``v -> A'(x) v`` at one point ``x`` (``self`` when ``A`` is linear)."""
        return self if self.is_linear else TangentOperator(self, x)

    def pseudo_inverse(self, y: Tensor) -> Tensor:
        """An approximate inverse ``A^dagger y`` (FBP for CT); not every operator has one."""
        if not self.has_pseudo_inverse:
            raise NotSupportedError(
                f"{self.name} has no closed-form pseudo-inverse; use invprior.methods.classical.Tikhonov instead")
        return self._pseudo_inverse(check_batch(y, self.range_shape, "measurement y", self.name))

    def _pseudo_inverse(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    @property
    def has_pseudo_inverse(self) -> bool:
        return type(self)._pseudo_inverse is not ForwardOperator._pseudo_inverse

    def norm(self, iterations: int = 200, rtol: float = 1e-7, seed: int = 0,
             dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> float:
        """Operator norm ``||A||_2`` by the power method on ``A^T A``, from a seeded random start."""
        if not self.is_linear:
            raise NonlinearOperatorError(f"{self.name} is nonlinear; the power-method norm needs a linear operator")
        gen = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn((1, *self.domain_shape), generator=gen, dtype=dtype).to(device)
        v = v / v.norm()
        estimate = 0.0
        for _ in range(iterations):
            w = self.adjoint(self(v))
            new = float(w.norm())
            if new == 0.0:
                return 0.0
            v = w / new
            if abs(new - estimate) <= rtol * new:
                estimate = new
                break
            estimate = new
        return math.sqrt(estimate)

    def _cast(self, key: str, tensor: Tensor, like: Tensor) -> Tensor:
        """``tensor`` on the device of ``like`` (and its dtype when floating), cached."""
        dtype = like.dtype if tensor.is_floating_point() else tensor.dtype
        cache_key = (key, like.device, dtype)
        if cache_key not in self._cast_cache:
            self._cast_cache[cache_key] = tensor.to(device=like.device, dtype=dtype)
        return self._cast_cache[cache_key]

    def rows(self, indices: Sequence[int]) -> ForwardOperator:
        """The operator that measures only the entries ``indices`` (strictly increasing) of the row axis
        (``row_axis``: CT: those projection angles; compressed sensing: those rows), e.g. to try a subset of the
        measurements (``invprior.design``). Operators with a cheaper restriction override this."""
        return RowSelection(self, indices)

    # -- algebra ------------------------------------------------------------------------
    def __matmul__(self, other: ForwardOperator) -> ForwardOperator:
        return ComposedOperator(self, other)

    def __mul__(self, scalar: float) -> ForwardOperator:
        if not isinstance(scalar, Real):
            return NotImplemented
        return ScaledOperator(self, float(scalar))

    __rmul__ = __mul__

    def __neg__(self) -> ForwardOperator:
        return ScaledOperator(self, -1.0)

    def __add__(self, other: ForwardOperator) -> ForwardOperator:
        if not isinstance(other, ForwardOperator):
            return NotImplemented
        return SumOperator(self, other)

    def __sub__(self, other: ForwardOperator) -> ForwardOperator:
        if not isinstance(other, ForwardOperator):
            return NotImplemented
        return SumOperator(self, ScaledOperator(other, -1.0))

    def __repr__(self) -> str:
        return f"{self.name}(domain_shape={self.domain_shape}, range_shape={self.range_shape})"


def row_indices(indices: Sequence[int], available: int, owner: str) -> tuple[int, ...]:
    """``indices`` checked: integers, strictly increasing, within ``0 .. available - 1``, at least one."""
    chosen = tuple(int(k) for k in indices)
    if not chosen or any(not 0 <= k < available for k in chosen) or any(b <= a for a, b in zip(chosen, chosen[1:])):
        raise ShapeError(f"{owner}: rows must be strictly increasing indices in 0..{available - 1}, got "
                         f"{list(indices)}")
    return chosen


def row_axis(range_shape: Shape) -> int:
    """The measurement axis whose entries are rows: the first after the channel axis (CT: angles), or the only
    axis of a one-axis measurement (compressed sensing)."""
    return 1 if len(range_shape) >= 2 else 0


class RowSelection(ForwardOperator):
    """``(S A)(x)``: the entries ``indices`` of ``A(x)`` along its row axis (``row_axis``); the adjoint puts ``y``
    back in those places of a zero measurement and applies ``A^T``."""

    def __init__(self, operator: ForwardOperator, indices: Sequence[int]) -> None:
        self.operator = operator
        self.axis = row_axis(operator.range_shape)
        self.indices = row_indices(indices, operator.range_shape[self.axis], operator.name)
        self.is_linear = operator.is_linear
        range_shape = list(operator.range_shape)
        range_shape[self.axis] = len(self.indices)
        super().__init__(operator.domain_shape, tuple(range_shape))

    @property
    def name(self) -> str:
        return f"{self.operator.name}.rows({len(self.indices)})"

    def _index(self, like: Tensor) -> Tensor:
        return self._cast("indices", torch.tensor(self.indices), like)  # int64 stays int64

    def forward(self, x: Tensor) -> Tensor:
        return self.operator.forward(x).index_select(self.axis + 1, self._index(x))

    def _adjoint(self, y: Tensor) -> Tensor:
        full = y.new_zeros((y.shape[0], *self.operator.range_shape))
        return self.operator._adjoint(full.index_copy(self.axis + 1, self._index(y), y))


class ComposedOperator(ForwardOperator):
    """``(A @ B)(x) = A(B(x))``; its adjoint is ``B^T A^T``."""

    def __init__(self, outer: ForwardOperator, inner: ForwardOperator) -> None:
        if tuple(inner.range_shape) != tuple(outer.domain_shape):
            raise ShapeError(
                f"cannot compose {outer.name} @ {inner.name}: range {inner.range_shape} "
                f"does not match domain {outer.domain_shape}"
            )
        super().__init__(inner.domain_shape, outer.range_shape)
        self.outer, self.inner = outer, inner
        self.is_linear = outer.is_linear and inner.is_linear

    @property
    def name(self) -> str:
        return f"({self.outer.name} @ {self.inner.name})"

    def forward(self, x: Tensor) -> Tensor:
        return self.outer.forward(self.inner.forward(x))

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.inner._adjoint(self.outer._adjoint(y))


class ScaledOperator(ForwardOperator):
    """``(c A)(x) = c A(x)`` for a real scalar ``c``."""

    def __init__(self, operator: ForwardOperator, scalar: float) -> None:
        super().__init__(operator.domain_shape, operator.range_shape)
        self.operator, self.scalar = operator, scalar
        self.is_linear = operator.is_linear

    @property
    def name(self) -> str:
        return f"{self.scalar:g} * {self.operator.name}"

    def forward(self, x: Tensor) -> Tensor:
        return self.scalar * self.operator.forward(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.scalar * self.operator._adjoint(y)

    @property
    def has_pseudo_inverse(self) -> bool:
        return self.operator.has_pseudo_inverse and self.scalar != 0.0

    def _pseudo_inverse(self, y: Tensor) -> Tensor:
        return self.operator._pseudo_inverse(y) / self.scalar


class SumOperator(ForwardOperator):
    """``(A + B)(x) = A(x) + B(x)`` for operators with equal domains and ranges."""

    def __init__(self, left: ForwardOperator, right: ForwardOperator) -> None:
        if left.domain_shape != right.domain_shape or left.range_shape != right.range_shape:
            raise ShapeError(
                f"cannot add {left.name} {left.domain_shape}->{left.range_shape} and "
                f"{right.name} {right.domain_shape}->{right.range_shape}: shapes differ"
            )
        super().__init__(left.domain_shape, left.range_shape)
        self.left, self.right = left, right
        self.is_linear = left.is_linear and right.is_linear

    @property
    def name(self) -> str:
        return f"({self.left.name} + {self.right.name})"

    def forward(self, x: Tensor) -> Tensor:
        return self.left.forward(x) + self.right.forward(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.left._adjoint(y) + self.right._adjoint(y)


class AdjointOperator(ForwardOperator):
    """``A^T`` as an operator; its adjoint is ``A`` again."""

    is_linear = True

    def __init__(self, operator: ForwardOperator) -> None:
        if not operator.is_linear:
            raise NonlinearOperatorError(f"{operator.name} is nonlinear and has no adjoint")
        super().__init__(operator.range_shape, operator.domain_shape)
        self.operator = operator

    @property
    def name(self) -> str:
        return f"{self.operator.name}^T"

    def forward(self, x: Tensor) -> Tensor:
        return self.operator._adjoint(x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return self.operator.forward(y)

    @property
    def T(self) -> ForwardOperator:
        return self.operator


class TangentOperator(ForwardOperator):
    """``v -> A'(x) v`` of a nonlinear operator at ``x`` (``torch.func.jvp``); adjoint by ``torch.func.vjp``."""

    is_linear = True

    def __init__(self, operator: ForwardOperator, x: Tensor) -> None:
        super().__init__(operator.domain_shape, operator.range_shape)
        self.operator = operator
        self.point = check_batch(x, operator.domain_shape, "linearisation point x", operator.name).detach()
        if self.point.shape[0] != 1:
            raise ShapeError(f"{operator.name}: linearise at one image, got a batch of {self.point.shape[0]}")

    @property
    def name(self) -> str:
        return f"{self.operator.name}'"

    def _at(self, v: Tensor) -> Tensor:
        return self.point.to(v).expand_as(v).contiguous()

    def forward(self, x: Tensor) -> Tensor:
        return torch.func.jvp(self.operator.forward, (self._at(x),), (x,))[1]

    def _adjoint(self, y: Tensor) -> Tensor:
        point = self._at(y.new_zeros(y.shape[0], *self.domain_shape))
        pullback = torch.func.vjp(self.operator.forward, point)[1]
        return pullback(y)[0]


def adjoint_mismatch(operator: ForwardOperator, dtype: torch.dtype = torch.float64, batch: int = 2,
                     seed: int = 0, device: torch.device | str = "cpu") -> float:
    """Relative mismatch ``|<Ax, y> - <x, A^T y>| / (||Ax|| ||y||)`` on seeded random inputs."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn((batch, *operator.domain_shape), generator=gen, dtype=dtype).to(device)
    y = torch.randn((batch, *operator.range_shape), generator=gen, dtype=dtype).to(device)
    ax, aty = operator(x), operator.adjoint(y)
    lhs, rhs = (ax * y).sum(), (x * aty).sum()
    return float((lhs - rhs).abs() / (ax.norm() * y.norm()))
