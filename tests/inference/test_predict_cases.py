"""``vasseg predict`` on many inputs: folders and globs, per-case failures, probabilities, geometry,
test-time augmentation and the overwrite rule."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from vasseg.cli import main
from vasseg.inferer.inferer import TTA_FLIPS, flip_tta
from vasseg.inference.predict import case_names, find_inputs

from tests.clitools import cli_error
from tests.trained import phantom_h5, phantom_nifti, trained_run


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, phantom_root: Path) -> Path:
    return trained_run(tmp_path_factory, phantom_root)


def _ok(capsys: pytest.CaptureFixture, *argv: str) -> list[str]:
    rc = main(["predict", *argv, "--device", "cpu", "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return out.split()


def _labels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def test_a_folder_with_one_corrupt_scan_names_it_and_writes_the_others(run, phantom_root, tmp_path, capsys,
                                                                      caplog) -> None:
    scans = tmp_path / "scans"
    for case in ("phantom_010", "phantom_011", "phantom_003"):
        phantom_nifti(phantom_root, scans / f"{case}.nii.gz", case)
    bad = scans / "phantom_011.nii.gz"
    bad.write_bytes(bad.read_bytes()[:300])
    (scans / "notes.txt").write_text("not an image: ignored")
    out = tmp_path / "pred"
    rc = main(["predict", str(run), str(scans), str(out), "--device", "cpu", "--quiet"])
    stdout, stderr = capsys.readouterr()
    assert rc == 2
    assert stdout.split() == [str(out / "phantom_003.nii.gz"), str(out / "phantom_010.nii.gz")]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"vasseg predict: error: 1 of 3 cases failed: {bad}: cannot read NIfTI")
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith(f"{bad}: cannot read NIfTI")  # logged when it happened
    assert sorted(p.name for p in out.iterdir()) == [".vasseg-output.json", "phantom_003.nii.gz", "phantom_010.nii.gz"]
    assert _labels(out / "phantom_010.nii.gz").shape == (32, 32, 32)


def test_a_glob_of_la_cases_is_named_by_case_folder(run, phantom_root, tmp_path, capsys) -> None:
    pattern = str(phantom_root / "2018LA_Seg_Training Set" / "phantom_01*" / "mri_norm2.h5")
    written = _ok(capsys, str(run), pattern, str(tmp_path / "out"))
    assert [Path(p).name for p in written] == ["phantom_010.nii.gz", "phantom_011.nii.gz"]
    assert case_names([Path("a/x.nii.gz"), Path("b/y.h5")]) == ["x", "y"]
    assert "no image file matches" in cli_error(capsys, "predict", str(run), str(tmp_path / "*.nii"),
                                                str(tmp_path / "o"), "--quiet")
    assert find_inputs(tmp_path / "none.nii.gz") == [tmp_path / "none.nii.gz"]  # reading reports it


def test_probabilities_sum_to_one_and_their_argmax_is_the_label_map(run, phantom_root, tmp_path, capsys) -> None:
    image = phantom_nifti(phantom_root, tmp_path / "in" / "case.nii.gz")
    out = tmp_path / "case_seg.nii.gz"
    _ok(capsys, str(run), str(image), str(out), "--save-probabilities")
    with np.load(tmp_path / "case_seg.npz", allow_pickle=False) as npz:
        probs, names, ids = npz["probabilities"], list(npz["class_names"]), list(npz["label_ids"])
    labels = _labels(out)
    assert probs.dtype == np.float16 and probs.shape == (2, *labels.shape)
    assert names == ["background", "left atrium"] and ids == [0, 1]
    assert np.abs(probs.astype(np.float32).sum(0) - 1).max() <= 2e-3  # float16 rounding of each channel
    # argmax equals the label map except where float16 rounds the two classes to one value
    top2 = np.sort(probs, axis=0)[-2:]
    differ = probs.argmax(0) != labels
    assert (top2[0] == top2[1])[differ].all() and differ.mean() < 0.01


def test_h5_geometry_from_a_reference_or_a_spacing_or_the_model(run, phantom_root, tmp_path, capsys, caplog) -> None:
    h5 = phantom_h5(phantom_root)
    affine = np.array([[0, 0, 1.5, -10], [0, -0.8, 0, 20], [0.8, 0, 0, 5], [0, 0, 0, 1]], float)
    reference = phantom_nifti(phantom_root, tmp_path / "ref" / "ref.nii.gz", affine=affine)
    _ok(capsys, str(run), str(h5), str(tmp_path / "r.nii.gz"), "--reference", str(reference))
    assert np.allclose(nib.load(str(tmp_path / "r.nii.gz")).affine, affine)
    _ok(capsys, str(run), str(h5), str(tmp_path / "s.nii.gz"), "--spacing", "0.5", "0.5", "2")
    assert np.allclose(nib.load(str(tmp_path / "s.nii.gz")).affine, np.diag([0.5, 0.5, 2, 1]))
    with caplog.at_level("INFO", logger="vasseg"):
        _ok(capsys, str(run), str(h5), str(tmp_path / "d.nii.gz"))
    assert "mri_norm2.h5: .h5 files carry no geometry; the label map gets affine diag(1, 1, 1, 1) (the model's " \
           "data.spacing" in caplog.text
    small = tmp_path / "ref" / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)), str(small))
    line = cli_error(capsys, "predict", str(run), str(h5), str(tmp_path / "x.nii.gz"), "--reference", str(small))
    assert f"{small}: reference shape (4, 4, 4) differs from the image {h5}'s (32, 32, 32)" in line


def test_output_equal_to_the_input_is_refused_unless_overwrite(run, phantom_root, tmp_path, capsys) -> None:
    """Issue 15 item 4: the scan was silently replaced by its label map."""
    scan = phantom_nifti(phantom_root, tmp_path / "scan.nii.gz")
    before = scan.read_bytes()
    line = cli_error(capsys, "predict", str(run), str(scan), str(scan), "--device", "cpu", "--quiet")
    assert f"{scan}: is the input image {scan}; refusing to replace a scan with its label map (pass --overwrite" in line
    assert scan.read_bytes() == before
    _ok(capsys, str(run), str(scan), str(scan), "--overwrite")
    assert set(np.unique(_labels(scan))) <= {0, 1}


def test_an_existing_output_is_refused_unless_overwrite(run, phantom_root, tmp_path, capsys) -> None:
    scans = tmp_path / "scans"
    for case in ("phantom_010", "phantom_011"):
        phantom_nifti(phantom_root, scans / f"{case}.nii.gz", case)
    out = tmp_path / "out"
    out.mkdir()
    (out / "phantom_011.nii.gz").write_bytes(b"old")
    line = cli_error(capsys, "predict", str(run), str(scans), str(out), "--device", "cpu", "--quiet")
    assert line.endswith(f"{out / 'phantom_011.nii.gz'}: already exists; pass --overwrite to replace")
    assert sorted(p.name for p in out.iterdir()) == ["phantom_011.nii.gz"]  # refused before any work
    line = cli_error(capsys, "predict", str(run), str(scans), str(scans), "--device", "cpu", "--quiet")
    assert "is the input image" in line  # a folder predicted into itself would replace its scans
    line = cli_error(capsys, "predict", str(run), str(scans), str(out), "--overwrite", "--device", "cpu", "--quiet")
    assert line.endswith(f"{out / 'phantom_011.nii.gz'}: has the name of an output of vasseg predict but was not "
                         f"written by it; not replaced, even with --overwrite (move it away first)")
    (out / "phantom_011.nii.gz").unlink()
    (out / "notes.txt").write_text("keep me")
    line = cli_error(capsys, "predict", str(run), str(scans), str(out), "--device", "cpu", "--quiet")
    assert f"{out}: holds 'notes.txt', not written by vasseg predict" in line
    assert len(_ok(capsys, str(run), str(scans), str(out), "--overwrite")) == 2
    assert len(_ok(capsys, str(run), str(scans), str(out), "--overwrite")) == 2  # its own maps: replaced
    assert (out / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == [".vasseg-output.json", "notes.txt", "phantom_010.nii.gz",
                                                     "phantom_011.nii.gz"]


def test_several_inputs_need_a_folder_and_a_failed_folder_is_not_left(run, phantom_root, tmp_path, capsys) -> None:
    scans = tmp_path / "scans"
    for case in ("phantom_010", "phantom_011"):
        (scans / case).mkdir(parents=True)
        (scans / case / "scan.nii.gz").write_bytes(b"garbage")
    line = cli_error(capsys, "predict", str(run), str(scans / "*" / "scan.nii.gz"), str(tmp_path / "one.nii.gz"))
    assert f"{tmp_path / 'one.nii.gz'}: 2 inputs need an output folder, not a file" in line
    rc = main(["predict", str(run), str(scans / "*" / "scan.nii.gz"), str(tmp_path / "out"), "--device", "cpu",
               "--quiet"])
    assert rc == 2 and "2 of 2 cases failed" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_flip_tta_averages_the_flipped_predictions() -> None:
    """A predictor that is not flip-equivariant: TTA is the mean of its flipped-back outputs."""
    ramp = torch.linspace(0, 3, 8)[None, None, :, None, None]

    def predict(w: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.cat([w * ramp, -w], 1), 1)

    w = torch.randn(2, 1, 8, 6, 4)
    expected = sum(predict(w.flip(d)).flip(d) if d else predict(w) for d in TTA_FLIPS) / 4
    assert torch.allclose(flip_tta(predict)(w), expected)
    assert not torch.allclose(expected, predict(w))


def test_tta_predicts_through_the_cli(run, phantom_root, tmp_path, capsys) -> None:
    image = phantom_nifti(phantom_root, tmp_path / "case.nii.gz")
    _ok(capsys, str(run), str(image), str(tmp_path / "tta.nii.gz"), "--tta")
    assert _labels(tmp_path / "tta.nii.gz").shape == (32, 32, 32)
