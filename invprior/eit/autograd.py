"""``eit_voltages``: the EIT forward model as a differentiable torch function.

The solve runs in float64 on the CPU (scipy's sparse LU); inputs on a GPU are copied there and the
result is returned on the input's device and dtype. Reverse mode is the adjoint method (one extra
solve with the stored factorisation, no dense inverse); forward mode (``torch.func.jvp``) applies the
Jacobian, built once per point from ``M`` adjoint solves and cached (the tangent is an opaque
functorch tensor, so the product must be a torch operation). Gradients flow to the conductivity
and, for the CEM, to the contact impedances.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from invprior.eit.model import EITModel
from invprior.errors import NotSupportedError, ShapeError

__all__ = ["eit_voltages"]


def _numpy(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


class _Voltages(torch.autograd.Function):
    # The float64 copies of (sigma, z) that forward solved for, and its solution (the LU), travel to
    # backward/jvp through model.last_inputs/last_solution: under torch.func the saved tensors are
    # wrappers without data, and keeping the solution here needs no cache hit later.
    @staticmethod
    def forward(sigma: Tensor, z: Tensor, model: EITModel) -> Tensor:  # type: ignore[override]
        # a copy: the cached solution must not share memory with a tensor the caller may modify
        return torch.from_numpy(model.voltages(_numpy(sigma), _numpy(z)).copy()).to(sigma)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.model = inputs[2]
        ctx.arrays, ctx.solution = ctx.model.last_inputs, ctx.model.last_solution

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        d_sigma, d_z = ctx.model.gradient(*ctx.arrays, _numpy(grad), contact=ctx.needs_input_grad[1],
                                          solution=ctx.solution)
        out_sigma = torch.from_numpy(d_sigma).to(grad) if ctx.needs_input_grad[0] else None
        out_z = torch.from_numpy(d_z).to(grad) if d_z is not None and ctx.needs_input_grad[1] else None
        return out_sigma, out_z, None

    @staticmethod
    def jvp(ctx, d_sigma: Tensor | None, d_z: Tensor | None, _model) -> Tensor:  # type: ignore[override]
        if d_z is not None and bool(d_z.ne(0).any()):
            raise NotSupportedError("EIT: forward-mode derivatives in the contact impedance are not provided; "
                                      "pass z without a tangent")
        if d_sigma is None:
            raise NotSupportedError("EIT: forward-mode derivatives need a tangent in the conductivity sigma")
        # under torch.func the tangent is a wrapper without data: apply the (cached) Jacobian with torch ops
        jacobian = torch.from_numpy(ctx.model.cached_jacobian(*ctx.arrays, solution=ctx.solution)).to(d_sigma)
        return (jacobian @ d_sigma).view(ctx.model.num_patterns, ctx.model.num_measurements)


def eit_voltages(model: EITModel, sigma: Tensor, z: Tensor | float = 0.01) -> Tensor:
    """Voltages ``(P, M)`` for element conductivities ``sigma`` (E,) and contact impedances ``z``
    (a number or (L,)), differentiable in both."""
    if not isinstance(sigma, Tensor) or sigma.ndim != 1:
        raise ShapeError(f"eit_voltages: sigma must be a 1-D tensor of element conductivities, got "
                        f"{type(sigma).__name__} {getattr(sigma, 'shape', '')}")
    z = torch.as_tensor(z, dtype=sigma.dtype, device=sigma.device)
    z = z.expand(model.electrodes) if z.ndim == 0 else z
    return _Voltages.apply(sigma, z, model)
