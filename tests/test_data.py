"""Datasets: seeded ellipse phantoms, Shepp-Logan and the bundled real images."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from invprior import registry
from invprior.data.images import camera, ct_slice
from invprior.data.phantoms import cell_centres, random_ellipses, rasterize_ellipses, shepp_logan
from invprior.errors import ConfigError, MissingExtraError, ShapeError


def _centre_index(size: int, coordinate: float) -> int:
    """Index of the pixel whose centre is ``coordinate`` on an odd grid."""
    index = round((coordinate + 1.0) * size / 2.0 - 0.5)
    assert math.isclose(float(cell_centres(size)[index]), coordinate, abs_tol=1e-12)
    return index


# ---------------------------------------------------------------- random ellipses


def test_ellipses_same_seed_reproduces_and_other_seeds_differ():
    a = random_ellipses(48, n=3, seed=7)
    b = random_ellipses(48, n=3, seed=7)
    c = random_ellipses(48, n=3, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # images of a batch are different draws


def test_ellipses_leading_images_do_not_depend_on_n():
    assert torch.equal(random_ellipses(32, n=2, seed=4), random_ellipses(32, n=5, seed=4)[:2])


@pytest.mark.parametrize("size,n,dtype", [(16, 1, torch.float32), (33, 4, torch.float64), (64, 2, torch.float16)])
def test_ellipses_shape_dtype_and_range(size, n, dtype):
    x = random_ellipses(size, n=n, seed=1, dtype=dtype)
    assert x.shape == (n, 1, size, size)
    assert x.dtype == dtype
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x.float().std()) > 0.01


def test_ellipses_options_are_used():
    one = random_ellipses(64, seed=2, num_ellipses=1, intensity_range=(0.5, 0.5))
    assert set(torch.unique(one).tolist()) == {0.0, 0.5}
    bright = random_ellipses(64, seed=2, intensity_range=(2.0, 3.0))
    assert set(torch.unique(bright).tolist()) == {0.0, 1.0}  # sums above 1 are clipped


def test_ellipses_background_puts_a_body_under_the_other_ellipses():
    from invprior.data.phantoms import random_ellipse_parameters
    plain = random_ellipse_parameters(1, seed=5)[0]
    body = random_ellipse_parameters(1, seed=5, background=(0.3, 0.5))[0]
    assert torch.equal(body[1:], plain)  # the same ellipses, drawn first, with the body prepended
    value, a, b, x0, y0 = body[0, :5].tolist()
    assert 0.3 <= value <= 0.5 and 0.7 <= a <= 1.5 and 0.7 <= b <= 1.5 and max(abs(x0), abs(y0)) <= 0.1
    # a constant body of 0.4 with one structure carved out of it (negative intensity, clipped at 0)
    x = random_ellipses(64, n=4, seed=5, background=0.4, num_ellipses=1, intensity_range=(-1.0, -1.0),
                        dtype=torch.float64)
    assert set(torch.unique(x).tolist()) <= {0.0, 0.4}
    body_area = (x == 0.4).double().mean(dim=(1, 2, 3))
    assert float(body_area.min()) > 0.3  # semi-axes >= 0.7: the body covers much of the square
    with pytest.raises(ConfigError, match="background"):
        random_ellipses(16, background=(0.5, 0.2))


def test_ellipses_same_object_at_every_size():
    fine = random_ellipses(256, n=3, seed=11, dtype=torch.float64)
    pooled = F.avg_pool2d(fine, 4)
    supersampled = random_ellipses(64, n=3, seed=11, supersample=4, dtype=torch.float64)
    assert torch.allclose(supersampled, pooled, atol=1e-12)  # the same sub-pixel samples
    point_sampled = random_ellipses(64, n=3, seed=11, dtype=torch.float64)
    assert float((point_sampled - pooled).abs().mean()) < 0.02
    other_seed = random_ellipses(64, n=3, seed=12, dtype=torch.float64)
    assert float((other_seed - pooled).abs().mean()) > 0.05


@pytest.mark.parametrize(
    "options",
    [
        {"num_ellipses": (0, 3)},
        {"num_ellipses": (6, 2)},
        {"num_ellipses": 2.5},
        {"intensity_range": (1.0, 0.0)},
        {"intensity_range": (float("nan"), 1.0)},
        {"intensity_range": "bright"},
        {"axis_range": (0.0, 0.3)},
        {"supersample": 0},
        {"size": 0},
        {"n": 0},
        {"dtype": torch.int64},
    ],
)
def test_ellipses_bad_options_raise(options):
    with pytest.raises(ConfigError):
        random_ellipses(**options)


# ---------------------------------------------------------------- rasteriser


@pytest.mark.parametrize("supersample", [1, 3])
def test_rasterised_ellipse_area_matches_pi_a_b(supersample):
    a, b = 0.55, 0.3
    ellipse = torch.tensor([[1.0, a, b, 0.1, -0.2, 0.7]])
    image = rasterize_ellipses(ellipse, 200, supersample)
    area = float(image.sum()) * (2.0 / 200) ** 2
    assert area == pytest.approx(math.pi * a * b, rel=0.01)


def test_rasteriser_axes_are_x_then_y_and_rotation_is_counter_clockwise():
    size = 128
    coords = cell_centres(size).to(torch.float64)
    image = rasterize_ellipses(torch.tensor([[1.0, 0.1, 0.1, 0.5, -0.25, 0.0]]), size)
    mass = image.sum()
    assert float((image.sum(dim=1) * coords).sum() / mass) == pytest.approx(0.5, abs=1e-3)  # first axis is x
    assert float((image.sum(dim=0) * coords).sum() / mass) == pytest.approx(-0.25, abs=1e-3)  # second axis is y
    tilted = rasterize_ellipses(torch.tensor([[1.0, 0.6, 0.1, 0.0, 0.0, math.pi / 4]]), size)
    x, y = coords[:, None], coords[None, :]
    assert float((tilted * x * y).sum()) > 0.0  # long axis along x = y
    assert float(tilted[83, 83]) == 1.0 and float(tilted[83, 44]) == 0.0  # (0.3, 0.3) in, (0.3, -0.3) out


def test_rasteriser_rejects_bad_tables():
    with pytest.raises(ShapeError):
        rasterize_ellipses(torch.zeros(3, 5), 16)
    with pytest.raises(ConfigError):
        rasterize_ellipses(torch.tensor([[1.0, 0.0, 0.2, 0.0, 0.0, 0.0]]), 16)


# ---------------------------------------------------------------- Shepp-Logan


def test_shepp_logan_known_values():
    size = 65
    centre = _centre_index(size, 0.0)
    upper = _centre_index(size, 0.4)  # inside ellipse 5 (0, 0.35), nothing else but the brain
    modified = shepp_logan(size, dtype=torch.float64)[0, 0]
    original = shepp_logan(size, modified=False, dtype=torch.float64)[0, 0]
    assert float(modified[centre, centre]) == pytest.approx(0.2)
    assert float(modified[centre, upper]) == pytest.approx(0.3)
    assert float(original[centre, centre]) == pytest.approx(0.51)
    assert float(modified[0, 0]) == 0.0 and float(original[-1, -1]) == 0.0
    assert float(modified.max()) == 1.0 and float(modified.min()) == 0.0
    # the head is taller than wide: semi-axis 0.92 along y (second axis), 0.69 along x
    assert float(modified[centre, _centre_index(size, 0.8)]) > 0
    assert float(modified[_centre_index(size, 0.8), centre]) == 0


def test_shepp_logan_matches_scikit_image_picture_after_rot90():
    skdata = pytest.importorskip("skimage.data")
    sktransform = pytest.importorskip("skimage.transform")
    reference = sktransform.resize(skdata.shepp_logan_phantom(), (64, 64), anti_aliasing=True)
    ours = shepp_logan(64, supersample=4, dtype=torch.float64)[0, 0].numpy()
    assert np.corrcoef(np.rot90(ours).ravel(), reference.ravel())[0, 1] > 0.98
    assert np.abs(np.rot90(ours) - reference).mean() < 0.02
    assert np.corrcoef(ours.T.ravel(), reference.ravel())[0, 1] < 0.9  # orientation matters


def test_shepp_logan_uses_odl_axis_order():
    odl = pytest.importorskip("odl")
    space = odl.uniform_discr([-1, -1], [1, 1], (64, 64))
    reference = np.asarray(odl.phantom.shepp_logan(space, modified=True).asarray(), dtype=np.float64)
    ours = shepp_logan(64, dtype=torch.float64)[0, 0].numpy()
    assert np.abs(ours - reference).mean() < 0.03  # ODL's rasteriser differs by about a pixel at some edges
    assert np.abs(ours.T - reference).mean() > 0.1


def test_shepp_logan_copies_and_unused_seed():
    x = shepp_logan(32, n=3, seed=5)
    assert x.shape == (3, 1, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[0], x[2])
    assert torch.equal(x[:1], shepp_logan(32, seed=0))
    x[0].zero_()
    assert float(x[1].max()) == 1.0  # copies do not share memory


# ---------------------------------------------------------------- real images


def test_ct_slice_defaults_and_hounsfield_window():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    x = ct_slice()
    assert x.shape == (1, 1, 128, 128) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.std()) > 0.1
    assert torch.equal(x, ct_slice())
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    narrow = ct_slice(window=(-160.0, 240.0), dtype=torch.float64)[0, 0].numpy()
    np.testing.assert_allclose(np.rot90(narrow), np.clip((hu + 160.0) / 400.0, 0.0, 1.0), atol=1e-12)


@pytest.mark.parametrize("size", [32, 100, 200])
def test_ct_slice_resized(size):
    pytest.importorskip("pydicom")
    x = ct_slice(size, n=2, dtype=torch.float64)
    assert x.shape == (2, 1, size, size)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(x[0], x[1])
    back = F.interpolate(x, size=(128, 128), mode="bilinear", antialias=size > 128)
    assert float((back - ct_slice(dtype=torch.float64)).abs().mean()) < 0.03


def test_ct_slice_bad_window_raises():
    with pytest.raises(ConfigError):
        ct_slice(window=(100.0, -100.0))
    with pytest.raises(ConfigError):
        ct_slice(window=5.0)


def test_camera_orientation_and_antialiased_downsampling():
    skdata = pytest.importorskip("skimage.data")
    full = camera(512, dtype=torch.float64)[0, 0].numpy()
    np.testing.assert_array_equal(np.rot90(full), skdata.camera() / 255.0)
    small = camera(dtype=torch.float64)
    assert small.shape == (1, 1, 128, 128)
    pooled = F.avg_pool2d(torch.from_numpy(full.copy())[None, None], 4)
    assert float((small - pooled).abs().mean()) < 0.02


def test_missing_packages_name_the_data_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(MissingExtraError, match=r"invprior\[data\]") as info:
        ct_slice()
    assert info.value.extra == "data"
    monkeypatch.setitem(sys.modules, "skimage.data", None)
    with pytest.raises(MissingExtraError, match=r"invprior\[data\]"):
        camera()


def test_image_module_imports_optional_packages_lazily():
    code = "import sys, invprior.data.images; assert not {'pydicom', 'skimage'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    "name,size,needs",
    [("ellipses", 64, None), ("shepp_logan", 64, None), ("ct_slice", 128, "pydicom"), ("camera", 128, "skimage")],
)
def test_registered_datasets_run_with_defaults(name, size, needs):
    if needs is not None:
        pytest.importorskip(needs)
    x = registry.load("datasets", name)()
    assert x.shape == (1, 1, size, size) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
