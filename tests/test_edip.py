"""Educated DIP: synthetic pairs, supervised pretraining, model files, fine-tuning speed-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from invprior import registry
from invprior.analysis.convergence import rise_time, steady_psnr
from invprior.config import parse_config
from invprior.core.noise import GaussianNoise
from invprior.core.operator import ForwardOperator
from invprior.core.problem import InverseProblem
from invprior.data.phantoms import random_ellipses
from invprior.data.synthetic import SyntheticPairs
from invprior.errors import ConfigError, StateFileError
from invprior.experiment import run
from invprior.methods import pretrain as pretrain_module
from invprior.methods.dip import DIP
from invprior.methods.edip import EDIP
from invprior.methods.pretrain import pretrain
from invprior.methods.pretrained import check_compatible, load_pretrained
from invprior.metrics import psnr

SIZE, ANGLES, NOISE = 32, 10, GaussianNoise(relative=0.05)
NET = {"preset": "small", "channels": 16}
# EDIP against DIP, iterations to the final PSNR of a 2000-iteration DIP on this phantom: 4.0x on one CPU, 1.85x
# and 2.2x in two runs on another, where the pretrained network differs (docs/edip.md)
SPEED_UP = 1.5


def _ct(size: int = SIZE, angles: int = ANGLES, **options):
    return registry.get("operators", "ct_parallel", size=size, num_angles=angles, **options)


@pytest.fixture(scope="module")
def operator():
    return _ct()


@pytest.fixture(scope="module")
def pretrained(operator, tmp_path_factory):
    """A small U-Net pretrained on 1024 pairs for 8 epochs (about 10 s on two cores)."""
    path = tmp_path_factory.mktemp("edip") / "ct32.pt"
    training = SyntheticPairs(operator, 1024, NOISE, seed=0).cache_in_memory()
    validation = SyntheticPairs(operator, 32, NOISE, seed=1).cache_in_memory()
    model = pretrain(training, validation, "unet", NET, epochs=8, batch_size=16, lr=3e-3, out=path, progress=False)
    return path, model


def _problem(operator, noise: GaussianNoise = NOISE, seed: int = 123) -> InverseProblem:
    x = random_ellipses(size=operator.domain_shape[-1], n=1, seed=seed)  # not in the training set
    return InverseProblem.simulate(operator, x, noise, seed=5)


# -- synthetic pairs -------------------------------------------------------------------------

def test_pairs_are_reproducible_whatever_the_batching(operator):
    pairs = SyntheticPairs(operator, 10, NOISE, seed=3)
    inputs, targets = pairs.batch([7, 2])
    for k, i in enumerate((7, 2)):
        single_input, single_target = pairs[i]
        assert torch.equal(single_target, targets[k])
        assert torch.allclose(single_input, inputs[k], atol=1e-6)
    other = SyntheticPairs(operator, 10, NOISE, seed=4)
    assert not torch.equal(other.targets([2]), pairs.targets([2]))
    assert float(targets.min()) >= 0.0 and float(targets.max()) <= 1.0 and float(targets.max()) > 0.05


def test_pairs_carry_the_target_noise_level_and_an_fbp_input(operator):
    pairs = SyntheticPairs(operator, 8, NOISE, seed=0)
    y, x = pairs.measurements(range(8))
    clean = operator(x)
    relative = (y - clean).flatten(1).norm(dim=1) / (clean.abs().flatten(1).mean(dim=1) * clean[0].numel() ** 0.5)
    assert torch.allclose(relative, torch.full_like(relative, NOISE.relative), rtol=0.1)
    inputs, targets = pairs.batch(range(8))
    assert torch.allclose(inputs, operator.fbp(y), atol=1e-5)
    assert float(psnr(inputs, targets).mean()) > 12.0  # FBP of 10 angles: a usable but poor input



def test_pairs_are_zero_outside_a_support_and_unchanged_inside(operator):
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    disc = (yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2 <= (SIZE / 2) ** 2
    plain, masked = SyntheticPairs(operator, 4, NOISE, seed=2), SyntheticPairs(operator, 4, NOISE, seed=2, support=disc)
    free, inside = plain.targets(range(4)), masked.targets(range(4))
    assert torch.equal(inside[..., disc], free[..., disc]) and not inside[..., ~disc].any()
    assert free[..., ~disc].any()  # the test would pass trivially otherwise
    fine = SyntheticPairs(operator, 2, NOISE, seed=2, support=disc, fine_factor=2)
    assert not fine.measurements(range(2))[1][..., ~disc].any()
    with pytest.raises(ConfigError, match="support"):
        SyntheticPairs(operator, 4, NOISE, support=disc[:-1])

def test_fine_grid_pairs_average_the_fine_phantom(operator):
    pairs = SyntheticPairs(operator, 2, NOISE, seed=0, fine_factor=2)
    _, targets = pairs.measurements([0, 1])
    coarse = SyntheticPairs(operator, 2, NOISE, seed=0).targets([0, 1])
    assert targets.shape == coarse.shape
    # the same continuous object at two resolutions: close, but not identical (edges are averaged)
    assert 0 < float((targets - coarse).abs().mean()) < 0.05


class _NoInverse(ForwardOperator):
    is_linear = True

    def __init__(self) -> None:
        super().__init__((1, 8, 8), (1, 8, 8))

    def forward(self, x):
        return 2 * x

    def _adjoint(self, y):
        return 2 * y


def test_bad_pair_requests_are_refused(operator, tmp_path):
    with pytest.raises(ConfigError, match="pseudo-inverse"):
        SyntheticPairs(_NoInverse(), 4, NOISE)
    assert SyntheticPairs(_NoInverse(), 4, NOISE, input="adjoint").batch([0])[0].shape == (1, 1, 8, 8)
    with pytest.raises(ConfigError, match="not 'noise'"):
        SyntheticPairs(operator, 4, NOISE, input="noise")
    with pytest.raises(ConfigError, match="on_grid"):
        SyntheticPairs(_NoInverse(), 4, NOISE, input="adjoint", fine_factor=2)
    with pytest.raises(IndexError, match="out of range"):
        SyntheticPairs(operator, 4, NOISE).batch([4])
    with pytest.raises(ConfigError, match="intensity_range"):
        SyntheticPairs(operator, 4, NOISE, intensity_range=(0.5, 0.1))


def test_pairs_cache_round_trip_and_mismatch(operator, tmp_path):
    path = tmp_path / "pairs.pt"
    first = SyntheticPairs(operator, 6, NOISE, seed=2).cache(path)
    again = SyntheticPairs(operator, 6, NOISE, seed=2).cache(path)
    assert torch.equal(first.batch(range(6))[0], again.batch(range(6))[0])
    assert torch.allclose(again.batch([4])[0], SyntheticPairs(operator, 6, NOISE, seed=2).batch([4])[0], atol=1e-6)
    with pytest.raises(ConfigError, match="holds another set"):
        SyntheticPairs(operator, 6, NOISE, seed=3).cache(path)


# -- pretraining -------------------------------------------------------------------------------

def test_pretraining_beats_the_fbp_input_on_held_out_phantoms(pretrained):
    _, model = pretrained
    history = model.history
    # measured: 23.48 dB against 21.11 dB for the FBP input (43 % lower mean squared error)
    assert history["val_psnr"][-1] > history["val_input_psnr"][-1] + 1.5, history
    assert history["val_psnr"][-1] > history["val_psnr"][0] + 2.0
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]



def test_pretraining_on_signed_phantoms_through_the_eit_operator_beats_its_one_step_input():
    from invprior.eit import EIT
    op = EIT(size=32, h=0.1, electrodes=16, parametrization="exp", difference=True)
    xs, ys = op.to_mesh.pixel_centres()
    disc = torch.from_numpy(np.hypot(xs[:, None], ys[None, :]) <= 1.0)
    settings = dict(intensity_range=(-2.0, 1.0), value_range=(-2.0, 1.0), num_ellipses=(1, 2),
                    axis_range=(0.2, 0.45), support=disc)
    noise = GaussianNoise(relative=0.01)
    training = SyntheticPairs(op, 1024, noise, seed=0, **settings).cache_in_memory()
    validation = SyntheticPairs(op, 16, noise, seed=1, **settings).cache_in_memory()
    inputs, targets = training.batch(range(64))
    assert float(targets.min()) < -0.5 and float(targets.max()) > 0.5      # resistive and conductive ellipses
    assert not targets[..., ~disc].any()
    assert torch.allclose(inputs[:2], op.pseudo_inverse(training.measurements(range(2))[0].double()).float(), atol=1e-5)
    model = pretrain(training, validation, "unet", {"preset": "small", "channels": 8}, epochs=8, batch_size=16,
                     lr=3e-3, progress=False)
    # measured: 18.2 dB against 17.1 dB for the one-step input (about 15 s on two cores)
    assert model.history["val_psnr"][-1] > model.history["val_input_psnr"][-1] + 0.5, model.history
    with pytest.raises(ConfigError, match="value_range"):
        SyntheticPairs(op, 4, noise, intensity_range=(-2.0, 1.0))   # the default (0, 1) would clip them away
    with pytest.raises(ConfigError, match="restarts"):
        EDIP(pretrained="model.pt", restarts=1)

def test_pretraining_resumes_exactly_after_a_crash(operator, tmp_path, monkeypatch):
    training = SyntheticPairs(operator, 48, NOISE, seed=0).cache_in_memory()
    validation = SyntheticPairs(operator, 8, NOISE, seed=1).cache_in_memory()
    settings = dict(epochs=3, batch_size=16, lr=3e-3, progress=False)
    full = pretrain(training, validation, "unet", NET, **settings)
    path = tmp_path / "model.pt"
    calls = {"n": 0}
    original = pretrain_module.validation_psnr

    def crash_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(pretrain_module, "validation_psnr", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        pretrain(training, validation, "unet", NET, out=path, **settings)
    monkeypatch.setattr(pretrain_module, "validation_psnr", original)
    assert not path.exists() and path.with_name("model.pt.partial").exists()
    resumed = pretrain(training, validation, "unet", NET, out=path, **settings)
    assert path.exists() and not path.with_name("model.pt.partial").exists()
    for key, value in full.generator.state_dict().items():
        assert torch.equal(value, resumed.generator.state_dict()[key]), key
    assert resumed.history["val_psnr"] == full.history["val_psnr"]


def test_mixed_precision_pretraining_runs_and_learns(operator):
    """amp='on' on the CPU trains under bfloat16 autocast (the CUDA path uses the same code with a scaler
    for float16); the loss still falls."""
    training = SyntheticPairs(operator, 64, NOISE, seed=0).cache_in_memory()
    validation = SyntheticPairs(operator, 8, NOISE, seed=1).cache_in_memory()
    model = pretrain(training, validation, "unet", NET, epochs=3, batch_size=16, lr=3e-3, amp="on", progress=False)
    assert next(model.generator.parameters()).dtype == torch.float32  # weights stay in full precision
    assert model.history["train_loss"][-1] < 0.7 * model.history["train_loss"][0]
    assert model.metadata["settings"]["amp"] == "on"
    full = pretrain(training, validation, "unet", NET, epochs=3, batch_size=16, lr=3e-3, amp="off", progress=False)
    assert model.history["train_loss"] != full.history["train_loss"]  # bfloat16 rounding did take part
    assert model.history["train_loss"][-1] == pytest.approx(full.history["train_loss"][-1], rel=0.3)


def test_automatic_mixed_precision_follows_the_device(monkeypatch):
    """amp='auto': bfloat16 on CPUs that compute it natively, float32 on the others; 'off' never, 'on' always."""
    from invprior.methods import pretrain as module
    cpu = torch.device("cpu")
    assert module.autocast_dtype(cpu, "off") is None
    assert module.autocast_dtype(cpu, "on") == torch.bfloat16
    monkeypatch.setattr(module, "native_cpu_bfloat16", lambda: True)
    assert module.autocast_dtype(cpu, "auto") == torch.bfloat16
    monkeypatch.setattr(module, "native_cpu_bfloat16", lambda: False)
    assert module.autocast_dtype(cpu, "auto") is None
    assert module.autocast_dtype(torch.device("meta"), "auto") is None


def test_pretraining_refuses_bad_settings(operator):
    training = SyntheticPairs(operator, 4, NOISE, seed=0)
    with pytest.raises(ConfigError, match="held out"):
        pretrain(training, SyntheticPairs(operator, 4, NOISE, seed=0), epochs=1)
    with pytest.raises(ConfigError, match="schedule"):
        pretrain(training, SyntheticPairs(operator, 4, NOISE, seed=1), schedule="linear")
    with pytest.raises(ConfigError, match="amp"):
        pretrain(training, SyntheticPairs(operator, 4, NOISE, seed=1), amp="fp8")
    with pytest.raises(ConfigError, match="input"):
        pretrain(training, SyntheticPairs(operator, 4, NOISE, seed=1), generator_params={"input": "noise"})
    with pytest.raises(ConfigError, match="same operator"):
        pretrain(training, SyntheticPairs(_ct(angles=30), 4, NOISE, seed=1))


# -- model files -------------------------------------------------------------------------------

def test_a_model_file_reloads_the_same_network(pretrained, operator):
    path, model = pretrained
    loaded = load_pretrained(path)
    x = SyntheticPairs(operator, 2, NOISE, seed=9).batch([0, 1])[0]
    with torch.no_grad():
        assert torch.equal(loaded.generator(x), model.generator(x))
    assert loaded.metadata["noise"] == {"std": None, "relative": NOISE.relative}
    check_compatible(loaded, _problem(operator))  # the problem it was made for: accepted


def test_a_model_is_refused_for_another_geometry_size_or_noise(pretrained, tmp_path):
    path, _ = pretrained
    model = load_pretrained(path)
    with pytest.raises(ConfigError, match="num_angles=10"):
        check_compatible(model, _problem(_ct(angles=30)))
    with pytest.raises(ConfigError, match=r"image shape \(1, 32, 32\)"):
        check_compatible(model, _problem(_ct(size=24)))
    with pytest.raises(ConfigError, match="relative noise level 0.05"):
        check_compatible(model, _problem(_ct(), GaussianNoise(relative=0.2)))
    with pytest.raises(ConfigError, match="input map 'fbp'"):
        check_compatible(model, _problem(_ct(filter_type="Ram-Lak")))
    check_compatible(model, _problem(_ct(backend="odl")))  # the same operator through ODL: accepted
    only_norm = _problem(_ct(), GaussianNoise(relative=0.2))
    only_norm = InverseProblem(only_norm.operator, only_norm.y, noise_norm=only_norm.noise_norm)
    with pytest.raises(ConfigError, match="relative noise level"):  # the level from ||eta|| alone
        check_compatible(model, only_norm)
    with pytest.raises(ConfigError, match=">= 1"):
        check_compatible(model, _problem(_ct()), noise_tolerance=0.5)
    not_a_model = tmp_path / "x.pt"
    torch.save({"weights": 1}, not_a_model)
    with pytest.raises(StateFileError, match="not an invprior pretrained model"):
        load_pretrained(not_a_model)
    with pytest.raises(ConfigError, match="does not exist"):
        load_pretrained(tmp_path / "missing.pt")


# -- fine-tuning --------------------------------------------------------------------------------

def test_edip_reaches_the_dip_psnr_in_fewer_iterations(pretrained, operator):
    path, _ = pretrained
    problem = _problem(operator)
    budget = 2000
    common = dict(weight="auto", auto_weight_fraction=0.3, average=0.0, stopping="fixed",  # a light TV term: the
                  stopping_params={"iterations": budget}, max_iterations=budget, log_every=10)  # networks' own rise
    dip = DIP(generator_params=NET, lr=3e-3, init="none", **common).reconstruct(problem, progress=False)  # the rise
    edip = EDIP(pretrained=path, lr=3e-4, **common).reconstruct(problem, progress=False)
    target = steady_psnr(dip.trace["psnr"])
    reached = rise_time(edip.trace["iteration"], edip.trace["psnr"], target=target, tolerance=0.0)
    dip_reached = rise_time(dip.trace["iteration"], dip.trace["psnr"], target=target, tolerance=0.0)
    assert reached is not None and reached * SPEED_UP <= dip_reached, (target, reached, dip_reached)
    assert steady_psnr(edip.trace["psnr"]) >= target - 0.1
    assert edip.method == "edip" and edip.extras["pretraining"]["count"] == 1024



def test_edip_pretrains_once_from_a_config_then_reuses_the_file(tmp_path, monkeypatch):
    model = tmp_path / "pre.pt"
    raw = {"seed": 0,
           "problem": {"operator": "ct_parallel", "operator_params": {"num_angles": 10}, "image": "ellipses",
                       "size": 16, "noise": {"relative": 0.05}},
           "method": {"name": "edip", "params": {
               "pretrained": str(model), "stopping": "fixed", "stopping_params": {"iterations": 5},
               "max_iterations": 5, "lr": 1e-4,
               "pretrain": {"count": 32, "validation_count": 8, "epochs": 2, "batch_size": 16,
                            "generator_params": {"preset": "small", "channels": 8}}}}}
    first = run(parse_config(raw), progress=False)
    assert model.exists()
    assert first.reconstruction.extras["pretraining"]["epochs"] == 2

    def no_training(*args, **kwargs):
        raise AssertionError("the saved model should have been reused")

    monkeypatch.setattr("invprior.methods.edip.pretrain", no_training)
    second = run(parse_config(raw), progress=False)
    assert torch.equal(first.reconstruction.image, second.reconstruction.image)
    raw["problem"]["noise"] = {"relative": 0.2}
    with pytest.raises(ConfigError, match="relative noise level"):
        run(parse_config(raw), progress=False)


def test_edip_on_measured_data_pretrains_at_the_relative_noise_level_whatever_the_units():
    """A measurement without a noise model (a file) gets its noise level estimated, per image and in the data's
    units; EDIP pretrains its phantoms at that level relative to the data, so data in other units (x 20 here)
    pretrain for the same relative level."""
    operator = _ct(size=16)
    simulated = InverseProblem.simulate(operator, random_ellipses(size=16, n=1, seed=3), GaussianNoise(std=0.02),
                                        seed=1)
    settings = {"count": 16, "validation_count": 4, "epochs": 1, "batch_size": 8,
                "generator_params": {"preset": "small", "channels": 8}}
    levels = []
    for factor in (1.0, 20.0):
        measured = InverseProblem(operator, simulated.y * factor).with_estimated_noise()
        model = EDIP(pretrain=settings, max_iterations=2).prepare(measured, progress=False)
        std = float(measured.noise_std[0])
        assert model.metadata["noise"]["std"] is None
        assert model.metadata["noise"]["relative"] == pytest.approx(std / float(measured.y.abs().mean()), rel=1e-9)
        levels.append(model.metadata["noise"]["relative"])
    assert levels[1] == pytest.approx(levels[0], rel=1e-5)  # float32 data


def test_concurrent_runs_sharing_a_model_file_pretrain_it_once(tmp_path, monkeypatch):
    """Two runs (threads here, processes in a benchmark suite) that both find no model file take turns
    under the file's lock: one pretrains and saves, the other loads the saved model."""
    import threading

    import invprior.methods.edip as edip_module
    calls = []
    real_pretrain = edip_module.pretrain

    def counted(*args, **kwargs):
        calls.append(threading.get_ident())
        return real_pretrain(*args, **kwargs)
    monkeypatch.setattr(edip_module, "pretrain", counted)
    problem = _problem(_ct(size=16, angles=5))
    settings = {"count": 16, "validation_count": 4, "epochs": 1, "batch_size": 8,
                "generator_params": {"preset": "small", "channels": 8}}
    models = [None, None]

    def prepare(slot: int) -> None:
        models[slot] = EDIP(pretrained=tmp_path / "shared.pt", pretrain=settings).prepare(problem, progress=False)
    threads = [threading.Thread(target=prepare, args=(slot,)) for slot in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and all(model is not None for model in models)
    first, second = (m.generator.state_dict() for m in models)
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_edip_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match="give 'pretrained'"):
        EDIP()
    with pytest.raises(ConfigError, match="comes from the pretrained model"):
        EDIP(pretrained="x.pt", generator="unet")
    with pytest.raises(ConfigError, match="unknown pretrain settings"):
        EDIP(pretrain={"epoch": 3})
    with pytest.raises(ConfigError, match="does not exist"):
        EDIP(pretrained=tmp_path / "missing.pt").reconstruct(_problem(_ct(size=16, angles=5)), progress=False)
    assert list(tmp_path.iterdir()) == []     # nothing to train, so no lock file either


