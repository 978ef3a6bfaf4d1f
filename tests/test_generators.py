"""Generators: shapes at any size, presets, inputs, and the two-layer model against its formula."""

from __future__ import annotations

import pytest
import scipy.linalg
import torch

from invprior import GaussianNoise, InverseProblem, registry
from invprior.errors import ConfigError
from invprior.generators.deep_decoder import DeepDecoder
from invprior.generators.two_layer import TwoLayerGenerator
from invprior.generators.unet import PRESETS, UNet


def _problem(size: int, operator: str = "denoising", **params) -> InverseProblem:
    op = registry.get("operators", operator, size=size, **params)
    x = registry.get("datasets", "ellipses", size=size, seed=0)
    return InverseProblem.simulate(op, x, GaussianNoise(std=0.05), seed=0)


@pytest.mark.parametrize("size", [28, 33, 64])
def test_unet_is_fully_convolutional(size):
    net = UNet(preset="small", channels=8)
    z = net.make_input(_problem(size), seed=1)
    assert z.shape == (1, 1, size, size) and z.std().item() == pytest.approx(0.1, rel=0.2)
    assert net(z).shape == (1, 1, size, size)


def test_unet_presets_and_sigmoid():
    assert PRESETS["small"] == {"scales": 3, "channels": 32, "skip_channels": 4}
    assert PRESETS["large"]["scales"] == 5 and PRESETS["large"]["channels"] == 128
    net = UNet(preset="large", channels=8)  # explicit arguments override the preset
    assert net.config["scales"] == 5 and net.config["channels"] == [8] * 5 and net.config["skip_channels"] == [4] * 4
    net = UNet(preset="small", channels=[4, 8, 16], skip_channels=[0, 2], sigmoid=True)
    z = torch.randn(1, 1, 20, 20)
    out = net(z)
    assert ((out > 0) & (out < 1)).all()
    assert torch.allclose(out, torch.sigmoid(net.forward_pre_sigmoid(z)))
    with pytest.raises(ConfigError, match="preset"):
        UNet(preset="huge")
    with pytest.raises(ConfigError, match="skip_channels"):
        UNet(preset="small", skip_channels=[1, 2, 3])


def test_operator_based_inputs():
    problem = _problem(32, "ct_parallel", num_angles=20)
    op = problem.operator
    fbp = UNet(preset="small", channels=4, input="fbp").make_input(problem)
    assert torch.allclose(fbp, op.fbp(problem.y))
    adjoint = UNet(preset="small", channels=4, input="adjoint").make_input(problem)
    assert torch.allclose(adjoint, op.adjoint(problem.y) / op.norm(dtype=problem.y.dtype) ** 2, rtol=1e-4)
    assert UNet(preset="small", channels=4, input="fbp")(fbp).shape == (1, 1, 32, 32)
    summed = registry.get("operators", "cs_gaussian", size=8) + registry.get("operators", "cs_gaussian", size=8, seed=1)
    with pytest.raises(ConfigError, match="pseudo-inverse"):  # a sum of operators has no closed-form inverse
        UNet(preset="small", input="fbp").make_input(InverseProblem(summed, torch.zeros(1, *summed.range_shape)))


def test_deep_decoder_any_size_and_under_parameterised():
    net = DeepDecoder(size=(37, 29), channels=16, layers=3)
    z = net.make_input(_problem(8), seed=0)
    assert z.shape == (1, 16, 5, 4)
    assert net(z).shape == (1, 1, 37, 29)
    assert sum(p.numel() for p in net.parameters()) < 37 * 29


def test_two_layer_generator_matches_its_formula():
    net = TwoLayerGenerator(size=6, width=8, kernel_width=1.5, seed=3).double()
    u = net.kernel.numpy()
    circulant = torch.from_numpy(scipy.linalg.circulant(u))  # U[i, j] = u[(i - j) mod n]
    expected = torch.relu(circulant @ net.weights) @ net.v
    assert torch.allclose(net(torch.zeros(1, 0, dtype=torch.float64)).flatten(), expected, atol=1e-12)
    assert net.v.tolist() == pytest.approx([8 ** -0.5] * 4 + [-(8 ** -0.5)] * 4)
    assert float(net.kernel.norm()) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="even"):
        TwoLayerGenerator(width=5)


def test_every_registered_generator_builds_with_defaults():
    for name in registry.names("generators"):
        net = registry.get("generators", name)
        z = net.make_input(_problem(net.output_shape[-1] if net.output_shape else 16))
        assert net(z).ndim == 4
