"""``vasseg prepare``: label maps, preprocessing, the prepared format, splits, failures, round trip."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch

from vasseg.cli import main
from vasseg.config import ConfigError, build_experiment
from vasseg.data.nifti import BTCV_NAMES, canonical_ornt, to_canonical, write_synthetic_ct_dataset
from vasseg.data.prepare import PrepareOptions, prepare_dataset, warn_on_label_names
from vasseg.data.prepared import (
    available_label_maps,
    check_classes,
    label_map_from_dict,
    labels_to_source,
    load_label_map,
    read_manifest,
    preprocess_image,
    read_native_label,
    resample_label,
    resized_argmax,
    window_rescale,
)
from vasseg.data.volumes import DataError, VolumeSet
from vasseg.io import read_volume

from tests.loading import load_cases
from tests.windowtools import resize_probs

PAPER_ORGANS = ("background", "spleen", "left kidney", "gallbladder", "esophagus", "liver", "stomach",
                "pancreas", "duodenum")
NATIVE = (48, 40, 24)
SMALL = (32, 32, 16)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_ct_dataset(tmp_path_factory.mktemp("src"), 5, NATIVE, seed=4)


@pytest.fixture(scope="module")
def prepared(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prep") / "mo"
    return prepare_dataset([source], out, PrepareOptions(shape=SMALL, test_fraction=0.4), progress=False)


pytestmark = pytest.mark.usefixtures("one_thread")


def _experiment(root: Path):  # noqa: ANN202
    return build_experiment({"data": {"dataset": "prepared", "root": str(root), "num_classes": 9,
                                      "patch_size": [16, 16, 16]}})


# --------------------------------------------------------------------------- label maps


def test_shipped_maps_give_the_paper_organs_in_table_ii_order() -> None:
    assert {"btcv", "paper8", "totalsegmentator_v2"} <= set(available_label_maps())
    btcv, ts = load_label_map("btcv"), load_label_map("totalsegmentator_v2")
    for lm in (btcv, ts, load_label_map("paper8")):
        assert lm.classes == PAPER_ORGANS
    assert btcv.to_class == {1: 1, 3: 2, 4: 3, 5: 4, 6: 5, 7: 6, 11: 7, 14: 8}
    assert ts.to_class == {1: 1, 3: 2, 4: 3, 15: 4, 5: 5, 6: 6, 7: 7, 19: 8}
    assert ts.restore == {c: s for s, c in ts.to_class.items()}


def test_apply_maps_ids_drops_unmapped_and_restores() -> None:
    lm = load_label_map("btcv")
    source = np.array([[[0, 1, 2, 3, 8, 11, 14]]], dtype=np.int16)
    classes = lm.apply(source, "x.nii.gz")
    assert classes.dtype == np.uint8 and classes.tolist() == [[[0, 1, 0, 2, 0, 7, 8]]]
    assert lm.restore_ids(classes).tolist() == [[[0, 1, 0, 3, 0, 11, 14]]]


def test_ids_outside_the_map_fail_naming_the_file() -> None:
    lm = load_label_map("btcv")
    with pytest.raises(DataError, match=r"^lab\.nii\.gz: label ids 19, 117 are outside label map 'btcv'"):
        lm.apply(np.array([0, 19, 117, 19]), "lab.nii.gz")
    with pytest.raises(DataError, match="non-integer"):
        lm.apply(np.array([0.0, 1.5]), "lab.nii.gz")


def test_custom_map_file_with_restore_choice(tmp_path: Path) -> None:
    path = tmp_path / "kidneys.yaml"
    path.write_text("name: kidneys\nclasses: [background, kidney]\nmap: {2: kidney, 3: kidney}\n"
                    "restore: {kidney: 3}\nmax_source_id: 13\n")
    lm = load_label_map(path)
    assert lm.apply(np.array([2, 3, 5]), "l").tolist() == [1, 1, 0]
    assert lm.restore == {1: 3}
    assert label_map_from_dict(lm.to_dict(), "again") == lm


@pytest.mark.parametrize("raw, message", [
    ({"classes": ["spleen"], "map": {}, "max_source_id": 3}, "starting with 'background'"),
    ({"classes": ["background", "a", "b"], "map": {1: "a"}, "max_source_id": 3}, "no source id maps to class"),
    ({"classes": ["background", "a"], "map": {9: "a"}, "max_source_id": 3}, "needs an id in 1..3"),
    ({"classes": ["background", "a"], "map": {1: "a"}, "restore": {"a": 2}, "max_source_id": 3}, "restore a: 2"),
])
def test_bad_label_maps_are_refused(raw: dict, message: str) -> None:
    with pytest.raises(DataError, match=message):
        label_map_from_dict(raw, "m.yaml")
    with pytest.raises(DataError, match="neither a shipped map"):
        load_label_map("no_such_map")


def test_dataset_label_names_are_checked_against_the_map() -> None:
    btcv = load_label_map("btcv")
    assert warn_on_label_names({str(k): v for k, v in BTCV_NAMES.items()}, btcv) == []
    assert warn_on_label_names({"2": "Kidney_Right", "3": "kidney left"}, btcv) == []
    msd_pancreas = {"0": "background", "1": "pancreas", "2": "cancer"}
    warnings = warn_on_label_names(msd_pancreas, btcv)
    assert len(warnings) == 2 and warnings[0].startswith("dataset.json calls label 1 'pancreas', label map 'btcv'")


# --------------------------------------------------------------------------- preprocessing


def test_window_rescale_and_normalisations() -> None:
    hu = np.array([-1000.0, -200.0, 25.0, 250.0, 3000.0])
    assert np.allclose(window_rescale(hu, (-200, 250)), [0.0, 0.0, 0.5, 1.0, 1.0])
    volume = np.random.default_rng(0).normal(0, 200, (20, 20, 10))
    minmax = preprocess_image(volume, (-200, 250), "minmax", (10, 10, 5))
    assert minmax.dtype == np.float32 and minmax.shape == (10, 10, 5) and 0 <= minmax.min() and minmax.max() <= 1
    z = preprocess_image(volume, (-200, 250), "zscore", (10, 10, 5))
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-4


def test_label_resampling_is_nearest_and_argmax_resize_is_exact() -> None:
    label = np.random.default_rng(1).integers(0, 9, (9, 7, 5), dtype=np.uint8)
    up = resample_label(label, (18, 14, 10))
    assert up.dtype == np.uint8 and np.array_equal(up[::2, ::2, ::2], label)  # factor 2: each voxel twice
    probs = torch.softmax(torch.randn(9, 6, 5, 4), 0)
    expected = resize_probs(probs, (13, 11, 7)).argmax(0).to(torch.uint8)
    assert torch.equal(resized_argmax(probs, (13, 11, 7)), expected)


# --------------------------------------------------------------------------- the prepared format


def test_manifest_lists_and_case_files(prepared: Path, source: Path) -> None:
    manifest = read_manifest(prepared)
    assert manifest["shape"] == list(SMALL) and manifest["window"] == [-200.0, 250.0]
    assert manifest["normalize"] == "minmax" and manifest["class_names"] == list(PAPER_ORGANS)
    assert manifest["label_map"]["name"] == "btcv" and manifest["skipped"] == []
    train = (prepared / "train.list").read_text().split()
    test = (prepared / "test.list").read_text().split()
    assert sorted(train + test) == ["0001", "0002", "0003", "0004", "0005"] and len(test) == 2
    assert not list(prepared.parent.glob(".mo.tmp-*"))
    with h5py.File(prepared / "cases" / "0002.h5", "r") as f:
        image, label, native = f["image"][()], f["label"][()], f["native_label"][()]
        attrs = dict(f.attrs)
    assert image.dtype == np.float32 and image.shape == SMALL and 0 <= image.min() and image.max() <= 1
    assert label.dtype == np.uint8 and label.shape == SMALL and set(np.unique(label)) <= set(range(9))
    assert native.shape == NATIVE and attrs["orientation"] == "LPS"
    src = nib.load(str(source / "img" / "img0002.nii.gz"))
    assert np.allclose(attrs["original_affine"], src.affine) and tuple(attrs["original_shape"]) == NATIVE
    assert np.allclose(attrs["factor"], np.array(SMALL) / np.array(NATIVE))
    assert np.allclose(attrs["spacing"], np.array(attrs["canonical_spacing"]) * np.array(NATIVE) / np.array(SMALL))


def test_native_label_is_the_mapped_source_label(prepared: Path, source: Path) -> None:
    lab = nib.load(str(source / "label" / "label0002.nii.gz"))
    expected = load_label_map("btcv").apply(np.asarray(lab.dataobj), "l")
    native = read_native_label(prepared / "cases" / "0002.h5", 9)
    assert np.array_equal(native, to_canonical(expected, canonical_ornt(lab.affine)))


def test_organ_volumes_survive_resampling(prepared: Path) -> None:
    """Physical volume per organ: prepared grid vs original, within the resampling error."""
    manifest = read_manifest(prepared)
    for case_id, record in manifest["cases"].items():
        with h5py.File(prepared / "cases" / f"{case_id}.h5", "r") as f:
            label, native = f["label"][()], f["native_label"][()]
            v_native, v_prep = float(np.prod(f.attrs["canonical_spacing"])), float(np.prod(f.attrs["spacing"]))
        for cls, name in enumerate(PAPER_ORGANS[1:], start=1):
            assert record["voxels"][name] == int((label == cls).sum())
            assert record["native_voxels"][name] == int((native == cls).sum())
            error = abs(record["voxels"][name] * v_prep - record["native_voxels"][name] * v_native)
            assert error <= resampling_error(native == cls, v_native, label == cls, v_prep), (case_id, name)


def resampling_error(native: np.ndarray, v_native: float, prepared: np.ndarray, v_prep: float) -> float:
    """Volume (mm^3) of the one-voxel shells around both surfaces: where resampling can change a mask.

    Nearest-neighbour resampling changes a voxel's class only where a surface passes within one
    voxel (of either grid), so the volume difference cannot exceed the larger of the two shells.
    """
    from scipy.ndimage import binary_dilation, binary_erosion

    def shell(mask: np.ndarray) -> int:
        return int((binary_dilation(mask) & ~binary_erosion(mask)).sum())

    return max(shell(native) * v_native, shell(prepared) * v_prep)


def test_split_is_deterministic_and_explicit_ids_win(source: Path, tmp_path: Path) -> None:
    a = prepare_dataset([source], tmp_path / "a", PrepareOptions(shape=SMALL, seed=3), progress=False)
    b = prepare_dataset([source], tmp_path / "b", PrepareOptions(shape=SMALL, seed=3), progress=False)
    assert (a / "train.list").read_text() == (b / "train.list").read_text()
    assert len((a / "test.list").read_text().split()) == round(5 * 20 / 90)
    c = prepare_dataset([source], tmp_path / "c", PrepareOptions(shape=SMALL, test_ids=("0004", "0001")),
                        progress=False)
    assert (c / "test.list").read_text().split() == ["0001", "0004"]
    with pytest.raises(DataError, match="--test-ids: 1 ids are not among the prepared cases: 0009"):
        prepare_dataset([source], tmp_path / "d", PrepareOptions(shape=SMALL, test_ids=("0009",)), progress=False)
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------------- failures


def _broken_copy(source: Path, tmp_path: Path) -> Path:
    """A copy whose case 0003 label has the wrong shape and case 0004 label holds TotalSegmentator ids."""
    root = tmp_path / "broken"
    shutil.copytree(source, root)
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 10), np.uint8), np.eye(4)), str(root / "label" / "label0003.nii.gz"))
    lab = nib.load(str(root / "label" / "label0004.nii.gz"))
    data = np.asarray(lab.dataobj).copy()
    data[data == 14] = 19
    nib.save(nib.Nifti1Image(data, lab.affine), str(root / "label" / "label0004.nii.gz"))
    return root


def test_bad_pairs_fail_naming_the_file_and_leave_nothing(source: Path, tmp_path: Path) -> None:
    root = _broken_copy(source, tmp_path)
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"^{root / 'label' / 'label0003.nii.gz'}: shape \(10, 10, 10\) differs"):
        prepare_dataset([root], out, PrepareOptions(shape=SMALL), progress=False)
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_skip_bad_skips_and_records_every_bad_file(source: Path, tmp_path: Path) -> None:
    root = _broken_copy(source, tmp_path)
    out = prepare_dataset([root], tmp_path / "out", PrepareOptions(shape=SMALL, skip_bad=True), progress=False)
    manifest = read_manifest(out)
    assert sorted(manifest["cases"]) == ["0001", "0002", "0005"]
    skipped = {s["file"]: s["problem"] for s in manifest["skipped"]}
    assert set(skipped) == {str(root / "label" / "label0003.nii.gz"), str(root / "label" / "label0004.nii.gz")}
    assert "label ids 19 are outside label map 'btcv'" in skipped[str(root / "label" / "label0004.nii.gz")]


def test_truncated_image_is_reported_by_file(source: Path, tmp_path: Path) -> None:
    root = tmp_path / "trunc"
    shutil.copytree(source, root)
    bad = root / "img" / "img0005.nii.gz"
    bad.write_bytes(bad.read_bytes()[:2000])
    with pytest.raises(DataError, match=rf"^{bad}: "):
        prepare_dataset([root], tmp_path / "out", PrepareOptions(shape=SMALL), progress=False)
    assert not (tmp_path / "out").exists()
    out = prepare_dataset([root], tmp_path / "out", PrepareOptions(shape=SMALL, skip_bad=True), progress=False)
    assert sorted(read_manifest(out)["cases"]) == ["0001", "0002", "0003", "0004"]


def test_existing_output_needs_overwrite_and_foreign_files_survive(source: Path, tmp_path: Path) -> None:
    """Issue 25: --overwrite deleted every file of the folder; now only prepare's own output goes."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("x")
    with pytest.raises(ConfigError, match="holds 'old.txt', not written by vasseg prepare"):
        prepare_dataset([source], out, PrepareOptions(shape=SMALL), progress=False)
    for _ in range(2):  # the second run replaces the first one's dataset, never old.txt
        prepare_dataset([source], out, PrepareOptions(shape=SMALL, overwrite=True), progress=False)
        assert (out / "old.txt").read_text() == "x" and (out / "prepared.json").is_file()
    assert sorted(p.name for p in out.iterdir()) == [".vasseg-output.json", "cases", "config.yaml", "old.txt",
                                                     "prepared.json", "split.yaml", "test.list", "train.list"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    empty = tmp_path / "empty"
    empty.mkdir()
    assert prepare_dataset([source], empty, PrepareOptions(shape=SMALL), progress=False) == empty


def test_cli_prepare_and_its_one_line_errors(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cli"
    argv = ["prepare", str(source), "--out", str(out), "--shape", "24", "24", "16", "--window", "-150", "200",
            "--normalize", "zscore", "--test-fraction", "0.2", "--seed", "1", "--quiet"]
    assert main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    manifest = read_manifest(out)
    assert manifest["window"] == [-150.0, 200.0] and manifest["normalize"] == "zscore"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"vasseg prepare: error: {out}: holds earlier output of vasseg prepare ('cases'); pass "
                   f"--overwrite to replace it")
    assert main(["prepare", str(source), "--out", str(tmp_path / "x"), "--label-map", "nope", "--quiet"]) == 2
    assert "label map 'nope'" in capsys.readouterr().err


# --------------------------------------------------------------------------- reader and hooks


def load_prepared(root: Path, ids: list[str], scale: float = 1.0) -> VolumeSet:
    """Prepared cases through the ``prepared`` format, as the engine reads them."""
    return load_cases("prepared", root, ids, num_classes=9, patch_size=[16, 16, 16], scale=scale)


def test_load_prepared_cases_and_scale(prepared: Path) -> None:
    cases = load_prepared(prepared, ["0001", "0002"])
    case = cases.by_id("0002")
    assert case.image.shape == (1, *SMALL) and case.label.shape == SMALL and case.native_label is None
    assert case.native_shape == NATIVE and case.source.endswith("0002.h5")
    small = load_prepared(prepared, ["0002"], scale=0.5)[0]
    assert small.shape == (16, 16, 8) and np.allclose(small.spacing, np.array(case.spacing) * 2)
    assert small.native_shape == NATIVE and set(small.label.unique().tolist()) <= set(range(9))
    with pytest.raises(DataError, match="2 of 3 cases listed in the id list have no file: 0042, 0043"):
        load_prepared(prepared, ["0001", "0042", "0043"])


def test_config_classes_must_match_the_dataset(prepared: Path) -> None:
    check_classes(prepared, 9, PAPER_ORGANS)
    with pytest.raises(ConfigError, match="data.num_classes: 2, but the prepared dataset"):
        check_classes(prepared, 2)
    with pytest.raises(ConfigError, match="data.class_names"):
        check_classes(prepared, 9, ("background", *"abcdefgh"))


@pytest.mark.parametrize("shape", [NATIVE, SMALL])
def test_oracle_round_trip_restores_source_ids_on_the_input_grid(source: Path, tmp_path: Path,
                                                                 shape: tuple[int, int, int]) -> None:
    """The prepared label as 'probabilities' -> labels_to_source == the source label (mapped ids).

    At the native shape the round trip is exact (orientation and id restoration); at a smaller
    shape it loses only boundary voxels.
    """
    out = prepare_dataset([source], tmp_path / "p", PrepareOptions(shape=shape), progress=False)
    exp = _experiment(out)
    for case_id in ("0001", "0002"):  # RAS and LPS storage
        case = load_prepared(out, [case_id])[0]
        probs = torch.nn.functional.one_hot(case.label.long(), 9).permute(3, 0, 1, 2).float()
        volume = read_volume(source / "img" / f"img{case_id}.nii.gz")
        restored = labels_to_source(probs, volume, tmp_path, exp)
        lm = load_label_map("btcv")
        stored = np.asarray(nib.load(str(source / "label" / f"label{case_id}.nii.gz")).dataobj)
        truth = lm.restore_ids(lm.apply(stored, "l"))
        assert restored.shape == truth.shape
        if shape == NATIVE:
            assert np.array_equal(restored, truth)
        else:
            for source_id in (6, 7, 1):  # liver, stomach, spleen: the big organs
                a, b = restored == source_id, truth == source_id
                assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.8, (case_id, source_id)