# -- measures and figures ---------------------------------------------------------------------------

def test_steady_psnr_and_rise_time_on_a_known_curve():
    iterations = list(range(10, 1010, 10))                       # 100 logged points
    curve = [30.0 * (1 - 0.97 ** (i / 10)) for i in iterations]  # rises towards 30 dB
    steady = steady_psnr(curve)                                  # median of the last 10 values
    assert steady == pytest.approx(sorted(curve[-10:])[4] / 2 + sorted(curve[-10:])[5] / 2)
    first = rise_time(iterations, curve)
    assert curve[iterations.index(first)] >= steady - 0.1 > curve[iterations.index(first) - 1]
    assert rise_time(iterations, curve, target=40.0) is None
    assert rise_time(iterations, curve, target=10.0, tolerance=0.0) == next(
        i for i, v in zip(iterations, curve) if v >= 10)
    with pytest.raises(ConfigError):
        steady_psnr([float("nan")])
    with pytest.raises(ConfigError):
        rise_time([1, 2], [1.0])


def test_convergence_figure_is_written(tmp_path):
    from invprior.figures import convergence_figure
    iterations = list(range(10, 110, 10))
    path = convergence_figure(tmp_path / "c.png", [("DIP", iterations, [float(i) for i in range(10)]),
                                                   ("EDIP", iterations, [5.0 + i for i in range(10)])],
                              spectra=[("DIP", torch.tensor([3.0, 2.0, 1.0])), ("EDIP", torch.tensor([2.0, 0.5, 0.1]))],
                              marks={"DIP": 90, "EDIP": 40}, reference=8.0, title="t")
    assert path.stat().st_size > 10_000


def test_every_example_configuration_parses():
    from pathlib import Path

    from invprior.config import load_config
    from invprior.design.config import load_design_config
    examples = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))
    assert any(p.name == "ct_edip.toml" for p in examples)
    for path in examples:  # run configurations, and design configurations (a run configuration plus [design])
        config = load_design_config(path).run if path.name.startswith("design_") else load_config(path)
        registry.load("methods", config.method.name)
