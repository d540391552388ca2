"""``vasseg prepare`` on a user's own scans: nnU-Net v2 layout, unlabeled folders, MR, the planned
config, and one test per bad input (one line naming the file, nothing written)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import yaml

from vasseg.config import ConfigError, load_config
from vasseg.data.nifti import canonical_ornt, canonical_spacing
from vasseg.data.plan import PATCH_VOXEL_BUDGET, default_num_val, plan_patch
from vasseg.data.prepare import PrepareOptions, prepare_dataset
from vasseg.data.prepared import preprocess_with_manifest, read_manifest
from vasseg.data.preprocess import data_modality, detect_modality, mr_normalize
from vasseg.data.setup import experiment_split
from vasseg.data.synthetic_nnunet import save_nifti, write_synthetic_nnunet, write_unlabeled_scans
from vasseg.io import read_volume
from vasseg.methods import available_methods

from tests.clitools import cli_error, listing

pytestmark = pytest.mark.usefixtures("one_thread")
BINARY_ONLY = {"bcp", "dtc", "sassnet"}  # methods whose public code is binary


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 labeled + 1 unlabeled image in imagesTr, 2 in imagesTs, and a folder of 4 unlabeled scans."""
    base = tmp_path_factory.mktemp("own")
    write_synthetic_nnunet(base / "Dataset042_Heart", labeled=3, test=2, unlabeled_in_tr=1, seed=3)
    write_unlabeled_scans(base / "more_scans", 4, seed=5)
    return base


@pytest.fixture(scope="module")
def prepared(raw: Path) -> Path:
    options = PrepareOptions(unlabeled=(str(raw / "more_scans"),), workers=1)
    return prepare_dataset([raw / "Dataset042_Heart"], raw / "prepared", options, progress=False)


def _copy(raw: Path, tmp_path: Path) -> Path:
    root = tmp_path / "Dataset042_Heart"
    shutil.copytree(raw / "Dataset042_Heart", root)
    return root


# --------------------------------------------------------------------------- layout, roles, split


def test_nnunet_layout_gives_four_splits(prepared: Path) -> None:
    split = yaml.safe_load((prepared / "split.yaml").read_text())
    assert list(split) == ["labeled", "unlabeled", "val", "test"]
    assert sorted(split["labeled"]) == ["case_000", "case_001", "case_002"] and split["val"] == []
    assert split["unlabeled"] == ["case_003", "extra_000", "extra_001", "extra_002", "extra_003"]
    assert split["test"] == ["case_004", "case_005"]
    assert (prepared / "train.list").read_text().split() == split["labeled"] + split["unlabeled"]
    assert (prepared / "test.list").read_text().split() == split["test"]
    manifest = read_manifest(prepared)
    assert manifest["layout"] == "nnunet" and manifest["class_names"] == ["background", "heart", "liver"]
    roles = {i: (r["role"], r["labeled"]) for i, r in manifest["cases"].items()}
    assert roles["case_003"] == ("unlabeled", False) and roles["extra_002"] == ("unlabeled", False)
    assert roles["case_004"] == ("test", False) and roles["case_001"] == ("labeled", True)
    with h5py.File(prepared / "cases" / "extra_000.h5", "r") as f:
        assert set(f) == {"image"} and f.attrs["source_label"] == ""


