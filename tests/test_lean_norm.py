"""GroupNorm's lean tangent rule against torch's own rule and finite differences, and its guard."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import jvp, vjp, vmap

from invprior.generators.unet import UNet
from invprior.posterior.lean_norm import LeanGroupNorm, _check_lean_rule, lean_rule_active, with_lean_group_norms
from invprior.posterior.linearization import Linearization


def _layer_and_input(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    layer = LeanGroupNorm(3, 6).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(6, generator=g, dtype=torch.float64))
        layer.bias.copy_(torch.randn(6, generator=g, dtype=torch.float64))
    x = 2.0 + 3.0 * torch.randn(2, 6, 5, 4, generator=g, dtype=torch.float64)
    return layer, x, g


def _torch_rule(x, weight, bias):
    return F.group_norm(x, 3, weight, bias, 1e-5)


def _lean_rule(layer):
    return lambda x, weight, bias: torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))


def test_lean_group_norm_outputs_and_tangents_match_torch_and_finite_differences():
    layer, x, g = _layer_and_input()
    primals = (x, layer.weight.detach(), layer.bias.detach())
    tangents = tuple(torch.randn(p.shape, generator=g, dtype=torch.float64) for p in primals)
    out_torch, dy_torch = jvp(_torch_rule, primals, tangents)
    out_lean, dy_lean = jvp(_lean_rule(layer), primals, tangents)
    assert torch.equal(out_lean, out_torch)
    torch.testing.assert_close(dy_lean, dy_torch, rtol=1e-12, atol=1e-12)
    h = 1e-6
    plus = _torch_rule(*(p + h * t for p, t in zip(primals, tangents)))
    minus = _torch_rule(*(p - h * t for p, t in zip(primals, tangents)))
    torch.testing.assert_close(dy_lean, (plus - minus) / (2 * h), rtol=1e-6, atol=1e-7)
    # only the input varies (the linearised generator's case): the weight and bias tangents are absent
    _, dx_only = jvp(lambda x: layer(x), (x,), (tangents[0],))
    _, dx_torch = jvp(lambda x: _torch_rule(x, *primals[1:]), (x,), (tangents[0],))
    torch.testing.assert_close(dx_only, dx_torch, rtol=1e-12, atol=1e-12)


def test_lean_group_norm_pullback_and_batched_tangents_match_torch():
    layer, x, g = _layer_and_input(1)
    primals = (x, layer.weight.detach(), layer.bias.detach())
    cotangent = torch.randn(x.shape, generator=g, dtype=torch.float64)
    pulled_torch = vjp(_torch_rule, *primals)[1](cotangent)
    pulled_lean = vjp(_lean_rule(layer), *primals)[1](cotangent)
    for lean, reference in zip(pulled_lean, pulled_torch):
        torch.testing.assert_close(lean, reference, rtol=1e-12, atol=1e-12)
    batch = torch.randn(4, *x.shape, generator=g, dtype=torch.float64)
    lean = vmap(lambda t: jvp(lambda x: layer(x), (x,), (t,))[1])(batch)
    reference = vmap(lambda t: jvp(lambda x: _torch_rule(x, *primals[1:]), (x,), (t,))[1])(batch)
    torch.testing.assert_close(lean, reference, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pre_sigmoid", [False, True])
def test_linearization_with_lean_norms_gives_torch_products(pre_sigmoid):
    torch.manual_seed(0)
    net = UNet(preset="small", channels=8, input_channels=2, sigmoid=True).double().eval()
    z = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    lean = Linearization(net, z, pre_sigmoid=pre_sigmoid)
    plain = Linearization(net, z, pre_sigmoid=pre_sigmoid, lean_norms=False)
    assert any(isinstance(m, LeanGroupNorm) for m in lean._tangent_module.modules())
    assert not any(isinstance(m, LeanGroupNorm) for m in net.modules())  # the generator itself is unchanged
    assert torch.equal(lean.output, plain.output)
    v = torch.randn(3, lean.num_parameters, dtype=torch.float64)
    u = torch.randn(3, *lean.output.shape[1:], dtype=torch.float64)
    torch.testing.assert_close(lean.jvps(v), plain.jvps(v), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(lean.vjps(u), plain.vjps(u), rtol=1e-10, atol=1e-12)


def test_with_lean_group_norms_keeps_state_and_skips_networks_without_group_norm():
    net = UNet(preset="small", channels=8, input_channels=2)
    lean = with_lean_group_norms(net)
    assert lean is not net
    assert {k: v.shape for k, v in lean.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert all(torch.equal(lean.state_dict()[k], v) for k, v in net.state_dict().items())
    assert sum(isinstance(m, LeanGroupNorm) for m in lean.modules()) == sum(
        isinstance(m, nn.GroupNorm) for m in net.modules())
    plain = UNet(preset="small", channels=8, input_channels=2, norm_groups=0)
    assert with_lean_group_norms(plain) is plain


@pytest.fixture
def fresh_check():
    """The guard's cached result is cleared before and after the test (so a patched op is checked anew)."""
    lean_rule_active.cache_clear()
    yield
    lean_rule_active.cache_clear()


