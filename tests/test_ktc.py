"""Measured EIT (the KTC2023 water tank): reader, missing channels, calibration, noise estimate, orientation
of the ground truth, the challenge score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("triangle")

from invprior.analysis.segmentation import resize, segmentation_scores  # noqa: E402
from invprior.analysis.ssim_score import C1, C2, class_ssim, ktc_score  # noqa: E402
from invprior.eit.calibration import calibrate, redundancy_noise_std  # noqa: E402
from invprior.eit.gauss_newton import OneStepGN  # noqa: E402
from invprior.eit.mesh import disc_mesh  # noqa: E402
from invprior.eit.model import EITModel  # noqa: E402
from invprior.eit.operator import EIT  # noqa: E402
from invprior.errors import ConfigError, DataFileError  # noqa: E402
from invprior.readers.eit import read_ktc2023, read_voltages  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "examples" / "data" / "ktc2023"
FAST = {"size": 32, "h": 0.012, "background": 0.8, "contact_impedance": 1e-5}  # no calibration, coarse mesh


# -- the score -----------------------------------------------------------------------------------------------
def _disc(shape: tuple[int, int], centre: tuple[float, float], radius: float, label: int) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    return np.where((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius ** 2, label, 0)


def _brute_ssim(truth: np.ndarray, labels: np.ndarray, label: int, std: float) -> float:
    """The score's definition evaluated pixel by pixel with an explicit truncated Gaussian window."""
    half = int(2 * std + 0.5)
    offsets = np.arange(-half, half + 1)
    kernel = np.exp(-0.5 * (offsets[:, None] ** 2 + offsets[None, :] ** 2) / std ** 2)
    t, r = (truth == label).astype(float), (labels == label).astype(float)
    padded = [np.pad(a, half) for a in (t, r, np.ones_like(t))]
    values = []
    for i in range(t.shape[0]):
        for j in range(t.shape[1]):
            window = [a[i: i + 2 * half + 1, j: j + 2 * half + 1] for a in padded]
            weight = kernel * window[2]
            mean = lambda a: float((weight * a).sum() / weight.sum())  # noqa: E731
            mu_t, mu_r = mean(window[0]), mean(window[1])
            var_t, var_r = mean(window[0] ** 2) - mu_t ** 2, mean(window[1] ** 2) - mu_r ** 2
            cov = mean(window[0] * window[1]) - mu_t * mu_r
            values.append((2 * mu_t * mu_r + C1) * (2 * cov + C2)
                          / ((mu_t ** 2 + mu_r ** 2 + C1) * (var_t + var_r + C2)))
    return float(np.mean(values))


def test_score_identical_maps_is_one_and_a_shift_lowers_it():
    truth = _disc((64, 64), (20, 20), 8, 1) + _disc((64, 64), (42, 40), 9, 2)
    assert ktc_score(truth, truth, window_std=6) == pytest.approx(1.0, abs=1e-12)
    shifted = np.roll(truth, 5, axis=1)
    assert ktc_score(truth, shifted, window_std=6) < 0.9
    assert ktc_score(truth, np.roll(truth, 2, axis=1), window_std=6) > ktc_score(truth, shifted, window_std=6)


def test_score_matches_the_definition_pixel_by_pixel():
    truth = _disc((24, 24), (8, 9), 4, 1) + _disc((24, 24), (16, 15), 3, 2)
    guess = np.roll(truth, (1, -2), axis=(0, 1))
    for label in (1, 2):
        assert class_ssim(truth, guess, label, window_std=2.5) == pytest.approx(_brute_ssim(truth, guess, label, 2.5),
                                                                                 abs=1e-10)


def test_empty_map_scores_what_the_definition_gives():
    truth = _disc((24, 24), (10, 12), 5, 1)                                  # no conductive class
    empty = np.zeros_like(truth)
    # Class 2 is absent from both maps: SSIM = C1 C2 / (C1 C2) = 1 at every pixel. Class 1: mu_r = s_r = s_tr = 0.
    expected = 0.5 * (_brute_ssim(truth, empty, 1, 2.5) + 1.0)
    assert ktc_score(truth, empty, window_std=2.5) == pytest.approx(expected, abs=1e-10)
    assert class_ssim(truth, empty, 1, 2.5) < 0.5                               # far from the disc both maps agree
    # A map of one constant class: mu = 1, s = 0 everywhere, so SSIM = (2 + C1) C2 / ((2 + C1) C2) against itself and
    # C1 C2 / ((1 + C1) C2) = C1 / (1 + C1) against an empty one.
    full = np.ones((16, 16), dtype=int)
    assert class_ssim(full, np.zeros_like(full), 1, 2.0) == pytest.approx(C1 / (1 + C1), rel=1e-9)


