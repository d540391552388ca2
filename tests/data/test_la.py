"""The LA reader: id lists, layout, validation at the boundary, down-sampling, real data."""

import logging
import os
import re
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from vasseg.data.la import (
    MissingCasesError,
    case_path,
    check_cases_exist,
    list_ids,
    read_h5_case,
    read_id_list,
)
from vasseg.data.synthetic import make_phantom_set, write_phantom_la_layout
from vasseg.data.volumes import DataError
from vasseg.typed import ConfigError

from tests.loading import load_cases

log = logging.getLogger(__name__)

SHAPE = (20, 18, 12)
REAL_LA = Path(os.environ.get("VASSEG_LA_ROOT", Path(__file__).resolve().parents[3]
                              / "shared" / "data" / "LA"))


@pytest.fixture
def la_root(tmp_path):
    return write_phantom_la_layout(tmp_path / "LA", n_train=3, n_test=2, shape=SHAPE, seed=5)


def load_la(root, ids, list_name="the id list", **data):
    """LA cases through the ``la`` format, as the engine reads them."""
    return load_cases("la", root, ids, list_name, **data)


def _write_h5(path, **arrays):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
    return path


def test_read_id_list_tolerates_whitespace_blank_lines_and_paths(tmp_path):
    lst = tmp_path / "train.list"
    lst.write_text("A1  \n\n  B2\r\n# comment\n../data/2018LA_Seg_Training Set/C3/mri_norm2.h5\n"
                   "2018LA_Seg_Training Set/D4\n\n")
    assert read_id_list(lst) == ["A1", "B2", "C3", "D4"]


def test_read_id_list_errors_name_the_file(tmp_path):
    missing = tmp_path / "none.list"
    with pytest.raises(DataError, match="^" + re.escape(f"{missing}: cannot read id list")):
        read_id_list(tmp_path / "none.list")
    (tmp_path / "dup.list").write_text("A\nB\nA\n")
    with pytest.raises(DataError, match="dup.list: duplicate ids: A"):
        read_id_list(tmp_path / "dup.list")
    (tmp_path / "empty.list").write_text("\n \n")
    with pytest.raises(DataError, match="empty.list: id list holds no ids"):
        read_id_list(tmp_path / "empty.list")


def test_layout_and_load(la_root):
    ids = list_ids(la_root, "train")
    assert ids == ["phantom_000", "phantom_001", "phantom_002"]
    assert list_ids(la_root, "test.list") == ["phantom_003", "phantom_004"]
    assert case_path(la_root, "X") == la_root / "2018LA_Seg_Training Set" / "X" / "mri_norm2.h5"
    vs = load_la(la_root, ids)
    assert vs.ids == ids
    case = vs[0]
    assert case.image.shape == (1, *SHAPE) and case.image.dtype == torch.float32
    assert case.label.shape == SHAPE and case.label.dtype == torch.uint8
    assert case.spacing == (0.625, 0.625, 0.625) and case.source == str(case_path(la_root, ids[0]))
    assert case.native_label is None and case.native_shape == SHAPE
    # The files hold exactly the in-memory phantoms of the same seed.
    ref = make_phantom_set(3, SHAPE, seed=5)
    assert all(torch.equal(a.image, b.image) and torch.equal(a.label, b.label)
               for a, b in zip(vs, ref))
    vs.validate(2)


def test_load_downsampled_keeps_native_label(la_root):
    full = load_la(la_root, ["phantom_001"])[0]
    half = load_la(la_root, ["phantom_001"], scale=0.5)[0]
    assert half.shape == (10, 9, 6)
    assert half.spacing == pytest.approx((1.25, 1.25, 1.25))
    assert torch.equal(half.native_label, full.label) and half.native_shape == SHAPE
    assert half.label.dtype == torch.uint8 and 0 < int(half.label.sum()) < half.label.numel()


def test_missing_cases_named_in_one_message(la_root):
    for case_id in ("phantom_003", "phantom_004"):
        case_path(la_root, case_id).unlink()
    ids = list_ids(la_root, "test")
    with pytest.raises(MissingCasesError) as err:
        load_la(la_root, ids, list_name="test.list")
    msg = str(err.value)
    assert msg == (f"LA root {la_root}: 2 of 2 cases listed in test.list are missing: "
                   "phantom_003, phantom_004")
    assert err.value.missing == ids and "\n" not in msg
    check_cases_exist(la_root, list_ids(la_root, "train"))


