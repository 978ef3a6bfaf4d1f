"""Reading measured data: array files by key, reference segmentations, CT sinograms and the HTC2022 layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from invprior.core.noise import estimate_noise_std
from invprior.errors import ConfigError, DataFileError
from invprior.readers.files import ArrayFile
from invprior.readers.reference import read_reference

h5py = pytest.importorskip("h5py")
scipy_io = pytest.importorskip("scipy.io")

HTC = Path(__file__).resolve().parents[1] / "examples" / "data" / "htc2022"


# -- array files --------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    """One struct ``scan`` with a 3 x 4 array, a scalar and text, in every supported format."""
    array = np.arange(12.0).reshape(3, 4)
    paths = {}
    paths["v5"] = tmp_path / "scan_v5.mat"
    scipy_io.savemat(paths["v5"], {"scan": {"data": array, "distance": 410.5, "unit": "mm"}})
    paths["v73"] = tmp_path / "scan_v73.mat"  # MATLAB v7.3 layout: HDF5, column-major, char as uint16
    with h5py.File(paths["v73"], "w", userblock_size=512) as f:
        group = f.create_group("scan")
        group.create_dataset("data", data=array.T)
        group.create_dataset("distance", data=np.array([[410.5]]))
        text = group.create_dataset("unit", data=np.array([[ord("m")], [ord("m")]], dtype=np.uint16))
        text.attrs["MATLAB_class"] = np.bytes_("char")
    paths["h5"] = tmp_path / "scan.h5"
    with h5py.File(paths["h5"], "w") as f:
        f.create_dataset("scan/data", data=array)
        f.create_dataset("scan/distance", data=410.5)
    paths["npz"] = tmp_path / "scan.npz"
    np.savez(paths["npz"], **{"scan/data": array, "scan/distance": np.array(410.5)})
    paths["npy"] = tmp_path / "scan.npy"
    np.save(paths["npy"], array)
    return array, paths


@pytest.mark.parametrize("kind", ["v5", "v73", "h5", "npz"])
def test_every_format_gives_the_same_array(files, kind):
    array, paths = files
    with ArrayFile(paths[kind]) as f:
        np.testing.assert_array_equal(f.array("scan/data"), array)  # v7.3 comes back in MATLAB's orientation
        assert f.scalar("scan/distance") == 410.5
        if kind in ("v5", "v73"):
            assert f.text("scan/unit") == "mm"
            assert f.keys("scan") == ["data", "distance", "unit"]
    with ArrayFile(paths["npy"]) as f:
        np.testing.assert_array_equal(f.array(), array)


def test_the_v73_file_is_recognised_as_hdf5(files):
    _, paths = files
    assert ArrayFile(paths["v73"]).format == "MATLAB v7.3 (HDF5)"
    assert ArrayFile(paths["v5"]).format == "MATLAB v5"


@pytest.mark.parametrize("kind", ["v5", "v73", "h5"])
def test_a_wrong_key_names_the_file_the_level_and_what_is_there(files, kind):
    _, paths = files
    with ArrayFile(paths[kind]) as f, pytest.raises(DataFileError) as info:
        f.array("scan/sinogram")
    message = str(info.value)
    assert str(paths[kind]) in message and "'sinogram' is not in scan" in message and "data" in message


def test_bad_reads_are_refused_with_the_reason(files, tmp_path):
    _, paths = files
    with ArrayFile(paths["v5"]) as f:
        with pytest.raises(DataFileError, match="is text, not a numeric array"):
            f.array("scan/unit")
        with pytest.raises(DataFileError, match="group/struct"):
            f.array("scan")
        with pytest.raises(DataFileError, match="one number"):
            f.scalar("scan/data")
        with pytest.raises(DataFileError, match="name the array"):
            f.array(None)
    with pytest.raises(DataFileError, match="no keys"):
        ArrayFile(paths["npy"]).array("data")
    with pytest.raises(DataFileError, match="no such file"):
        ArrayFile(tmp_path / "missing.mat")
    with pytest.raises(DataFileError, match="unknown file type '.csv'"):
        (tmp_path / "table.csv").write_text("1,2\n")
        ArrayFile(tmp_path / "table.csv")
    broken = tmp_path / "broken.mat"
    broken.write_bytes(b"MATLAB 5.0 MAT-file, truncated")
    with pytest.raises(DataFileError, match="broken.mat: cannot be read"):
        ArrayFile(broken)


# -- reference segmentations --------------------------------------------------------------------
def test_reference_labels_from_pictures_and_arrays(tmp_path):
    from PIL import Image

    picture = np.zeros((6, 8), dtype=np.uint8)
    picture[1:4, 2:7] = 255
    Image.fromarray(picture).save(tmp_path / "grey.png")
    Image.fromarray(picture > 0).save(tmp_path / "binary.png")
    Image.fromarray(np.stack([picture] * 3, axis=-1)).save(tmp_path / "rgb.png")
    expected = (picture > 0).astype(np.int64)
    for name in ("grey.png", "binary.png", "rgb.png"):
        np.testing.assert_array_equal(read_reference(tmp_path / name), expected)  # as stored: row 0 on top
    labels = np.array([[0.0, 5.0], [2.0, 5.0]])
    np.save(tmp_path / "three.npy", labels)
    np.testing.assert_array_equal(read_reference(tmp_path / "three.npy"), [[0, 2], [1, 2]])

    colour = np.zeros((4, 4, 3), dtype=np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(DataFileError, match="colour image"):
        read_reference(tmp_path / "colour.png")
    np.save(tmp_path / "image.npy", np.linspace(0, 1, 100).reshape(10, 10))
    with pytest.raises(DataFileError, match="100 distinct values"):
        read_reference(tmp_path / "image.npy")
    np.save(tmp_path / "nan.npy", np.array([[0.0, np.nan]]))
    with pytest.raises(DataFileError, match="NaN"):
        read_reference(tmp_path / "nan.npy")
    with pytest.raises(DataFileError, match="image file has no keys"):
        read_reference(tmp_path / "grey.png", key="labels")


# -- CT readers ---------------------------------------------------------------------------------
pytest.importorskip("odl")
pytest.importorskip("astra")
from invprior.readers.ct import read_htc2022, read_sinogram  # noqa: E402

GEOMETRY = dict(source_origin=410.66, source_detector=553.74, detector_pixel_size=4.0, num_detectors=28)


def _sinogram_file(tmp_path, sinogram, angles, name="scan.npz"):
    path = tmp_path / name
    np.savez(path, sinogram=sinogram, angles=np.asarray(angles, dtype=float))
    return path


def test_generic_sinogram_reader_builds_the_scan_and_estimates_the_noise(tmp_path):
    from invprior.operators.ct_scanner import FanBeamScanner

    angles = np.arange(40.0, 100.0, 2.0)
    scanner = FanBeamScanner(410.66, 553.74, 4.0, 28, tuple(angles))
    op = scanner.operator(size=24, fov=76.0)
    x = torch.zeros(1, 1, 24, 24, dtype=torch.float64)
    x[..., 6:18, 8:16] = 0.04
    clean = op(x)[0, 0].numpy()
    noisy = clean + 0.01 * np.random.default_rng(0).standard_normal(clean.shape)
    path = _sinogram_file(tmp_path, noisy, angles)
    problem = read_sinogram(path, angles="angles", size=24, fov=76.0, **{k: v for k, v in GEOMETRY.items()
                                                                          if k != "num_detectors"})
    assert problem.operator.range_shape == (1, 30, 28) and problem.operator.geometry.extent == 38.0
    torch.testing.assert_close(problem.operator(x), op(x), rtol=1e-12, atol=1e-12)  # the same scan
    assert problem.noise_estimated and problem.metadata["noise"]["estimated"]
    assert float(problem.noise_std[0]) == pytest.approx(float(estimate_noise_std(problem.y)[0]))
    assert problem.metadata["angles_deg"] == {"first": 40.0, "last": 98.0, "count": 30}
    given = read_sinogram(path, size=24, fov=76.0, noise_std=0.002, **{k: v for k, v in GEOMETRY.items()
                                                                        if k != "num_detectors"})
    assert not given.noise_estimated and float(given.noise_std[0]) == pytest.approx(0.002)


def test_sinogram_shape_is_checked_against_the_angles(tmp_path):
    geometry = {k: v for k, v in GEOMETRY.items() if k != "num_detectors"}
    path = _sinogram_file(tmp_path, np.zeros((28, 30)), np.arange(30.0))  # stored detectors x angles
    with pytest.raises(DataFileError, match=r"has 28 rows \(one per angle\) but 30 angles.*transposed"):
        read_sinogram(path, size=8, **geometry)
    transposed = read_sinogram(path, size=8, transpose=True, **geometry)
    assert transposed.operator.range_shape == (1, 30, 28)
    with pytest.raises(DataFileError, match=r"has 30 rows \(one per angle\) but 29 angles are given$"):
        read_sinogram(_sinogram_file(tmp_path, np.zeros((30, 28)), np.arange(29.0), "m.npz"), size=8, **geometry)
    with pytest.raises(DataFileError, match="should be a 2D sinogram"):
        read_sinogram(_sinogram_file(tmp_path, np.zeros(30), np.arange(30.0), "v.npz"), size=8, **geometry)
    with pytest.raises(ConfigError, match="give source_origin"):
        read_sinogram(path, size=8)


def test_htc2022_sinogram_shape_is_checked_against_the_file_geometry(tmp_path):
    path = tmp_path / "transposed.mat"
    parameters = {"angles": np.arange(4.0), "distanceSourceOrigin": 410.66, "distanceSourceDetector": 553.74,
                  "pixelSizePost": 0.2, "numDetectorsPost": 6.0, "effectivePixelSizePost": 0.148,
                  "geometricMagnification": 553.74 / 410.66}
    scipy_io.savemat(path, {"CtDataLimited": {"sinogram": np.zeros((6, 4)), "parameters": parameters}})
    with pytest.raises(DataFileError, match=r"shape \(6, 4\), but the geometry has 4 angles x 6 detectors "
                                            r"\(it looks transposed"):
        read_htc2022(path, size=8)
    parameters["geometricMagnification"] = 1.5
    scipy_io.savemat(path, {"CtDataLimited": {"sinogram": np.zeros((4, 6)), "parameters": parameters}})
    with pytest.raises(DataFileError, match="inconsistent geometry"):
        read_htc2022(path, size=8)


def test_nan_entries_are_refused_or_their_projections_dropped(tmp_path):
    geometry = {k: v for k, v in GEOMETRY.items() if k != "num_detectors"}
    sinogram = np.random.default_rng(1).uniform(0.0, 1.0, (30, 28))
    sinogram[[3, 17], 5] = np.nan
    path = _sinogram_file(tmp_path, sinogram, np.arange(30.0))
    with pytest.raises(DataFileError, match=r"2 NaN entries in 2 projections \(rows 3, 17\)"):
        read_sinogram(path, size=8, **geometry)
    with pytest.warns(UserWarning, match="dropped 2 of 30 projections"):
        problem = read_sinogram(path, size=8, missing="drop", **geometry)
    assert problem.operator.range_shape == (1, 28, 28) and torch.isfinite(problem.y).all()
    kept = [a for a in range(30) if a not in (3, 17)]
    np.testing.assert_allclose(np.rad2deg(problem.operator.geometry.angles()), kept, atol=1e-12)
    sinogram[0, 0] = np.inf
    with pytest.raises(DataFileError, match="infinite"):
        read_sinogram(_sinogram_file(tmp_path, sinogram, np.arange(30.0), "inf.npz"), size=8, **geometry)


@pytest.mark.parametrize("name, version, angles", [
    ("htc2022_tb_30deg_from42.mat", "MATLAB v5", (42.0, 72.0)),
    ("htc2022_solid_disc_30deg.mat", "MATLAB v7.3 (HDF5)", (181.0, 211.0)),
])
def test_htc2022_files_in_both_matlab_versions(name, version, angles):
    assert ArrayFile(HTC / name).format == version
    problem = read_htc2022(HTC / name, size=32)
    geometry = problem.operator.geometry
    assert problem.y.shape == (1, 1, 61, 560)
    np.testing.assert_allclose(np.rad2deg(geometry.angles())[[0, -1]], angles)
    assert geometry.src_radius == 410.66 and geometry.det_radius == pytest.approx(553.74 - 410.66)
    assert geometry.detector_half_width == pytest.approx(56.0)  # 560 cells of 0.2 mm
    assert 2 * geometry.extent == pytest.approx(512 * 0.1483223173330444)  # the reference grid's field of view
    assert problem.noise_estimated and 0.003 < float(problem.noise_std[0]) < 0.02
    assert 1.5 < float(problem.y.max()) < 2.5  # at most 70 mm of acrylic at about 0.03 / mm


def test_htc2022_reader_refuses_other_layouts(tmp_path):
    path = tmp_path / "other.mat"
    scipy_io.savemat(path, {"CtData": {"sinogram": np.zeros((2, 3))}})
    with pytest.raises(DataFileError, match="expected one struct CtDataLimited or CtDataFull.*found keys CtData"):
        read_htc2022(path)


def test_htc2022_orientation_matches_the_reference():
    """The reader's arrays, shown as invprior shows images, match the organisers' picture: a least-squares
    fit of the 90-degree data correlates with the reference far better than any other quarter turn or flip."""
    from invprior.analysis.segmentation import resize
    from invprior.data.orientation import picture_to_image
    from invprior.linalg import conjugate_gradient

    problem = read_htc2022(HTC / "htc2022_tb_90deg.mat", size=64)
    op = problem.operator
    with torch.no_grad():
        x, _ = conjugate_gradient(lambda v: op.adjoint(op(v)) + 1e-2 * v, op.adjoint(problem.y), None, 30, 1e-8)
    reference = picture_to_image(read_reference(HTC / "htc2022_tb_full_recon_fbp_seg.png")).astype(float)
    image = resize(x[0, 0], reference.shape)

    def correlation(a) -> float:
        return float(np.corrcoef(a.ravel(), reference.ravel())[0, 1])

    others = [correlation(np.rot90(t, k)) for t in (image, image.T) for k in range(4)][1:]
    assert correlation(image) > 0.7 and correlation(image) > max(others) + 0.15