# -- reading ---------------------------------------------------------------------------------------------
def test_reader_names_file_key_and_expected_shape(tmp_path):
    frame = read_voltages(DATA / "level_1" / "data1.mat")
    assert frame.currents.shape == (32, 76) and frame.measurements.shape == (31, 32)
    assert frame.voltages.shape == (76, 31)
    bad = tmp_path / "bad.npz"
    np.savez(bad, Inj=frame.currents, Mpat=frame.measurements.T, Uel=frame.voltages.ravel()[:-5])
    with pytest.raises(DataFileError, match=r"bad\.npz: 'Uel' should hold 76 patterns x 31 measurements = 2356"):
        read_voltages(bad)
    np.savez(bad, Inj=frame.currents, Mpat=frame.measurements, Uel=frame.voltages.ravel())
    with pytest.raises(DataFileError, match=r"'Mpat' should be \(32 electrodes, measurements\)"):
        read_voltages(bad)
    np.savez(bad, Inj=frame.currents, Mpat=frame.measurements.T)
    with pytest.raises(DataFileError, match="no key 'Uel'"):
        read_voltages(bad)
    with pytest.raises(ConfigError, match="needs a reference measurement"):
        read_ktc2023(DATA / "level_1" / "data1.mat", **FAST)


def test_missing_channels_drop_out_of_data_and_operator():
    problem = read_ktc2023(DATA / "level_7" / "data1.mat", DATA / "ref.mat", **FAST)
    frame = read_voltages(DATA / "level_7" / "data1.mat")
    finite = np.isfinite(frame.voltages)
    channels = problem.metadata["channels"]
    assert problem.y.shape == (1, int(finite.sum())) and torch.isfinite(problem.y).all()
    assert channels["patterns_kept"] == int(finite.any(axis=1).sum()) == 27
    assert channels["electrodes_without_data"] == list(range(12))              # level 7 removes electrodes 1-12
    # The operator's range is exactly the measured channels of the full model, difference to the background.
    full = EIT(32, mesh=problem.operator.mesh, currents=frame.currents, measurements=frame.measurements,
               contact_impedance=1e-5, parametrization="exp", background=0.8, exclude_driven=False)
    x = 0.3 * torch.randn(1, 1, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = (full(x) - full(torch.zeros_like(x)))[0][torch.from_numpy(finite)]
    assert torch.allclose(problem.operator(x)[0], expected, rtol=1e-10, atol=1e-12)
    assert problem.operator(torch.zeros_like(x)).abs().max() == 0
    jac = problem.operator.jacobian(x)
    assert torch.allclose(jac, full.jacobian(x)[torch.from_numpy(finite).ravel()], rtol=1e-10, atol=1e-14)
    # The noise estimate sees only the measured channels (NaN anywhere else would make it NaN).
    assert np.isfinite(problem.metadata["noise"]["std"][0]) and problem.metadata["noise"]["dof"] > 0


def test_unavailable_electrodes_drop_every_channel_that_touches_them():
    problem = read_ktc2023(DATA / "level_1" / "data1.mat", DATA / "ref.mat", unavailable_electrodes=[4], **FAST)
    frame = read_voltages(DATA / "level_1" / "data1.mat")
    driving = np.abs(frame.currents[4]) > 0                                     # patterns that drive electrode 4
    measuring = np.abs(frame.measurements[:, 4]) > 0                            # U_3 - U_4 and U_4 - U_5
    assert problem.y.shape[1] == (76 - driving.sum()) * (31 - measuring.sum())
    with pytest.raises(ConfigError, match="electrode 40 does not exist"):
        read_ktc2023(DATA / "level_1" / "data1.mat", DATA / "ref.mat", unavailable_electrodes=[40], **FAST)


# -- calibration and noise ----------------------------------------------------------------------------------
def _tank_model() -> EITModel:
    mesh = disc_mesh(0.12, 16, 0.5)
    return EITModel(mesh, "adjacent", "adjacent", "cem", exclude_driven=False)


def test_calibration_recovers_background_and_contact_impedances():
    model = _tank_model()
    z = 0.02 * (1 + 0.3 * np.sin(np.arange(16)))
    clean = model.voltages(np.full(len(model.mesh.elements), 0.45), z)
    noisy = clean + 1e-4 * np.abs(clean).max() * np.random.default_rng(0).standard_normal(clean.shape)
    fitted = calibrate(model, noisy)
    assert fitted.background == pytest.approx(0.45, rel=0.02)
    assert np.allclose(fitted.contact_impedance, z, rtol=0.02)
    assert fitted.relative_misfit < 1e-3 and fitted.channels == clean.size
    common = calibrate(model, clean, common_impedance=True)
    assert len(set(common.contact_impedance)) == 1 and common.relative_misfit > fitted.relative_misfit


def test_redundancy_noise_estimate_is_model_free():
    model = _tank_model()
    currents = np.hstack([model.currents, model.currents[:, :8] + model.currents[:, 8:16]])   # dependent patterns
    redundant = EITModel(model.mesh, currents, "adjacent", "cem", exclude_driven=False)
    sigma = np.exp(0.5 * np.random.default_rng(1).standard_normal(len(model.mesh.elements)))
    clean = redundant.voltages(sigma, 0.01)
    noise = 2e-3 * np.random.default_rng(2).standard_normal(clean.shape)
    std, dof = redundancy_noise_std(currents, clean + noise)
    assert dof == 16 * (24 - 15)                                              # rank of the currents: 15
    assert std == pytest.approx(2e-3, rel=0.15)
    assert redundancy_noise_std(currents, clean)[0] < 1e-9                   # noise-free data: nothing left
    gappy = clean + noise
    gappy[:3, 2] = np.nan
    assert redundancy_noise_std(currents, gappy)[1] == dof - 3
    with pytest.raises(ConfigError, match="no redundancy"):
        redundancy_noise_std(model.currents[:, :15], clean[:15])


# -- orientation of the ground truth --------------------------------------------------------------------------
def test_ground_truth_orientation_matches_the_mesh_coordinates():
    """The truth file is a picture (row 0 at the top) of the tank with electrode 1 at the top: read into the
    image layout, it correlates best with a reconstruction among all eight flips and quarter turns."""
    correlations = {}
    for phantom in (1, 2):
        problem = read_ktc2023(DATA / "level_1" / f"data{phantom}.mat", DATA / "ref.mat",
                               reference=DATA / f"true{phantom}.mat", **FAST)
        image = OneStepGN(weight=0.1).reconstruct(problem).image[0, 0].double().numpy()
        truth = problem.reference[0].numpy()[::8, ::8]                           # 256 -> 32
        signed = np.select([truth == 1, truth == 2], [-1.0, 1.0], 0.0)
        for k in range(4):
            for flip in (False, True):
                candidate = np.rot90(signed.T if flip else signed, k)
                correlations.setdefault((k, flip), []).append(np.corrcoef(candidate.ravel(), image.ravel())[0, 1])
    best = max(correlations, key=lambda key: sum(correlations[key]))
    assert best == (0, False) and min(correlations[best]) > 0.6


def test_segmentation_labels_by_conductivity_inside_the_tank():
    problem = read_ktc2023(DATA / "level_1" / "data2.mat", DATA / "ref.mat", reference=DATA / "true2.mat", **FAST)
    image = OneStepGN(weight=0.1).reconstruct(problem).image
    score = segmentation_scores(image, problem.reference, problem.task, problem.constraints.support)[0]
    assert score.metric == "ktc_score" and set(np.unique(score.labels)) == {0, 1, 2}
    values = resize(image[0, 0], (256, 256))
    inside = resize(problem.constraints.support.double(), (256, 256)) >= 0.5
    labels = score.labels[inside]
    assert values[inside][labels == 1].max() < values[inside][labels == 0].min()    # resistive: lowest values
    assert values[inside][labels == 2].min() > values[inside][labels == 0].max()    # conductive: highest
    corners = np.zeros((256, 256), dtype=bool)
    corners[:20, :20] = True
    assert (score.labels[corners] == 0).all()                                   # outside the tank: background
    assert score.value > 0.4


def test_mesh_free_method_sees_the_measured_channels_as_absolute_data():
    """The mesh-free method fits absolute voltages of the full protocol: difference data on the measured
    channels become ``y - y_ref + V(background)`` there, and the rest is masked out."""
    from invprior.eit.mesh_free import MeshFreeEIT

    problem = read_ktc2023(DATA / "level_7" / "data1.mat", DATA / "ref.mat", **FAST)
    operator = problem.operator
    mask, frame = MeshFreeEIT._frame(operator, problem, 0.8, operator.contact_impedance)
    measured = operator.channels.view(mask.shape)
    assert torch.equal(mask > 0, measured) and (frame[~measured] == 0).all()
    absolute = operator.model.voltages(np.full(len(operator.mesh.elements), 0.8), operator.contact_impedance.numpy())
    assert torch.allclose(frame[measured], problem.y[0].double() + torch.from_numpy(absolute)[measured])


def test_absolute_mode_fits_the_frame_with_the_calibrated_model():
    frame = read_voltages(DATA / "level_1" / "data1.mat")
    problem = read_ktc2023(DATA / "level_1" / "data1.mat", mode="absolute", **FAST)   # no reference needed
    assert torch.allclose(problem.y[0].double(), torch.from_numpy(frame.voltages.ravel()))
    background = problem.operator(torch.zeros(1, 1, 32, 32, dtype=torch.float64))[0]
    model = EITModel(problem.operator.mesh, frame.currents, frame.measurements, "cem", exclude_driven=False)
    expected = model.voltages(np.full(len(problem.operator.mesh.elements), 0.8), 1e-5).ravel()
    assert torch.allclose(background, torch.from_numpy(expected), rtol=1e-10)
    misfit = np.linalg.norm(expected - frame.voltages.ravel()) / np.linalg.norm(frame.voltages)
    assert problem.metadata["calibration"]["relative_misfit"] == pytest.approx(misfit, rel=1e-9)
    # The raw frame's redundancy residual (systematic, the same with and without inclusions) is far above the
    # difference data's: the reason difference imaging is the default.
    difference = read_ktc2023(DATA / "level_1" / "data1.mat", DATA / "ref.mat", **FAST)
    assert problem.metadata["noise"]["std"][0] > 3 * difference.metadata["noise"]["std"][0]
    assert difference.metadata["noise"]["reference_std"] > 3 * difference.metadata["noise"]["std"][0]
