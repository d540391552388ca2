"""The LA corpus of bad inputs (``test_cli_errors.BREAKS``) through ``evaluate`` and ``predict``,
missing cases named by their list file, and damaged checkpoint structure through evaluate,
predict and resume: exit 2, one line naming the file and the problem, nothing written.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from vasseg.cli import main

from tests.clitools import cli_error, listing
from tests.test_cli_errors import BREAKS, CASE, _case_file, root  # noqa: F401 - a fixture

# What each break gives. evaluate reads cases with the LA reader (the same lines as train);
# the size and foreground rules are training's, so evaluate scores those cases. predict reads
# one file with vasseg.io (label optional, any non-negative label values).
EVALUATE_OK = {"too small", "empty label"}
PREDICT: dict[str, str | None] = {
    "truncated": "cannot read HDF5 (OSError: Unable to synchronously open file (truncated file",
    "not hdf5": "cannot read HDF5 (OSError: Unable to synchronously open file (file signature not found)",
    "no label key": None,
    "no image key": "HDF5 file has no 'image' dataset",
    "shapes differ": "label shape (20, 20, 19) differs from image shape (20, 20, 20)",
    "label values": None,
    "nan": "image has 1 non-finite values (NaN or inf)",
    "inf": "image has 1 non-finite values (NaN or inf)",
    "empty axis": "image has an empty axis (shape (20, 20, 0))",
    "too small": None,
    "empty label": None,
}


def _evaluate(capsys, run: Path, *args: str) -> tuple[int, str]:
    rc = main(["evaluate", str(run), "--device", "cpu", "--quiet", *args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("kind", list(BREAKS))
def test_bad_case_file_through_evaluate(kind: str, trained: Path, root: Path, tmp_path: Path, capsys) -> None:
    breaker, problem = BREAKS[kind]
    path = _case_file(root)
    breaker(path)
    ids = tmp_path / "cases.list"
    ids.write_text(f"{CASE}\n")
    out = tmp_path / "eval"
    args = ("evaluate", str(trained), "--split", str(ids), "--data-root", str(root), "--out", str(out),
            "--device", "cpu", "--quiet")
    if kind in EVALUATE_OK:
        assert main(list(args)) == 0, capsys.readouterr().err
        assert (out / "cases.csv").is_file()
        return
    assert f"{path}: {problem}" in cli_error(capsys, *args)
    assert listing(tmp_path / "eval") == [] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("kind", list(BREAKS))
def test_bad_case_file_through_predict(kind: str, trained: Path, root: Path, tmp_path: Path, capsys) -> None:
    path = _case_file(root)
    BREAKS[kind][0](path)
    out = tmp_path / "pred.nii.gz"
    args = ("predict", str(trained), str(path), str(out), "--device", "cpu", "--quiet")
    if PREDICT[kind] is None:
        assert main(list(args)) == 0, capsys.readouterr().err
        assert out.is_file()
        return
    assert f"{path}: {PREDICT[kind]}" in cli_error(capsys, *args)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith((".", "pred"))]


# ------------------------------------------------------------------------------ missing cases


def test_a_missing_case_names_the_list_file_in_evaluate(trained: Path, root: Path, tmp_path: Path, capsys) -> None:
    shutil.rmtree(_case_file(root).parent)
    ids = tmp_path / "mine.list"
    ids.write_text(f"phantom_001\n{CASE}\n")
    line = cli_error(capsys, "evaluate", str(trained), "--split", str(ids), "--data-root", str(root))
    assert f"LA root {root}: 1 of 2 cases listed in {ids} are missing: {CASE}" in line
    shutil.rmtree(_case_file(root).parent.parent / "phantom_003")  # the test case
    line = cli_error(capsys, "evaluate", str(trained), "--split", "test", "--data-root", str(root))
    assert f"1 of 1 cases listed in {root / 'test.list'} are missing: phantom_003" in line
    assert not (trained / "eval").exists()


# ------------------------------------------------------------------------------ checkpoint structure


def _rewrite_latest(run: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    path = next((run / "checkpoints").glob("step_*.pt"))
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)
    return path


BAD_STATES: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "no step": (lambda s: s.pop("step"), "entry 'step' is missing (expected a non-negative integer)"),
    "method a list": (lambda s: s.update(method=list(s["method"].values())),
                      "entry 'method' is a list value, not a mapping of parameter names to tensors"),
    "no optimizers": (lambda s: s.pop("optimizers"), "entry 'optimizers' is missing"),
    "rng without torch": (lambda s: s["rng"].pop("torch"), "entry 'rng' is "),
}


@pytest.mark.parametrize("kind", list(BAD_STATES))
def test_a_damaged_checkpoint_through_evaluate_predict_and_resume(kind: str, run_copy: Path, image: Path,
                                                                  tmp_path: Path, capsys) -> None:
    change, problem = BAD_STATES[kind]
    path = _rewrite_latest(run_copy, change)
    expected = f"{path}: invalid checkpoint: {problem}"
    assert expected in cli_error(capsys, "evaluate", str(run_copy), "--split", "test", "--device", "cpu")
    out = tmp_path / "pred.nii.gz"
    assert expected in cli_error(capsys, "predict", str(run_copy), str(image), str(out), "--device", "cpu")
    config = run_copy / "config.yaml"
    assert expected in cli_error(capsys, "train", "--config", str(config), "--resume", "--quiet",
                                 "--out-dir", str(run_copy.parent))
    assert not out.exists() and not (run_copy / "eval").exists()
    assert sorted(p.name for p in (run_copy / "checkpoints").iterdir()) == ["latest", path.name]


def test_an_intact_copy_resumes(run_copy: Path, capsys) -> None:
    """Guards the test above: its resume fails on the checkpoint, not on the copy or its config."""
    rc = main(["train", "--config", str(run_copy / "config.yaml"), "--resume", "--quiet",
               "--out-dir", str(run_copy.parent)])
    assert rc == 0, capsys.readouterr().err  # resumed at its last step: nothing left to train
    assert capsys.readouterr().out.strip() == str(run_copy)


def _raw_pickle(run: Path) -> Path:
    path = next((run / "checkpoints").glob("step_*.pt"))
    state = torch.load(path, weights_only=True)
    path.write_bytes(pickle.dumps(state, protocol=4))
    return path


def test_a_raw_pickle_is_one_line_in_a_real_process(run_copy: Path, image: Path, tmp_path: Path) -> None:
    """The installed entry point, warnings as users see them: the refusal line and nothing else."""
    path = _raw_pickle(run_copy)
    out = tmp_path / "pred.nii.gz"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="default")
    proc = subprocess.run([sys.executable, "-m", "vasseg", "predict", str(run_copy), str(image), str(out),
                           "--device", "cpu"], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"vasseg predict: error: {path}: refused to load: a raw pickle, not a torch.save checkpoint; it was "
        f"not unpickled (only torch.save files of plain tensors and containers are accepted)"]
    assert proc.stdout == "" and not out.exists()
