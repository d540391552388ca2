"""Outputs on failing storage: a full disk while training, evaluating, predicting and reporting,
and read-only output folders for each command.

Contract: exit 2, one stderr line naming the output, nothing half-written (no partial file, no
temporary leftovers), and whatever was there before (a checkpoint, results, a report) intact.
The full disk is :class:`tests.faults.FullDisk` (a write wrapper; see there why not a tmpfs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vasseg.cli import main
from vasseg.engine.checkpoint import latest_checkpoint, load_checkpoint

from tests.clitools import cli_error, listing, write_config
from tests.conftest import tiny_raw
from tests.faults import FullDisk, hidden

EVAL = ("--split", "test", "--device", "cpu", "--quiet")  # the two test phantoms
TABLES_ONLY = ("--skip", "boxplot,qualitative,features,snapshots,curves", "--eval", "test_last", "--quiet",
               "--device", "cpu")


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ disk full


def test_disk_full_mid_training_keeps_the_last_checkpoint(phantom_root: Path, tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    """The whole output folder fills up: every writer (checkpoints, scalars, train.log) meets it."""
    raw = tiny_raw(phantom_root, tmp_path / "probe", "supervised", data={"num_val": 0},
                   train={"iterations": 2, "ckpt_every": 2, "log_every": 1})
    config = write_config(tmp_path / "probe.yaml", raw)
    assert main(["train", "--config", str(config), "--quiet"]) == 0
    probe = Path(capsys.readouterr().out.strip())
    used = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    ckpt = (probe / "checkpoints" / "step_000002.pt").stat().st_size

    raw = tiny_raw(phantom_root, tmp_path / "runs", "supervised", data={"num_val": 0},
                   train={"iterations": 6, "ckpt_every": 2, "log_every": 1})
    config = write_config(tmp_path / "exp.yaml", raw)
    FullDisk(monkeypatch, tmp_path / "runs", room=used + ckpt // 2)  # room for step 2, not for step 4
    line = cli_error(capsys, "train", "--config", str(config), "--quiet")
    ckpt_dir = next((tmp_path / "runs").iterdir()) / "checkpoints"
    assert "No space left on device" in line and str(tmp_path / "runs") in line
    assert load_checkpoint(latest_checkpoint(ckpt_dir))["step"] == 2
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest", "step_000002.pt"]
    assert hidden(tmp_path / "runs") == []


def test_disk_full_while_evaluating_keeps_the_previous_results(run_copy: Path, capsys, monkeypatch) -> None:
    out = run_copy / "eval" / "test_last"
    assert main(["evaluate", str(run_copy), "--out", str(out), *EVAL]) == 0
    capsys.readouterr()
    before = _snapshot(out)
    disk = FullDisk(monkeypatch, run_copy / "eval", room=100)
    line = cli_error(capsys, "evaluate", str(run_copy), "--out", str(out), *EVAL)
    assert line == (f"vasseg evaluate: error: {out}: could not write the evaluation results (No space left on "
                    f"device); the previous one is untouched")
    assert disk.refused == 1
    assert _snapshot(out) == before and hidden(run_copy / "eval") == []


def test_disk_full_while_predicting_leaves_no_file(trained: Path, image: Path, tmp_path: Path, capsys,
                                                   monkeypatch) -> None:
    out = tmp_path / "pred" / "label.nii.gz"
    out.parent.mkdir()
    FullDisk(monkeypatch, out.parent, room=100)
    line = cli_error(capsys, "predict", str(trained), str(image), str(out), "--device", "cpu", "--quiet")
    assert f"{out}: cannot write NIfTI (OSError: [Errno 28] No space left on device)" in line
    assert listing(out.parent) == []


def test_disk_full_while_reporting_keeps_the_previous_report(run_copy: Path, tmp_path: Path, capsys,
                                                             monkeypatch) -> None:
    assert main(["evaluate", str(run_copy), "--out", str(run_copy / "eval" / "test_last"), *EVAL]) == 0
    report = tmp_path / "out" / "report"
    assert main(["report", str(run_copy), "--out", str(report), *TABLES_ONLY]) == 0
    capsys.readouterr()
    before = _snapshot(report)
    assert {"report.md", "report.html"} <= set(before)
    FullDisk(monkeypatch, report.parent, room=2000)  # some tables fit, the rest does not
    line = cli_error(capsys, "report", str(run_copy), "--out", str(report), *TABLES_ONLY)
    assert line.startswith(f"vasseg report: error: {report}: could not write the report (No space left on device")
    assert line.endswith("; the previous one is untouched")
    assert _snapshot(report) == before and hidden(report.parent) == []


def test_report_refuses_a_folder_that_holds_other_files(run_copy: Path, tmp_path: Path, capsys) -> None:
    """A report must never take other files with it; --overwrite writes beside them."""
    assert main(["evaluate", str(run_copy), "--out", str(run_copy / "eval" / "test_last"), *EVAL]) == 0
    capsys.readouterr()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    line = cli_error(capsys, "report", str(run_copy), "--out", str(tmp_path / "mine"), *TABLES_ONLY)
    assert f"{tmp_path / 'mine'}: holds 'notes.txt', not written by vasseg report; give a new or empty folder, " \
           f"or pass --overwrite" in line
    assert listing(tmp_path / "mine") == ["notes.txt"]
    for _ in range(2):  # the second run replaces the first's report, never the note
        assert main(["report", str(run_copy), "--out", str(tmp_path / "mine"), "--overwrite", *TABLES_ONLY]) == 0
        assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
        assert (tmp_path / "mine" / "report.html").is_file() and hidden(tmp_path) == []


# ------------------------------------------------------------------------------ read-only


@pytest.fixture
def read_only(tmp_path: Path, monkeypatch) -> Path:
    """A folder that ``access(2)`` calls read-only, as on a read-only mount (root too: EROFS)."""
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: Path(path) != folder and real(path, mode, *a, **k))
    return folder


def test_read_only_output_folders_of_every_command(read_only: Path, run_copy: Path, image: Path,
                                                   phantom_root: Path, tmp_path: Path, capsys) -> None:
    line = cli_error(capsys, "evaluate", str(run_copy), "--out", str(read_only / "eval"), *EVAL)
    assert f"{read_only / 'eval'}: output folder is not writable ({read_only} is read-only)" in line
    out = read_only / "pred.nii.gz"
    line = cli_error(capsys, "predict", str(run_copy), str(image), str(out), "--device", "cpu")
    assert f"{out}: output directory {read_only} is not writable" in line
    line = cli_error(capsys, "report", str(run_copy), "--out", str(read_only / "report"), *TABLES_ONLY)
    assert f"{read_only / 'report'}: output folder is not writable ({read_only} is read-only)" in line
    config = write_config(tmp_path / "exp.yaml", tiny_raw(phantom_root, read_only / "runs", "supervised"))
    line = cli_error(capsys, "train", "--config", str(config), "--quiet")
    assert f"{read_only / 'runs'}: output folder is not writable ({read_only} is read-only)" in line
    assert listing(read_only) == [] and not (run_copy / "eval").exists()
    assert json.loads((run_copy / "env.json").read_text())  # the run itself untouched


def test_disk_full_while_logging_scalars_names_the_file(phantom_root: Path, tmp_path: Path, capsys,
                                                        monkeypatch) -> None:
    from vasseg.config import build_experiment
    from vasseg.config import absolute_paths
    from vasseg.engine.setup import run_dir_for

    raw = tiny_raw(phantom_root, tmp_path / "runs", "supervised", data={"num_val": 0},
                   train={"iterations": 4, "ckpt_every": 2, "log_every": 1})
    config = write_config(tmp_path / "exp.yaml", raw)
    scalars = run_dir_for(absolute_paths(build_experiment(raw))) / "scalars.jsonl"
    FullDisk(monkeypatch, scalars, room=0)  # only this file meets the full disk
    line = cli_error(capsys, "train", "--config", str(config), "--quiet")
    assert line == (f"vasseg train: error: {scalars}: could not append scalars (No space left on device); the "
                    f"run's last checkpoint is intact (a cut line is dropped on --resume)")
