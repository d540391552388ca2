"""NIfTI dataset discovery (BTCV pairs, MSD, nnU-Net v2), orientation helpers, CT phantoms."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vasseg.data.nifti import (
    BTCV_NAMES,
    PHANTOM_ORGANS,
    canonical_ornt,
    canonical_spacing,
    discover_dataset,
    discover_sources,
    from_canonical,
    make_synthetic_ct,
    to_canonical,
    write_synthetic_ct_dataset,
)
from vasseg.data.volumes import DataError

SHAPE = (24, 20, 12)


@pytest.fixture(scope="module")
def btcv_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_ct_dataset(tmp_path_factory.mktemp("btcv"), 3, SHAPE, seed=0, layout="btcv")


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_ct_dataset(tmp_path_factory.mktemp("msd"), 2, SHAPE, seed=1, layout="msd")


def test_btcv_pairs_are_matched_by_id(btcv_root: Path) -> None:
    found = discover_dataset(btcv_root)
    assert found.layout == "btcv" and not found.problems
    assert [p.id for p in found.pairs] == ["0001", "0002", "0003"]
    pair = found.pairs[1]
    assert pair.image == btcv_root / "img" / "img0002.nii.gz"
    assert pair.label == btcv_root / "label" / "label0002.nii.gz"


def test_msd_reads_the_training_list(msd_root: Path) -> None:
    found = discover_dataset(msd_root)
    assert found.layout == "msd" and not found.problems
    assert [p.id for p in found.pairs] == ["ct_001", "ct_002"]
    assert found.pairs[0].label == msd_root / "labelsTr" / "ct_001.nii.gz"
    assert found.label_names["14"] == "duodenum"


def test_nnunet_v2_folders_without_training_list(msd_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "Dataset001"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    shutil.copy(msd_root / "imagesTr" / "ct_001.nii.gz", root / "imagesTr" / "abd_7_0000.nii.gz")
    shutil.copy(msd_root / "labelsTr" / "ct_001.nii.gz", root / "labelsTr" / "abd_7.nii.gz")
    shutil.copy(msd_root / "imagesTr" / "ct_002.nii.gz", root / "imagesTr" / "lonely_0000.nii.gz")
    meta = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 1}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    found = discover_dataset(root)
    assert [p.id for p in found.pairs] == ["abd_7"]
    assert found.label_names == {"0": "background", "1": "spleen"}
    # An image without a label is an unlabeled case (issue 26), not a problem.
    assert found.layout == "nnunet" and not found.problems
    assert [(p.id, p.image, p.label) for p in found.unlabeled] == [
        ("lonely", root / "imagesTr" / "lonely_0000.nii.gz", None)]


def test_every_unpaired_or_duplicate_file_is_a_problem_naming_it(btcv_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "messy"
    shutil.copytree(btcv_root, root)
    (root / "label" / "label0003.nii.gz").unlink()                       # image without label
    shutil.copy(root / "img" / "img0001.nii.gz", root / "label" / "label0009.nii.gz")  # no image
    (root / "more").mkdir()
    shutil.copy(root / "img" / "img0002.nii.gz", root / "more" / "img0002.nii.gz")    # duplicate id
    (root / "img" / "._img0001.nii.gz").write_bytes(b"AppleDouble")      # hidden: not a case
    found = discover_dataset(root)
    assert [p.id for p in found.pairs] == ["0001"]
    named = {line.split(": ", 1)[0] for line in found.problems}
    assert named == {str(root / "img" / "img0003.nii.gz"), str(root / "label" / "label0009.nii.gz"),
                     str(root / "img" / "img0002.nii.gz"), str(root / "more" / "img0002.nii.gz"),
                     str(root / "label" / "label0002.nii.gz")}


def test_msd_missing_listed_file_is_a_problem(msd_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "msd"
    shutil.copytree(msd_root, root)
    (root / "labelsTr" / "ct_002.nii.gz").unlink()
    found = discover_dataset(root)
    assert [p.id for p in found.pairs] == ["ct_001"]
    missing = root / "labelsTr" / "ct_002.nii.gz"
    assert found.problems == [f"{missing}: listed in dataset.json (training[1]) but missing"]


def test_several_sources_prefix_ids_with_their_folder(btcv_root: Path, msd_root: Path) -> None:
    found = discover_sources([btcv_root, msd_root])
    ids = [p.id for p in found.pairs]
    assert ids[:3] == [f"{btcv_root.name}_0001", f"{btcv_root.name}_0002", f"{btcv_root.name}_0003"]
    assert ids[3:] == [f"{msd_root.name}_ct_001", f"{msd_root.name}_ct_002"]


def test_folders_that_are_no_dataset_fail_loudly(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found"):
        discover_dataset(tmp_path / "nope")
    with pytest.raises(DataError, match="no img"):
        discover_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DataError, match="dataset.json: cannot read"):
        discover_dataset(tmp_path)


def test_phantom_is_hu_with_btcv_ids_and_deterministic() -> None:
    hu, label = make_synthetic_ct(SHAPE, seed=(3, 1))
    hu2, label2 = make_synthetic_ct(SHAPE, seed=(3, 1))
    assert hu.dtype == np.int16 and label.dtype == np.uint8 and hu.shape == label.shape == SHAPE
    assert np.array_equal(hu, hu2) and np.array_equal(label, label2)
    assert hu.min() < -900 and hu.max() > 300  # air and bone around the organs
    assert set(np.unique(label)) == {0, *(organ[0] for organ in PHANTOM_ORGANS)}
    assert set(np.unique(label)) <= set(BTCV_NAMES)
    liver, gallbladder = hu[label == 6].mean(), hu[label == 4].mean()
    assert liver - gallbladder > 50  # organs differ in HU


def test_flipped_phantoms_store_the_same_anatomy(btcv_root: Path) -> None:
    """Case 2 is stored LPS: its affine says so, and canonical order undoes the flip exactly."""
    img = nib.load(str(btcv_root / "img" / "img0002.nii.gz"))
    assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
    assert img.get_data_dtype() == np.int16
    stored = np.asarray(img.dataobj)
    ornt = canonical_ornt(img.affine)
    expected, _ = make_synthetic_ct(SHAPE, seed=(0, 2))
    assert np.array_equal(to_canonical(stored, ornt), expected)
    assert np.array_equal(from_canonical(expected, ornt), stored)


def test_canonical_matches_nibabel_for_an_oblique_permuted_affine() -> None:
    affine = np.array([[0.0, -0.8, 0.05, 10.0], [0.0, 0.0, 2.5, -5.0], [-0.7, 0.02, 0.0, 3.0], [0, 0, 0, 1]])
    data = np.random.default_rng(0).random((5, 6, 7)).astype(np.float32)
    ornt = canonical_ornt(affine)
    canon = to_canonical(data, ornt)
    reference = nib.as_closest_canonical(nib.Nifti1Image(data, affine))
    assert np.array_equal(canon, np.asarray(reference.dataobj))
    assert np.array_equal(from_canonical(canon, ornt), data)
    zooms = tuple(float(z) for z in nib.Nifti1Image(data, affine).header.get_zooms())
    assert np.allclose(canonical_spacing(zooms, ornt), reference.header.get_zooms(), atol=1e-6)
