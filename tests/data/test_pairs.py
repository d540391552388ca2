"""``vasseg prepare --images --labels``: plain image/label pairs matched by file name, and one pair."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vasseg.cli import main
from vasseg.data.nifti import write_synthetic_ct_dataset
from vasseg.data.pairs import discover_pairs
from vasseg.data.prepared import read_manifest

from tests.clitools import cli_error
from tests.conftest import SHARED_DATA

EXAMPLE_CT = SHARED_DATA / "abdomen_ct_example"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``images/{liver_a_0000,liver_b}.nii.gz`` + ``labels/{liver_a,liver_b}.nii.gz`` (BTCV ids)."""
    src = write_synthetic_ct_dataset(tmp_path_factory.mktemp("btcv"), 2, (32, 32, 16), seed=2)
    root = tmp_path_factory.mktemp("plain")
    (root / "images").mkdir()
    (root / "labels").mkdir()
    for i, (image_name, label_name) in enumerate([("liver_a_0000", "liver_a"), ("liver_b", "liver_b")], 1):
        (root / "images" / f"{image_name}.nii.gz").symlink_to(src / "img" / f"img{i:04d}.nii.gz")
        (root / "labels" / f"{label_name}.nii.gz").symlink_to(src / "label" / f"label{i:04d}.nii.gz")
    return root


def _prepare(capsys: pytest.CaptureFixture, *argv: str) -> Path:
    assert main(["prepare", *argv, "--test-fraction", "0", "--quiet"]) == 0, capsys.readouterr().err
    return Path(capsys.readouterr().out.strip())


def test_folders_are_matched_by_file_name(plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = _prepare(capsys, "--images", str(plain / "images"), "--labels", str(plain / "labels"), "--out",
                   str(tmp_path / "prep"), "--shape", "32", "32", "16")
    manifest = read_manifest(out)
    assert sorted(manifest["cases"]) == ["liver_a", "liver_b"] and manifest["layout"] == "pairs"
    assert manifest["cases"]["liver_a"]["source_label"] == str(plain / "labels" / "liver_a.nii.gz")
    assert sorted((out / "train.list").read_text().split()) == ["liver_a", "liver_b"]


def test_unmatched_files_are_named_and_skippable(plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for p in (plain / "images").iterdir():
        (images / p.name).symlink_to(p.resolve())
    (images / "orphan.nii.gz").symlink_to((plain / "images" / "liver_b.nii.gz").resolve())
    line = cli_error(capsys, "prepare", "--images", str(images), "--labels", str(plain / "labels"), "--out",
                     str(tmp_path / "prep"))
    assert f"{images / 'orphan.nii.gz'}: image without a label orphan.nii[.gz] in {plain / 'labels'}" in line
    assert not (tmp_path / "prep").exists()
    out = _prepare(capsys, "--images", str(images), "--labels", str(plain / "labels"), "--out",
                   str(tmp_path / "prep"), "--shape", "32", "32", "16", "--skip-bad")
    assert json.loads((out / "prepared.json").read_text())["skipped"][0]["file"] == str(images / "orphan.nii.gz")


def test_flag_combinations_are_one_line_errors(plain: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "prep")
    assert "--images and --labels: give both" in cli_error(capsys, "prepare", "--images", str(plain), "--out", out)
    assert "give SOURCE folders or --images and --labels" in cli_error(capsys, "prepare", "--out", out)
    both = ("prepare", str(plain), "--images", str(plain / "images"), "--labels", str(plain / "labels"), "--out", out)
    assert "give SOURCE folders or --images and --labels" in cli_error(capsys, *both)
    line = cli_error(capsys, "prepare", "--images", str(plain / "images"), "--labels",
                     str(plain / "labels" / "liver_a.nii.gz"), "--out", out)
    assert "--images and --labels must both be folders or both be files" in line


def test_a_single_pair(plain: Path, tmp_path: Path) -> None:
    found = discover_pairs(plain / "images" / "liver_b.nii.gz", plain / "labels" / "liver_b.nii.gz")
    assert [p.id for p in found.pairs] == ["liver_b"] and not found.problems


@pytest.mark.realdata
def test_the_example_ct_needs_no_renaming(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    if not (EXAMPLE_CT / "ct.nii.gz").is_file():
        pytest.skip(f"{EXAMPLE_CT} not found")
    out = _prepare(capsys, "--images", str(EXAMPLE_CT / "ct.nii.gz"), "--labels", str(EXAMPLE_CT / "seg.nii.gz"),
                   "--label-map", "totalsegmentator_v2", "--out", str(tmp_path / "prep"), "--shape", "64", "64", "32")
    manifest = read_manifest(out)
    assert list(manifest["cases"]) == ["ct"] and (out / "train.list").read_text().split() == ["ct"]
    assert manifest["cases"]["ct"]["original_shape"] == [122, 101, 30]
    voxels = manifest["cases"]["ct"]["native_voxels"]
    assert all(voxels[organ] > 0 for organ in ("liver", "spleen", "stomach")), voxels
