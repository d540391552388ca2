"""Image I/O for ``vasseg predict``: NIfTI/HDF5 reading, aligned atomic label writing, errors."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from vasseg.io import LA_SPACING, ImageIOError, Volume, read_volume, write_label_nifti


def oblique_affine() -> np.ndarray:
    """Rotation about an oblique axis, anisotropic zooms (mm) and an offset."""
    theta = np.deg2rad(20.0)
    axis = np.array([1.0, 2.0, 0.5])
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(theta) * k + (1 - np.cos(theta)) * (k @ k)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-41.5, 12.25, 87.0]
    return affine


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    nib.save(img, str(path))


def no_temp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".")]


@pytest.fixture
def nifti(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(11, 9, 7)).astype(np.float32)
    affine = oblique_affine()
    path = tmp_path / "case.nii.gz"
    save_nifti(path, data, affine)
    return path, data, affine


def test_nifti_round_trip(nifti, tmp_path):
    path, data, affine = nifti
    vol = read_volume(path)
    assert isinstance(vol, Volume) and vol.source == path and vol.label is None
    assert vol.image.dtype == np.float32 and vol.image.shape == data.shape
    np.testing.assert_array_equal(vol.image, data)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    np.testing.assert_allclose(vol.spacing, (0.7, 0.9, 2.5), atol=1e-6)

    labels = (vol.image > 0).astype(np.int64) * 2
    out = write_label_nifti(tmp_path / "pred.nii.gz", labels, vol.affine, vol.header)
    written = nib.load(str(out))
    hdr = written.header
    assert written.shape == data.shape
    assert written.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)
    np.testing.assert_allclose(written.affine, vol.affine, atol=1e-5)
    np.testing.assert_allclose(written.get_sform(), vol.affine, atol=1e-5)
    np.testing.assert_allclose(written.get_qform(), vol.affine, atol=1e-5)
    assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
    np.testing.assert_allclose(hdr.get_zooms(), vol.header.get_zooms(), atol=1e-6)
    assert no_temp_files(tmp_path)


def test_write_without_header_and_uint16(tmp_path):
    affine = oblique_affine()
    labels = np.zeros((4, 5, 6), dtype=np.int32)
    labels[1, 2, 3] = 300
    out = write_label_nifti(tmp_path / "many.nii", labels, affine)
    written = nib.load(str(out))
    assert written.get_data_dtype() == np.uint16
    np.testing.assert_array_equal(np.asarray(written.dataobj), labels)
    np.testing.assert_allclose(written.get_qform(), affine, atol=1e-5)
    np.testing.assert_allclose(written.get_sform(), affine, atol=1e-5)
    np.testing.assert_allclose(written.header.get_zooms(), (0.7, 0.9, 2.5), atol=1e-6)
    assert no_temp_files(tmp_path)


def test_label_ignores_input_intensity_scaling(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    img.header.set_slope_inter(2.0, 10.0)
    src = tmp_path / "scaled.nii"
    nib.save(img, str(src))
    vol = read_volume(src)
    assert vol.image[0, 0, 1] == 12.0  # scaling applied on read
    out = write_label_nifti(tmp_path / "lab.nii", np.ones((2, 3, 4), np.uint8), vol.affine, vol.header)
    assert np.asarray(nib.load(str(out)).get_fdata()).max() == 1.0


def test_4d_singleton_squeezed_other_4d_rejected(tmp_path):
    save_nifti(tmp_path / "one.nii", np.ones((3, 4, 5, 1), np.float32), np.eye(4))
    assert read_volume(tmp_path / "one.nii").image.shape == (3, 4, 5)
    save_nifti(tmp_path / "two.nii", np.ones((3, 4, 5, 2), np.float32), np.eye(4))
    with pytest.raises(ImageIOError, match="3-D"):
        read_volume(tmp_path / "two.nii")


def test_hdf5_read(tmp_path):
    image = np.random.default_rng(1).normal(size=(8, 7, 6))
    label = (image > 0).astype(np.uint8)
    path = tmp_path / "case.h5"
    with h5py.File(path, "w") as f:
        f["image"] = image
        f["label"] = label
    vol = read_volume(path)
    assert vol.image.dtype == np.float32
    np.testing.assert_allclose(vol.image, image, rtol=1e-6)
    np.testing.assert_array_equal(vol.label, label)
    assert vol.spacing == LA_SPACING and vol.header is None
    np.testing.assert_array_equal(vol.affine, np.diag([0.625, 0.625, 0.625, 1.0]))
    vol = read_volume(path, default_spacing=(1.0, 1.0, 2.0))
    np.testing.assert_array_equal(vol.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
    with h5py.File(tmp_path / "nolabel.hdf5", "w") as f:
        f["image"] = image
    assert read_volume(tmp_path / "nolabel.hdf5").label is None


def one_line(exc: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


def test_missing_file(tmp_path):
    path = tmp_path / "absent.nii.gz"
    with pytest.raises(ImageIOError) as exc:
        read_volume(path)
    assert "no such file" in one_line(exc, path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "case.mha"
    path.write_bytes(b"x")
    with pytest.raises(ImageIOError) as exc:
        read_volume(path)
    assert "extension" in one_line(exc, path)


@pytest.mark.parametrize("name", ["cut.nii.gz", "cut.nii"])
def test_truncated_nifti(nifti, tmp_path, name):
    src, data, affine = nifti
    full = tmp_path / ("full" + name[3:])
    save_nifti(full, data, affine)
    raw = full.read_bytes()
    path = tmp_path / name
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ImageIOError) as exc:
        read_volume(path)
    assert "cannot read NIfTI" in one_line(exc, path)


def test_garbage_nifti(tmp_path):
    path = tmp_path / "junk.nii"
    path.write_bytes(b"not a nifti file at all" * 20)
    with pytest.raises(ImageIOError) as exc:
        read_volume(path)
    assert "cannot read NIfTI" in one_line(exc, path)


def test_corrupt_hdf5(tmp_path):
    path = tmp_path / "junk.h5"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ImageIOError) as exc:
        read_volume(path)
    assert "cannot read HDF5" in one_line(exc, path)


def test_hdf5_missing_image_key(tmp_path):
    path = tmp_path / "nokey.h5"
    with h5py.File(path, "w") as f:
        f["label"] = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ImageIOError) as exc:
        read_volume(path)
    assert "'image'" in one_line(exc, path)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_values(tmp_path, bad):
    data = np.zeros((4, 4, 4), np.float32)
    data[1, 2, 3] = bad
    nii, h5 = tmp_path / "bad.nii", tmp_path / "bad.h5"
    save_nifti(nii, data, np.eye(4))
    with h5py.File(h5, "w") as f:
        f["image"] = data
    for path in (nii, h5):
        with pytest.raises(ImageIOError) as exc:
            read_volume(path)
        assert "non-finite" in one_line(exc, path)


def test_not_3d(tmp_path):
    nii, h5 = tmp_path / "flat.nii", tmp_path / "flat.h5"
    save_nifti(nii, np.zeros((4, 4), np.float32), np.eye(4))
    with h5py.File(h5, "w") as f:
        f["image"] = np.zeros((2, 4, 4, 4), np.float32)
    for path in (nii, h5):
        with pytest.raises(ImageIOError) as exc:
            read_volume(path)
        assert "3-D" in one_line(exc, path)


def test_hdf5_label_shape_mismatch(tmp_path):
    path = tmp_path / "mismatch.h5"
    with h5py.File(path, "w") as f:
        f["image"] = np.zeros((4, 4, 4), np.float32)
        f["label"] = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ImageIOError) as exc:
        read_volume(path)
    assert "label shape" in one_line(exc, path)


def test_write_to_missing_dir(tmp_path):
    path = tmp_path / "nowhere" / "pred.nii.gz"
    with pytest.raises(ImageIOError) as exc:
        write_label_nifti(path, np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert "does not exist" in one_line(exc, path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_write_to_read_only_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ImageIOError) as exc:
            write_label_nifti(ro / "pred.nii", np.zeros((2, 2, 2), np.uint8), np.eye(4))
        assert "not writable" in one_line(exc, ro / "pred.nii")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize(
    "labels, problem",
    [
        (np.zeros((2, 2, 2), np.float32), "integer"),
        (np.full((2, 2, 2), -1, np.int16), "[0, 65535]"),
        (np.zeros((2, 2), np.uint8), "3-D"),
    ],
)
def test_write_rejects_bad_labels_and_leaves_nothing(tmp_path, labels, problem):
    path = tmp_path / "pred.nii.gz"
    with pytest.raises(ImageIOError) as exc:
        write_label_nifti(path, labels, np.eye(4))
    assert problem in one_line(exc, path)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_target_nor_temp(tmp_path, monkeypatch):
    path = tmp_path / "pred.nii.gz"

    def failing_save(img, filename):
        Path(filename).write_bytes(b"partial")  # a half-written temporary file
        raise OSError("No space left on device")

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(ImageIOError) as exc:
        write_label_nifti(path, np.ones((3, 3, 3), np.uint8), np.eye(4))
    assert "No space left" in one_line(exc, path)
    assert list(tmp_path.iterdir()) == []


def test_failed_save_keeps_previous_target(tmp_path, monkeypatch):
    path = tmp_path / "pred.nii"
    write_label_nifti(path, np.ones((3, 3, 3), np.uint8), np.eye(4))
    before = path.read_bytes()

    def failing_save(img, filename):
        raise OSError("disk quota exceeded")

    monkeypatch.setattr(nib, "save", failing_save)
    with pytest.raises(ImageIOError):
        write_label_nifti(path, np.zeros((3, 3, 3), np.uint8), np.eye(4))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["pred.nii"]


def test_unwritable_dir_is_reported(tmp_path, monkeypatch):
    """The permission branch, also when tests run as root (which bypasses chmod)."""
    import vasseg.io

    monkeypatch.setattr(vasseg.io.os, "access", lambda *args, **kwargs: False)
    path = tmp_path / "pred.nii.gz"
    with pytest.raises(ImageIOError) as exc:
        write_label_nifti(path, np.zeros((2, 2, 2), np.uint8), np.eye(4))
    assert "not writable" in one_line(exc, path)
    assert list(tmp_path.iterdir()) == []