def test_guard_finds_the_private_op_agreeing_on_this_torch(fresh_check):
    assert _check_lean_rule() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lean_rule_active()
        net = UNet(preset="small", channels=8, input_channels=2)
        assert any(isinstance(m, LeanGroupNorm) for m in with_lean_group_norms(net).modules())


def _scaled(real, factor):
    return lambda *args: tuple(t if t is None else t * factor for t in real(*args))


def _raises(error):
    def op(*args):
        raise error("native_group_norm_backward: changed")
    return op


@pytest.mark.parametrize("broken", ["zeros", "slightly_off", "missing", "runtime_error"])
def test_guard_falls_back_to_torch_rules_when_the_private_op_is_wrong(broken, fresh_check, monkeypatch):
    real = torch.ops.aten.native_group_norm_backward
    fake = {"zeros": _scaled(real, 0.0), "slightly_off": _scaled(real, 1 + 1e-7),
            "missing": _raises(AttributeError), "runtime_error": _raises(RuntimeError)}[broken]
    monkeypatch.setattr(torch.ops.aten, "native_group_norm_backward", fake)
    torch.manual_seed(0)
    net = UNet(preset="small", channels=8, input_channels=2, sigmoid=True).double().eval()
    z = torch.randn(1, 2, 16, 16, dtype=torch.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _check_lean_rule() is not None
        lean = Linearization(net, z)
        layer, x, g = _layer_and_input(2)  # later uses: no second check, no second warning
        assert with_lean_group_norms(net) is net
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1, [str(w.message) for w in runtime]
    assert torch.__version__ in str(runtime[0].message) and "lean rule is off" in str(runtime[0].message)
    assert not lean_rule_active()
    assert not any(isinstance(m, LeanGroupNorm) for m in lean._tangent_module.modules())
    # products against torch's own rules: a plain linearisation, torch.func.jvp and torch.autograd.grad
    plain = Linearization(net, z, lean_norms=False)
    v = torch.randn(2, lean.num_parameters, dtype=torch.float64)
    u = torch.randn(2, *lean.output.shape[1:], dtype=torch.float64)
    jvps, vjps = lean.jvps(v), lean.vjps(u)
    torch.testing.assert_close(jvps, plain.jvps(v), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vjps, plain.vjps(u), rtol=1e-12, atol=1e-12)
    theta = [t.clone().requires_grad_() for t in lean.theta]
    output = lean._apply(theta)
    for k in range(2):
        direct = jvp(lean._apply, (lean.theta,), (lean.split(v[k]),))[1]
        torch.testing.assert_close(jvps[k], direct[0], rtol=1e-10, atol=1e-12)
        grads = torch.autograd.grad(output, theta, u[k : k + 1], retain_graph=True)
        torch.testing.assert_close(vjps[k], torch.cat([t.reshape(-1) for t in grads]), rtol=1e-10, atol=1e-12)
    # a LeanGroupNorm built now is plain GroupNorm: its pullback does not go through the broken op
    primals = (x, layer.weight.detach(), layer.bias.detach())
    cotangent = torch.randn(x.shape, generator=g, dtype=torch.float64)
    for lean_grad, torch_grad in zip(vjp(_lean_rule(layer), *primals)[1](cotangent),
                                     vjp(_torch_rule, *primals)[1](cotangent)):
        torch.testing.assert_close(lean_grad, torch_grad, rtol=1e-12, atol=1e-12)
