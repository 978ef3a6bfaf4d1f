"""Units and prior knowledge: the data scale, results that follow the data's units, image constraints."""

from __future__ import annotations

import pytest
import torch

from invprior import GaussianNoise, InverseProblem, registry
from invprior.core.constraints import ImageConstraints
from invprior.core.operator import ForwardOperator
from invprior.core.scaling import data_scale
from invprior.errors import ConfigError, ShapeError
from invprior.generators.output_map import LEAK, OutputMap
from invprior.generators.unet import UNet
from invprior.methods.classical import TVLeastSquares
from invprior.methods.dip import DIP


class _Blur(ForwardOperator):
    """A linear operator without a pseudo-inverse: a 3-tap average along the rows."""

    is_linear = True

    def __init__(self, size: int) -> None:
        super().__init__((1, size, size), (1, size, size))

    def forward(self, x):
        return (x + x.roll(1, -1) + x.roll(-1, -1)) / 3

    def _adjoint(self, y):
        return (y + y.roll(-1, -1) + y.roll(1, -1)) / 3


def _problem(size: int = 24) -> InverseProblem:
    op = registry.get("operators", "inpainting", size=size, missing_fraction=0.3, seed=0)
    x = registry.get("datasets", "ellipses", size=size, seed=0, dtype=torch.float64)
    return InverseProblem.simulate(op, x, GaussianNoise(std=0.05), seed=0)


def test_data_scale_follows_the_units_and_is_order_one_for_unit_images():
    problem = _problem()
    scale = float(data_scale(problem)[0])
    assert 0.5 < scale < 1.5  # ellipses in [0, 1]
    assert float(data_scale(problem.scaled(1000.0))[0]) == pytest.approx(1000 * scale, rel=1e-12)
    blurred = InverseProblem(_Blur(24), _Blur(24)(problem.x_true))
    ones = torch.ones(1, 1, 24, 24, dtype=torch.float64)
    expected = float(blurred.y.norm() / _Blur(24)(ones).norm())  # ||y|| / ||A 1||
    assert float(data_scale(blurred)[0]) == pytest.approx(expected)
    assert float(data_scale(blurred.scaled(0.01))[0]) == pytest.approx(0.01 * expected)
    assert data_scale(InverseProblem(_Blur(24), torch.zeros(1, 1, 24, 24))).tolist() == [1.0]


def test_tv_and_dip_give_the_same_image_in_other_units():
    problem = _problem()
    tv = TVLeastSquares(iterations=100, grid_size=4)
    dip = DIP(generator_params={"preset": "small", "channels": 8}, weight="auto", stopping="fixed",
              stopping_params={"iterations": 25}, lr=1e-2)
    for method in (tv, dip):
        base = method.reconstruct(problem, progress=False).image
        for factor in (1024.0, 1e-3):  # a power of two scales exactly; 1e-3 within rounding
            other = method.reconstruct(problem.scaled(factor), progress=False).image
            torch.testing.assert_close(other / factor, base, rtol=1e-6, atol=1e-6 * float(base.abs().max()))


def test_without_normalisation_dip_depends_on_the_units():
    problem = _problem()
    dip = DIP(generator_params={"preset": "small", "channels": 8}, stopping="fixed", stopping_params={"iterations": 25},
              lr=1e-2, weight=1e-3, init="none", normalise=False)  # the network alone meets the units
    base = dip.reconstruct(problem, progress=False).image
    other = dip.reconstruct(problem.scaled(1000.0), progress=False).image / 1000
    assert float((other - base).norm() / base.norm()) > 0.1  # the check above can fail


def test_constraints_project_and_scale():
    support = torch.zeros(4, 4, dtype=torch.bool)
    support[1:3, 1:3] = True
    c = ImageConstraints(-1.0, 2.0, support)
    x = torch.tensor([[-5.0, 0.5, 3.0, 1.0]]).repeat(4, 1)[None, None]
    projected = c.project(x)
    assert projected[0, 0, 1].tolist() == [0.0, 0.5, 2.0, 0.0] and projected[0, 0, 0].abs().sum() == 0
    assert float(projected.min()) >= -1.0
    s = 7.0  # P(s u) = s P_{c/s}(u)
    torch.testing.assert_close(c.project(s * x), s * c.scaled(1 / s).project(x))
    with pytest.raises(ConfigError, match="below upper"):
        ImageConstraints(1.0, 1.0)
    with pytest.raises(ConfigError, match="lower must be <= 0"):
        ImageConstraints(0.5, None, support)
    with pytest.raises(ConfigError, match="empty"):
        ImageConstraints(support=torch.zeros(3, 3))
    with pytest.raises(ShapeError, match=r"constraints.support has shape \(4, 4\)"):
        InverseProblem(registry.get("operators", "denoising", size=8), torch.zeros(1, 1, 8, 8), constraints=c)


def test_tv_and_dip_respect_bounds_and_support():
    problem = _problem()
    support = torch.zeros(24, 24, dtype=torch.bool)
    support[4:20, 3:21] = True
    problem.constraints = ImageConstraints(0.0, 0.6, support)
    tv = TVLeastSquares(iterations=80, grid_size=3).reconstruct(problem, progress=False).image
    assert float(tv.min()) >= 0.0 and float(tv.max()) == pytest.approx(0.6, abs=1e-6)  # exact; the bound is active
    assert float(tv[..., ~support].abs().max()) == 0.0
    dip = DIP(generator_params={"preset": "small", "channels": 8}, stopping="fixed", stopping_params={"iterations": 15},
              lr=1e-2).reconstruct(problem, progress=False)
    network = dip.networks[0]
    assert isinstance(network.generator, OutputMap) and network.generator.constraints is problem.constraints
    fitted = network.kept()
    assert float(dip.image[..., ~support].abs().max()) == 0.0  # the support is exact
    with torch.no_grad():
        raw = fitted.scale * fitted.network(network.input)  # the network's own output, in the data's units
    clamped = raw.clamp(0.0, 0.6)
    # beyond a bound the image keeps LEAK of the network's excess (a gradient for every pixel), within it the value
    expected = (clamped + LEAK * (raw - clamped)) * support
    torch.testing.assert_close(dip.image, expected.to(dip.image.dtype), rtol=1e-5, atol=1e-6)
    assert bool((raw[..., support] > 0.6).any() or (raw[..., support] < 0).any())  # a bound is active


def test_output_map_wraps_any_generator():
    net = UNet(preset="small", channels=4).double()
    z = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mapped = OutputMap(net, 3.0, ImageConstraints(upper=0.1))
    raw = 3.0 * net(z)
    torch.testing.assert_close(mapped(z), raw.clamp(max=0.1) + LEAK * (raw - raw.clamp(max=0.1)))
    # every pixel passes its gradient on: in full inside the bounds, LEAK of it beyond (never frozen)
    slope = torch.where(raw < 0.1, 1.0, LEAK).to(z.dtype).detach()
    assert 0 < float((slope < 1).to(z.dtype).mean()) < 1
    (mapped_grad,) = torch.autograd.grad(mapped(z).sum(), net.outc.weight)
    (expected,) = torch.autograd.grad((raw * slope).sum(), net.outc.weight)
    torch.testing.assert_close(mapped_grad, expected)
    assert ImageConstraints(upper=0.1).project(raw).max() <= 0.1  # the exact projection, for TV
    assert set(mapped.state_dict()) == {f"network.{k}" for k in net.state_dict()}
    assert OutputMap(net, 1.0, ImageConstraints()).constraints is None  # nothing to enforce