def test_images_without_labels_are_counted_in_the_log(raw: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vasseg"):
        prepare_dataset([raw / "Dataset042_Heart"], tmp_path / "p", PrepareOptions(workers=1), progress=False)
    assert "1 of 4 images have no label in labelsTr/: they are unlabeled cases" in caplog.text
    assert "validation split: none (3 labeled training cases; the default needs >= 5)" in caplog.text


def test_validation_is_a_fifth_of_the_labeled_cases(tmp_path: Path) -> None:
    assert [default_num_val(n) for n in (1, 4, 5, 7, 10, 13)] == [0, 0, 1, 1, 2, 3]
    root = write_synthetic_nnunet(tmp_path / "D", labeled=6, shape=(24, 24, 10), seed=1)
    out = prepare_dataset([root], tmp_path / "p", PrepareOptions(workers=1), progress=False)
    split = yaml.safe_load((out / "split.yaml").read_text())
    assert len(split["val"]) == 1 and len(split["labeled"]) == 5 and split["test"] == []
    config = load_config(out / "config.yaml")
    assert config.data.num_val == 1 and config.data.labeled == 5
    assert experiment_split(config).val == split["val"]


# --------------------------------------------------------------------------- intensities and grid


def test_mr_scans_are_clipped_z_scored_and_resampled_to_the_median_spacing(raw: Path, prepared: Path) -> None:
    manifest = read_manifest(prepared)
    assert manifest["modality"] == "mr" and manifest["percentiles"] == [0.5, 99.5] and manifest["shape"] is None
    spacings = []
    for case in ("case_000", "case_001", "case_002"):
        img = nib.load(str(raw / "Dataset042_Heart" / "imagesTr" / f"{case}_0000.nii.gz"))
        spacings.append(canonical_spacing(img.header.get_zooms()[:3], canonical_ornt(img.affine)))
    assert np.allclose(manifest["target_spacing"], np.median(spacings, axis=0), atol=1e-4)
    shapes = set()
    for case in ("case_001", "extra_003", "case_004"):
        record = manifest["cases"][case]
        source = Path(record["source_image"])
        with h5py.File(prepared / "cases" / f"{case}.h5", "r") as f:
            stored, canonical = f["image"][()], f.attrs["canonical_shape"]
            spacing = f.attrs["canonical_spacing"]
        expected = np.round(canonical * spacing / manifest["target_spacing"]).astype(int)
        assert stored.shape == tuple(expected) and record["shape"] == list(expected)
        shapes.add(stored.shape)
        # predict preprocesses a new scan exactly as prepare did (the model file carries this record)
        again = preprocess_with_manifest(read_volume(source), manifest, 1.0)[0].numpy()
        assert np.array_equal(again, stored)
    assert len(shapes) == 3  # each case keeps its own extent


def test_mr_normalisation() -> None:
    rng = np.random.default_rng(0)
    image = np.zeros((20, 20, 10), np.float32)
    image[5:15, 5:15] = rng.normal(500, 50, (10, 10, 10))
    image[7, 7, 7] = 1e6  # an artefact: clipped to the 99.5th percentile of the non-zero voxels
    out = mr_normalize(image)
    assert abs(float(out.mean())) < 1e-5 and abs(float(out.std()) - 1) < 1e-4
    low, high = np.percentile(image[image != 0], [0.5, 99.5])  # of the non-zero voxels; air is clipped too
    clipped = np.clip(image, low, high)
    assert np.allclose(out, (clipped - clipped.mean()) / clipped.std(), atol=1e-5)
    assert np.array_equal(mr_normalize(np.full((4, 4, 4), 7.0)), np.zeros((4, 4, 4), np.float32))


def test_modality_auto(tmp_path: Path) -> None:
    assert detect_modality("auto", {"channel_names": {"0": "CT"}}, None) == "ct"
    assert detect_modality("auto", {"channel_names": {"0": "T2"}}, None) == "mr"
    assert detect_modality("auto", {"modality": {"0": "MRI"}}, None) == "mr"
    assert detect_modality("ct", {"channel_names": {"0": "T2"}}, None) == "ct"
    hu = save_nifti(tmp_path / "ct.nii.gz", np.full((4, 4, 4), -1000, np.int16), np.eye(4))
    mr = save_nifti(tmp_path / "mr.nii.gz", np.full((4, 4, 4), 300, np.int16), np.eye(4))
    floats = save_nifti(tmp_path / "f.nii.gz", np.full((4, 4, 4), -1000.0, np.float32), np.eye(4))
    assert [data_modality(p) for p in (hu, mr, floats)] == ["ct", "mr", "mr"]
    assert detect_modality("auto", {}, hu) == "ct"


def test_images_route_takes_the_label_values_and_the_median_spacing(raw: Path, tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    for case in ("case_000", "case_001"):
        (images / f"{case}.nii.gz").symlink_to(raw / "Dataset042_Heart" / "imagesTr" / f"{case}_0000.nii.gz")
        (labels / f"{case}.nii.gz").symlink_to(raw / "Dataset042_Heart" / "labelsTr" / f"{case}.nii.gz")
    out = prepare_dataset([], tmp_path / "p", PrepareOptions(workers=1), progress=False, plain=(images, labels))
    manifest = read_manifest(out)
    assert manifest["class_names"] == ["background", "label_1", "label_2"] and manifest["modality"] == "mr"
    assert manifest["target_spacing"] is not None and (out / "test.list").read_text() == ""


def test_unlabeled_scans_join_every_layout(raw: Path, tmp_path: Path) -> None:
    """BTCV pairs (CT) and --images pairs take --unlabeled folders and globs too."""
    from vasseg.data.nifti import write_synthetic_ct_dataset

    btcv = write_synthetic_ct_dataset(tmp_path / "btcv", 3, (32, 32, 16), seed=1)
    extra = tmp_path / "ct_extra"
    extra.mkdir()
    (extra / "scan_a.nii.gz").symlink_to(btcv / "img" / "img0003.nii.gz")
    options = PrepareOptions(shape=(32, 32, 16), test_fraction=0.0, unlabeled=(str(extra / "*.nii.gz"),), workers=1)
    out = prepare_dataset([btcv], tmp_path / "p1", options, progress=False)
    split = yaml.safe_load((out / "split.yaml").read_text())
    assert split["unlabeled"] == ["scan_a"] and sorted(split["labeled"]) == ["0001", "0002", "0003"]
    assert read_manifest(out)["modality"] == "ct" and load_config(out / "config.yaml").data.augment is False
    images, labels = tmp_path / "images", tmp_path / "labels"
    for folder, name, case in ((images, "a.nii.gz", "imagesTr/case_000_0000"), (images, "b_0000.nii.gz",
                               "imagesTr/case_001_0000"), (labels, "a.nii.gz", "labelsTr/case_000"),
                               (labels, "b.nii.gz", "labelsTr/case_001")):
        folder.mkdir(exist_ok=True)
        (folder / name).symlink_to(raw / "Dataset042_Heart" / f"{case}.nii.gz")
    options = PrepareOptions(unlabeled=(str(raw / "more_scans"),), workers=1)
    out = prepare_dataset([], tmp_path / "p2", options, progress=False, plain=(images, labels))
    split = yaml.safe_load((out / "split.yaml").read_text())
    assert split["unlabeled"] == ["extra_000", "extra_001", "extra_002", "extra_003"]
    assert sorted(split["labeled"]) == ["a", "b"]


def test_unlabeled_names_follow_nnunet_when_the_folder_does() -> None:
    from vasseg.data.nnunet import unlabeled_cases
    from vasseg.data.volumes import DataError

    cases, problems = unlabeled_cases([Path("u/a_0000.nii.gz"), Path("u/case_0001_0000.nii")])
    assert [c.id for c in cases] == ["a", "case_0001"] and not problems
    assert [c.id for c in unlabeled_cases([Path("u/case_0001.nii.gz")])[0]] == ["case_0001"]  # plain names
    with pytest.raises(DataError, match=r"^u/a_0001.nii.gz: channel 0001: multi-channel images are not supported"):
        unlabeled_cases([Path("u/a_0000.nii.gz"), Path("u/a_0001.nii.gz")])


# --------------------------------------------------------------------------- the planned config


def test_planned_config_is_complete_and_commented(prepared: Path) -> None:
    text = (prepared / "config.yaml").read_text()
    exp = load_config(prepared / "config.yaml")
    assert exp.data.dataset == "prepared" and Path(exp.data.root) == prepared.resolve()
    assert exp.data.num_classes == 3 and exp.data.class_names == ("background", "heart", "liver")
    assert exp.data.labeled == 3 and exp.data.num_val == 0 and exp.method.name == "vas"
    assert (exp.data.labeled_bs, exp.data.unlabeled_bs) == (2, 2)
    assert all(p % 16 == 0 for p in exp.data.patch_size) and np.prod(exp.data.patch_size) <= PATCH_VOXEL_BUDGET
    assert np.allclose(exp.data.spacing, read_manifest(prepared)["target_spacing"])
    for why in ("from dataset.json's labels", "median labeled extent", "a validation split needs >= 5",
                "nnU-Net's non-CT scheme", "half the patch"):
        assert why in text
    for method in available_methods():
        if method in BINARY_ONLY:
            with pytest.raises(ConfigError, match="2 classes"):
                load_config(prepared / "config.yaml", [f"method.name={method}"])
        else:
            assert load_config(prepared / "config.yaml", [f"method.name={method}"]).method.name == method


@pytest.mark.parametrize("shape", [(40, 40, 14), (96, 96, 40)])
def test_the_cpu_hint_of_the_config_trains(shape: tuple[int, int, int], tmp_path: Path) -> None:
    """The overrides config.yaml suggests for a 2-core CPU pass every training check on the data."""
    from vasseg.data.setup import build_data
    from vasseg.engine.run import check_training_data
    from vasseg.methods import get_method

    root = write_synthetic_nnunet(tmp_path / "D", labeled=2, shape=shape, seed=4)
    write_unlabeled_scans(tmp_path / "u", 1, shape=shape)
    out = prepare_dataset([root], tmp_path / "p", PrepareOptions(unlabeled=(str(tmp_path / "u"),), workers=1),
                          progress=False)
    hint = next(line for line in (out / "config.yaml").read_text().splitlines() if "2-core CPU" in line)
    overrides = hint.split(": ", 1)[1].split()
    assert ("data.scale=0.5" in overrides) == (shape[2] == 40)  # 14 slices: too thin to halve
    exp = load_config(out / "config.yaml", overrides)
    check_training_data(exp, build_data(exp, get_method(exp.method.name), progress=False))


def test_config_labeled_cannot_reach_the_unlabeled_cases(prepared: Path) -> None:
    with pytest.raises(ConfigError, match=r"data.labeled: case case_003 of .*train.list has no label .*the prepared "
                                          r"dataset has 3 labeled training cases"):
        experiment_split(load_config(prepared / "config.yaml", ["data.labeled=4"]))
    assert experiment_split(load_config(prepared / "config.yaml", ["data.labeled=2"])).unlabeled[0] in (
        "case_000", "case_001", "case_002")


def test_patch_rule() -> None:
    assert plan_patch([[42, 39, 12]] * 3, [[40, 38, 11]], augment=True) == (32, 32, 16)
    assert plan_patch([[200, 200, 150]], [[180, 190, 140]], augment=False) == (80, 80, 80)
    assert plan_patch([[200, 200, 100]], [[30, 190, 100]], augment=True) == (48, 48, 96)  # x,y <= 2 x 30


def test_worker_pool_writes_the_same_dataset(raw: Path, prepared: Path, tmp_path: Path) -> None:
    options = PrepareOptions(unlabeled=(str(raw / "more_scans"),), workers=2)
    pooled = prepare_dataset([raw / "Dataset042_Heart"], tmp_path / "pooled", options, progress=False)
    assert read_manifest(pooled)["cases"] == read_manifest(prepared)["cases"]
    for case in ("case_000", "extra_001"):
        with h5py.File(pooled / "cases" / f"{case}.h5", "r") as a, h5py.File(prepared / "cases" / f"{case}.h5") as b:
            assert set(a) == set(b) and all(np.array_equal(a[k][()], b[k][()]) for k in a)


# --------------------------------------------------------------------------- bad inputs


def _refused(capsys: pytest.CaptureFixture, tmp_path: Path, *argv: str) -> str:
    """The one-line error of ``vasseg prepare ARGV --out tmp/out``; nothing is left behind."""
    workers = () if "--workers" in argv else ("--workers", "1")
    line = cli_error(capsys, "prepare", *argv, "--out", str(tmp_path / "out"), *workers, "--quiet")
    assert not (tmp_path / "out").exists() and not [p for p in listing(tmp_path) if ".out." in p]
    return line


def test_label_with_another_shape_is_refused(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy(raw, tmp_path)
    bad = root / "labelsTr" / "case_001.nii.gz"
    save_nifti(bad, np.zeros((8, 8, 8), np.uint8), nib.load(str(bad)).affine)
    assert f"{bad}: shape (8, 8, 8) differs from image case_001_0000.nii.gz" in _refused(capsys, tmp_path, str(root))


def test_label_with_another_affine_is_refused(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy(raw, tmp_path)
    bad = root / "labelsTr" / "case_002.nii.gz"
    img = nib.load(str(bad))
    save_nifti(bad, np.asarray(img.dataobj), img.affine + np.diag([0, 0, 0.5, 0]))
    assert f"{bad}: affine differs from image case_002_0000.nii.gz's by up to 0.5 mm" in _refused(
        capsys, tmp_path, str(root))


def test_unlabeled_file_that_has_a_label_is_refused(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    shutil.copy(raw / "Dataset042_Heart" / "imagesTr" / "case_001_0000.nii.gz", extra / "case_001.nii.gz")
    line = _refused(capsys, tmp_path, str(raw / "Dataset042_Heart"), "--unlabeled", str(extra))
    assert f"{extra / 'case_001.nii.gz'}: given as unlabeled, but case case_001 has a label" in line


def test_duplicate_case_names_across_folders_are_refused(raw: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    other = write_unlabeled_scans(tmp_path / "other", 1, seed=9)
    line = _refused(capsys, tmp_path, str(raw / "Dataset042_Heart"), "--unlabeled", str(raw / "more_scans"),
                    "--unlabeled", str(tmp_path / "other" / "*.nii.gz"))
    assert f"{other / 'extra_000.nii.gz'}: case name extra_000 is also used by " in line
    assert "duplicate case names across folders" in line


def test_4d_image_is_refused(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    extra = tmp_path / "extra"
    save_nifti(extra / "cine.nii.gz", np.zeros((8, 8, 8, 5), np.float32), np.eye(4))
    line = _refused(capsys, tmp_path, str(raw / "Dataset042_Heart"), "--unlabeled", str(extra))
    assert f"{extra / 'cine.nii.gz'}: 4-D image (8, 8, 8, 5)" in line


@pytest.mark.parametrize("which", ["unlabeled", "imagesTr", "glob"])
def test_empty_folders_are_refused(which: str, raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    if which == "imagesTr":
        root = _copy(raw, tmp_path)
        shutil.rmtree(root / "imagesTr")
        (root / "imagesTr").mkdir()
        assert f"{root / 'imagesTr'}: no images" in _refused(capsys, tmp_path, str(root))
    elif which == "unlabeled":
        line = _refused(capsys, tmp_path, str(raw / "Dataset042_Heart"), "--unlabeled", str(empty))
        assert f"{empty}: --unlabeled folder holds no .nii/.nii.gz images" in line
    else:
        line = _refused(capsys, tmp_path, str(raw / "Dataset042_Heart"), "--unlabeled", str(empty / "*.nii.gz"))
        assert "--unlabeled pattern matches no .nii/.nii.gz image" in line


@pytest.mark.parametrize("change, message", [
    ({"numTraining": 5}, "dataset.json: numTraining is 5 but labelsTr/ holds 3 label files"),
    ({"file_ending": ".nii"}, "dataset.json says file_ending '.nii', this file ends otherwise"),
    ({"file_ending": ".mha"}, "dataset.json: file_ending '.mha': vasseg reads NIfTI (.nii.gz, .nii) only"),
    ({"labels": {"heart": 1}}, "dataset.json: 'labels' must name value 0 'background'"),
    ({"channel_names": {"0": "T1", "1": "T2"}}, "channel_names lists 2 channels; multi-channel images are not"),
])
def test_dataset_json_that_disagrees_with_the_files_is_refused(change: dict, message: str, raw: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    root = _copy(raw, tmp_path)
    meta = json.loads((root / "dataset.json").read_text()) | change
    (root / "dataset.json").write_text(json.dumps(meta))
    assert message in _refused(capsys, tmp_path, str(root))


@pytest.mark.parametrize("workers", ["1", "2"])
def test_label_values_not_in_dataset_json_are_refused(workers: str, raw: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    """Also with a worker pool: the first bad case stops it, the queued ones are cancelled."""
    root = _copy(raw, tmp_path)
    bad = root / "labelsTr" / "case_000.nii.gz"
    img = nib.load(str(bad))
    data = np.asarray(img.dataobj).copy()
    data[0, 0, 0] = 7
    save_nifti(bad, data, img.affine)
    line = _refused(capsys, tmp_path, str(root), "--workers", workers)
    assert f"{bad}: label values 7 are not among the dataset's labels (0 background, 1 heart, 2 liver)" in line


def test_an_nnunet_dataset_is_the_only_source(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from vasseg.data.nifti import write_synthetic_ct_dataset

    btcv = write_synthetic_ct_dataset(tmp_path / "btcv", 1, (16, 16, 8))
    line = _refused(capsys, tmp_path, str(raw / "Dataset042_Heart"), str(btcv))
    assert f"{raw / 'Dataset042_Heart'}: an nnU-Net dataset is prepared as the only SOURCE" in line


def test_multi_channel_images_are_refused(raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = _copy(raw, tmp_path)
    second = root / "imagesTr" / "case_000_0001.nii.gz"
    shutil.copy(root / "imagesTr" / "case_000_0000.nii.gz", second)
    line = _refused(capsys, tmp_path, str(root))
    assert f"{second}: channel 0001: multi-channel images are not supported yet" in line
