"""``vasseg predict`` / ``evaluate`` on bad inputs and untrusted checkpoints.

Contract: exit 2, one stderr line naming the file and the problem, no traceback, and no output
file or folder left behind (predict writes atomically, evaluate publishes a complete folder).
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

import vasseg.inference.evaluate as run_module
from vasseg.cli import main
from vasseg.data.la import read_h5_case
from vasseg.data.volumes import DataError

from tests.clitools import cli_error, listing


def _predict(capsys, run: Path, image: Path, out: Path) -> str:
    line = cli_error(capsys, "predict", str(run), str(image), str(out), "--device", "cpu", "--quiet")
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")] if out.parent.is_dir() else True
    return line


# ------------------------------------------------------------------------------ bad images


def _nifti_with_bad_datatype(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[70:72] = (4096).to_bytes(2, "little")  # header field `datatype`: no such NIfTI code
    path.write_bytes(bytes(data))


def _write(path: Path, data: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))


def _h5(path: Path, **arrays: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


@pytest.mark.parametrize(
    "name, make, problem",
    [
        ("missing.nii.gz", None, "no such file"),
        ("cut.nii.gz", lambda p, good: p.write_bytes(good.read_bytes()[:200]), "cannot read NIfTI"),
        ("garbage.nii", lambda p, good: p.write_bytes(b"\0" * 400), "cannot read NIfTI"),
        ("badtype.nii", lambda p, good: (_write(p, np.zeros((8, 8, 8), np.float32)), _nifti_with_bad_datatype(p)),
         "cannot read NIfTI (HeaderDataError: data code 4096 not recognized)"),
        ("nan.nii.gz", lambda p, good: _write(p, np.full((8, 8, 8), np.nan, np.float32)),
         "image has 512 non-finite values (NaN or inf)"),
        ("flat.h5", lambda p, good: _h5(p, image=np.zeros((8, 0, 8), np.float32)), "image has an empty axis"),
        ("noimage.h5", lambda p, good: _h5(p, label=np.zeros((8, 8, 8), np.uint8)), "HDF5 file has no 'image' dataset"),
        ("shapes.h5", lambda p, good: _h5(p, image=np.zeros((8, 8, 8), np.float32), label=np.zeros((8, 8, 7), np.uint8)),
         "label shape (8, 8, 7) differs from image shape (8, 8, 8)"),
        ("scan.png", lambda p, good: p.write_bytes(b"png"), "unknown image extension"),
    ],
)
def test_predict_bad_image(name, make, problem, trained: Path, image: Path, tmp_path: Path, capsys) -> None:
    bad = image.parent / name
    if make is not None:
        make(bad, image)
    line = _predict(capsys, trained, bad, tmp_path / "pred.nii.gz")
    assert f"{bad}: {problem}" in line


@pytest.mark.parametrize("error", [RuntimeError("Unable to synchronously check link existence (bad symbol "
                                                "table node signature)"), KeyError("bad version number"),
                                   TypeError("'<' not supported between instances of 'bytes' and 'str'")])
def test_damaged_hdf5_metadata_is_one_line(error, trained, image, tmp_path, capsys, monkeypatch) -> None:
    """What fuzzing corrupt HDF5 headers produced besides OSError (h5py raises these as is)."""
    bad = image.parent / "damaged.h5"
    _h5(bad, image=np.zeros((8, 8, 8), np.float32))

    class Damaged(h5py.File):
        def __contains__(self, key: object) -> bool:
            raise error

    monkeypatch.setattr("vasseg.io.h5py.File", Damaged)  # the one LA reader (vasseg.io.read_h5)
    assert f"{bad}: cannot read HDF5 ({type(error).__name__}" in _predict(capsys, trained, bad, tmp_path / "p.nii.gz")
    with pytest.raises(DataError, match="cannot open as HDF5"):
        read_h5_case(bad)


def test_predict_output_folder_missing_or_a_file(trained: Path, image: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "nowhere" / "pred.nii.gz"
    assert f"{out}: output directory {out.parent} does not exist" in _predict(capsys, trained, image, out)
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "pred.nii.gz"
    assert f"{out}: {tmp_path / 'afile'} is a file, not a folder" in _predict(capsys, trained, image, out)


def test_predict_writes_nothing_when_the_write_fails(trained: Path, image: Path, tmp_path: Path, capsys,
                                                     monkeypatch) -> None:
    def full(img, filename):  # noqa: ANN001 - nibabel's save signature
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("vasseg.io.nib.save", full)
    out = tmp_path / "pred.nii.gz"
    assert f"{out}: cannot write NIfTI (OSError: [Errno 28] No space left on device)" in _predict(
        capsys, trained, image, out)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ------------------------------------------------------------------------------ checkpoints


class Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _poison(run: Path, marker: Path) -> Path:
    """Replace the run's latest checkpoint by one whose unpickling would run code."""
    path = next((run / "checkpoints").glob("step_*.pt"))
    state = torch.load(path, weights_only=True)
    state["method"]["student.block_one.conv.0.weight"] = Payload(marker)
    torch.save(state, path)
    return path


