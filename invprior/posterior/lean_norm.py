"""GroupNorm with a lean tangent rule, for the Jacobian products of a linearised generator.

With ``x_hat = (x - mean_g x) / sqrt(var_g x + eps)`` per group ``g``, GroupNorm's derivative is a
projection: ``d y = gamma / sqrt(var_g + eps) * (dx - mean_g(dx) - x_hat mean_g(x_hat dx)) + x_hat d gamma + d beta``.
It is symmetric in ``dx``, so the pullback is the same projection applied after ``gamma``.
A tangent costs two reductions and two fused multiply-adds instead of torch's generic forward-mode rule;
outputs are torch's own, and the pullback is torch's private ``aten.native_group_norm_backward``. Because a
private op may change between torch releases, the first use (``lean_rule_active``, once per process) checks
the pullback and the tangent rule against torch's generic rules on a tiny float64 problem; if they disagree
or the op fails, one ``RuntimeWarning`` says so and GroupNorm layers keep torch's rules (same products,
slower). Measured speed: ``benchmarks/jacobian_products.py``.
"""

from __future__ import annotations

import copy
import functools
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CHECK_TOLERANCE = 1e-10


def _tangent(dx: Tensor, x_hat: Tensor, scale: Tensor, scaled_x_hat: Tensor, groups: int) -> Tensor:
    """``scale * (dx - mean_g(dx) - x_hat mean_g(x_hat dx))`` for ``(N, C, ...)`` tensors (``scale`` per channel,
    ``scaled_x_hat = scale * x_hat``): two reductions and two fused multiply-adds."""
    n, c = dx.shape[:2]
    v = dx.reshape(n, groups, c // groups, -1)
    s = scale.reshape(n, groups, c // groups, 1)
    size = v[0, 0].numel()
    mean = v.sum((-2, -1), keepdim=True) / size
    mean_product = (torch.linalg.vecdot(v.reshape(n, groups, -1), x_hat.reshape(n, groups, -1)) / size).view(
        n, groups, 1, 1)
    out = torch.addcmul(-(s * mean), v, s)
    out = out.addcmul(scaled_x_hat.reshape(v.shape), mean_product, value=-1.0)
    return out.reshape(dx.shape)


class _GroupNorm(torch.autograd.Function):
    """``F.group_norm`` of an ``(N, C, ...)`` input whose forward-mode rule is ``_tangent``. Besides the output it
    returns ``x_hat``, the per-channel factor ``gamma / sqrt(var_g + eps)``, their product, and the group statistics the
    pullback needs (all non-differentiable), so that every saved tensor is an input or an output."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor, groups: int, eps: float):
        n, c = x.shape[:2]
        var, mean = torch.var_mean(x.reshape(n, groups, -1), dim=-1, unbiased=False)
        rstd = (var + eps).rsqrt()
        per_channel = lambda t: t.repeat_interleave(c // groups, dim=1).view(n, c, *[1] * (x.ndim - 2))  # noqa: E731
        x_hat = (x - per_channel(mean)) * per_channel(rstd)
        scale = weight.view(1, c, *[1] * (x.ndim - 2)) * per_channel(rstd)
        return F.group_norm(x, groups, weight, bias, eps), x_hat, scale, x_hat * scale, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, weight, _, groups, _ = inputs
        _, x_hat, scale, scaled_x_hat, mean, rstd = output
        ctx.groups = groups
        ctx.mark_non_differentiable(x_hat, scale, scaled_x_hat, mean, rstd)
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.save_for_forward(x_hat, scale, scaled_x_hat)

    @staticmethod
    def jvp(ctx, dx: Tensor | None, dweight: Tensor | None, dbias: Tensor | None, _groups, _eps):
        x_hat, scale, scaled_x_hat = ctx.saved_tensors
        broadcast = (1, x_hat.shape[1], *[1] * (x_hat.ndim - 2))
        dy = torch.zeros_like(x_hat) if dx is None else _tangent(dx, x_hat, scale, scaled_x_hat, ctx.groups)
        if dweight is not None:
            dy = dy + x_hat * dweight.view(broadcast)
        if dbias is not None:
            dy = dy + dbias.view(broadcast)
        return dy, None, None, None, None, None

    @staticmethod
    def backward(ctx, grad: Tensor, *_):
        x, mean, rstd, weight = ctx.saved_tensors
        n, c = x.shape[:2]
        wanted = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        dx, dweight, dbias = torch.ops.aten.native_group_norm_backward(
            grad, x, mean, rstd, weight, n, c, x[0, 0].numel(), ctx.groups, wanted)
        return dx, dweight, dbias, None, None


def _check_lean_rule() -> str | None:
    """Why ``_GroupNorm``'s pullback (through the private op) or tangent rule (``_tangent``) disagrees with torch's
    generic rules for ``F.group_norm`` on a random float64 ``(2, 4, 3, 3)`` input with 2 groups; ``None`` if they
    agree to ``_CHECK_TOLERANCE``. Uses its own random generator (the global one is untouched)."""
    g = torch.Generator().manual_seed(0)
    x, dx, cotangent = (torch.randn(2, 4, 3, 3, generator=g, dtype=torch.float64) for _ in range(3))
    weight, bias, dweight, dbias = (torch.randn(4, generator=g, dtype=torch.float64) for _ in range(4))
    rules = {"lean": lambda *p: _GroupNorm.apply(*p, 2, 1e-5)[0], "torch": lambda *p: F.group_norm(p[0], 2, *p[1:])}
    try:  # torch's own warnings on the way (e.g. deprecations in lazily imported modules) are not the check's concern
        with torch.inference_mode(False), torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pulled, pushed = {}, {}
            for name, rule in rules.items():
                leaves = [t.detach().requires_grad_() for t in (x, weight, bias)]
                pulled[name] = torch.autograd.grad((rule(*leaves) * cotangent).sum(), leaves)
                pushed[name] = torch.func.jvp(rule, (x, weight, bias), (dx, dweight, dbias))
    except Exception as error:  # a missing or changed private op: AttributeError, RuntimeError, TypeError, ...
        return f"raised {type(error).__name__}: {error}"
    close = functools.partial(torch.allclose, rtol=_CHECK_TOLERANCE, atol=_CHECK_TOLERANCE)
    if not all(close(a, b) for a, b in zip(pulled["lean"], pulled["torch"])):
        return "gives pullbacks that differ from torch's autograd of F.group_norm"
    if not all(close(a, b) for a, b in zip(pushed["lean"], pushed["torch"])):
        return "gives tangents that differ from torch.func.jvp of F.group_norm"
    return None


@functools.cache
def lean_rule_active() -> bool:
    """Whether ``LeanGroupNorm`` uses its own rules: ``_check_lean_rule`` run once per process (a few ms) and cached;
    on failure one ``RuntimeWarning`` and ``False``. ``lean_rule_active.cache_clear()`` forces a new check."""
    problem = _check_lean_rule()
    if problem is not None:
        warnings.warn(f"torch {torch.__version__}: the lean GroupNorm rule (torch.ops.aten.native_group_norm_backward "
                      f"and its tangent rule) {problem}; the lean rule is off and GroupNorm keeps torch's own rules "
                      f"(Jacobian products are correct, just slower).", RuntimeWarning, stacklevel=3)
    return problem is None


class LeanGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (affine) whose Jacobian-vector products use the projection above; same state and outputs.
    Plain ``nn.GroupNorm`` when ``lean_rule_active()`` is false (checked at construction, so before any transform)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        lean_rule_active()

    def forward(self, x: Tensor) -> Tensor:
        if not lean_rule_active():
            return super().forward(x)
        return _GroupNorm.apply(x, self.weight, self.bias, self.num_groups, self.eps)[0]


def with_lean_group_norms(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in which every affine ``nn.GroupNorm`` is a ``LeanGroupNorm``
    (same parameter names and values); ``module`` itself is unchanged (and returned when it has none, or when
    ``lean_rule_active()`` is false)."""
    if not any(type(child) is nn.GroupNorm and child.affine for child in module.modules()) or not lean_rule_active():
        return module
    lean = copy.deepcopy(module)
    for parent in lean.modules():
        for name, child in list(parent.named_children()):
            if type(child) is nn.GroupNorm and child.affine:
                replacement = LeanGroupNorm(child.num_groups, child.num_channels, child.eps, affine=True)
                replacement.load_state_dict(child.state_dict())
                setattr(parent, name, replacement.to(child.weight))
    return lean