def test_corrupt_and_truncated_files_name_the_file(la_root, tmp_path):
    bad = tmp_path / "garbage.h5"
    bad.write_bytes(b"not an hdf5 file at all" * 10)
    with pytest.raises(DataError, match="^" + re.escape(f"{bad}: cannot open as HDF5")):
        read_h5_case(bad)
    good = case_path(la_root, "phantom_000").read_bytes()
    cut = tmp_path / "truncated.h5"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="^" + re.escape(f"{cut}: ")) as err:
        read_h5_case(cut)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "arrays, problem",
    [
        ({"image": np.zeros((4, 4, 4), np.float32)}, "missing key 'label'"),
        ({"image": np.zeros((4, 4, 4), np.float32), "label": np.zeros((4, 4, 3), np.uint8)},
         r"label shape \(4, 4, 3\) != image shape \(4, 4, 4\)"),
        ({"image": np.zeros((4, 4), np.float32), "label": np.zeros((4, 4), np.uint8)},
         "image must be 3-D"),
        ({"image": np.full((4, 4, 4), np.nan, np.float32), "label": np.zeros((4, 4, 4), np.uint8)},
         "image holds 64 NaN/inf values"),
        ({"image": np.zeros((4, 4, 4), np.float32), "label": np.full((4, 4, 4), 2, np.uint8)},
         r"label values 2 outside 0..1"),
        ({"image": np.zeros((4, 4, 4), np.float32), "label": np.full((4, 4, 4), 0.5)},
         "label holds non-integer values"),
    ],
)
def test_read_h5_case_validates(tmp_path, arrays, problem):
    path = _write_h5(tmp_path / "case" / "mri_norm2.h5", **arrays)
    with pytest.raises(DataError, match="^" + re.escape(f"{path}: ") + problem):
        read_h5_case(path)


def test_read_h5_case_accepts_integer_labels_of_other_dtypes(tmp_path):
    label = np.zeros((4, 4, 4), np.int64)
    label[1, 1, 1] = 1
    path = _write_h5(tmp_path / "c" / "mri_norm2.h5", image=np.ones((4, 4, 4), np.float64),
                     label=label)
    image, lab = read_h5_case(path)
    assert image.dtype == np.float32 and lab.dtype == np.uint8 and lab.sum() == 1


def test_bad_root_and_scale(tmp_path, la_root):
    with pytest.raises(ConfigError, match="data.root: .*nowhere is not a folder"):
        load_la(tmp_path / "nowhere", ["a"])
    with pytest.raises(ConfigError, match=re.escape("data.scale: must be in (0, 1]")):
        load_la(la_root, ["phantom_000"], scale=0)


# ---------------------------------------------------------------- real data (opt-in: -m realdata)

needs_la = pytest.mark.skipif(not (REAL_LA / "train.list").is_file(), reason="no LA data")


@pytest.mark.realdata
@needs_la
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_real_la_training_cases_load(scale):
    ids = list_ids(REAL_LA, "train")
    assert len(ids) == 80
    t0 = time.perf_counter()
    vs = load_la(REAL_LA, ids, scale=scale).validate(2)
    seconds = time.perf_counter() - t0
    shapes = np.array([c.shape for c in vs])
    log.warning("LA train at scale %g: %.1f s, shapes min %s max %s, %.0f MiB", scale, seconds,
                shapes.min(0).tolist(), shapes.max(0).tolist(), vs.nbytes() / 2**20)
    if scale == 1.0:
        assert shapes.min(0).tolist() == [148, 132, 88] and shapes.max(0).tolist() == [244, 160, 88]
    for case in vs:
        assert 0 < int(case.label.sum()) < case.label.numel()
        assert case.eval_label().shape == case.native_shape


@pytest.mark.realdata
@needs_la
def test_real_la_test_list_reports_all_missing_cases():
    ids = list_ids(REAL_LA, "test")
    with pytest.raises(MissingCasesError) as err:
        load_la(REAL_LA, ids, list_name="test.list")
    assert err.value.missing == ids and len(ids) == 20
    assert "20 of 20 cases listed in test.list are missing" in str(err.value)


def test_zscore_intensity_rescales_every_volume_and_file_keeps_the_values(la_root):
    from vasseg.data.intensity import normalize_intensity

    ids = list_ids(la_root, "train")
    as_file = load_la(la_root, ids)
    rescaled = load_la(la_root, ids, intensity="zscore")
    for a, b in zip(as_file, rescaled):
        assert torch.equal(a.label, b.label)
        assert float(b.image.mean()) == pytest.approx(0.0, abs=1e-5)
        assert float(b.image.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
        ref = (a.image - a.image.mean()) / a.image.std(unbiased=False)
        assert torch.allclose(b.image, ref, atol=1e-5)
    # A dark, low-contrast crop (what the LA release holds for some scans) gets the same scale.
    dark = 0.1 + 0.3 * as_file[0].image.numpy()
    assert np.allclose(normalize_intensity(dark, "zscore"), rescaled[0].image.numpy(), atol=1e-4)
    assert normalize_intensity(dark, "file") is dark
    with pytest.raises(ValueError, match="data.intensity"):
        normalize_intensity(dark, "minmax")