def test_pickled_code_in_a_checkpoint_is_refused_by_predict_and_evaluate(run_copy, image, tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"
    path = _poison(run_copy, marker)
    line = _predict(capsys, run_copy, image, tmp_path / "pred.nii.gz")
    assert f"{path}: refused to load: the file carries a pickled object (posix.system) that could run code" in line
    line = cli_error(capsys, "evaluate", str(run_copy), "--split", "test", "--device", "cpu", "--quiet")
    assert f"{path}: refused to load" in line
    assert not marker.exists()
    assert not (run_copy / "eval").exists()


def test_refusal_in_a_real_process_prints_one_line(run_copy, image, tmp_path) -> None:
    """The installed entry point: logging configured as users get it, nothing run, one line."""
    marker = tmp_path / "pwned"
    path = _poison(run_copy, marker)
    out = tmp_path / "pred.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "vasseg", "predict", str(path), str(image), str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"vasseg predict: error: {path}: refused to load: the file carries a pickled object (posix.system) "
        f"that could run code; only plain tensors and containers are accepted, nothing was executed"]
    assert proc.stdout == "" and not marker.exists() and not out.exists()


@pytest.mark.parametrize("key, value, problem", [
    ("model", {"filters": 8}, "checkpoint model = "),
    ("data", {"num_classes": 3}, "checkpoint data.num_classes = 2 does not match the config's 3"),
    ("method", {"name": "mean_teacher"}, "checkpoint method.name = 'supervised' does not match the config's 'mean_teacher'"),
])
def test_architecture_or_class_count_mismatch_is_refused(key, value, problem, run_copy, image, tmp_path, capsys) -> None:
    config = run_copy / "config.yaml"
    raw = yaml.safe_load(config.read_text())
    raw[key] = {**raw[key], **value}
    config.write_text(yaml.safe_dump(raw))
    line = _predict(capsys, run_copy, image, tmp_path / "pred.nii.gz")
    assert problem in line and f"{run_copy / 'checkpoints'}" in line


def test_truncated_missing_and_absent_checkpoints(run_copy, image, tmp_path, capsys) -> None:
    path = next((run_copy / "checkpoints").glob("step_*.pt"))
    path.write_bytes(path.read_bytes()[:1000])
    assert f"{path}: not a readable checkpoint" in _predict(capsys, run_copy, image, tmp_path / "p.nii.gz")
    path.unlink()
    assert "which does not exist" in _predict(capsys, run_copy, image, tmp_path / "p.nii.gz")
    shutil.rmtree(run_copy / "checkpoints")
    assert "no checkpoint yet" in _predict(capsys, run_copy, image, tmp_path / "p.nii.gz")
    missing = tmp_path / "no_run"
    assert f"{missing}: no such run folder or checkpoint file" in _predict(capsys, missing, image, tmp_path / "p.nii.gz")


# ------------------------------------------------------------------------------ evaluate output


def test_evaluate_never_leaves_a_half_written_folder(run_copy, tmp_path, capsys, monkeypatch) -> None:
    args = ("evaluate", str(run_copy), "--split", "test", "--device", "cpu", "--quiet")
    assert main(list(args)) == 0
    capsys.readouterr()
    eval_dir = run_copy / "eval" / "test_step_000002"
    before = {p: p.read_bytes() for p in eval_dir.iterdir()}
    real = run_module.write_results

    def disk_full(rows, summary, out_dir, *rest):  # noqa: ANN001
        real(rows, summary, out_dir, *rest)
        (out_dir / "cases.csv").write_text("case,cls,di")  # ... cut short by the full disk
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out_dir / "summary.md"))

    monkeypatch.setattr(run_module, "write_results", disk_full)
    line = cli_error(capsys, *args)
    assert "No space left on device" in line and "summary.md" in line
    assert {p: p.read_bytes() for p in eval_dir.iterdir()} == before  # the previous results, untouched
    assert listing(run_copy / "eval") == ["test_step_000002"] + [f"test_step_000002/{p.name}" for p in sorted(before)]


def test_evaluate_checks_its_output_folder_and_split_first(run_copy, tmp_path, capsys) -> None:
    (tmp_path / "afile").write_text("")
    out = tmp_path / "afile" / "eval"
    line = cli_error(capsys, "evaluate", str(run_copy), "--split", "test", "--out", str(out), "--device", "cpu")
    assert f"{out}: cannot create the output folder" in line
    missing = tmp_path / "cases.list"
    line = cli_error(capsys, "evaluate", str(run_copy), "--split", str(missing), "--device", "cpu")
    assert f"{missing}: id-list file not found" in line
    assert not (run_copy / "eval").exists()


def test_check_label_output_refuses_before_any_work(tmp_path: Path) -> None:
    from vasseg.io import ImageIOError, check_label_output

    assert check_label_output(tmp_path / "ok.nii.gz") == tmp_path / "ok.nii.gz"
    with pytest.raises(ImageIOError, match="label output must end in .nii or .nii.gz"):
        check_label_output(tmp_path / "pred.png")
    with pytest.raises(ImageIOError, match="does not exist"):
        check_label_output(tmp_path / "none" / "pred.nii.gz")
