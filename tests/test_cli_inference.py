"""``--precision``, ``--window``, ``--stride``, ``--overlap`` of ``vasseg predict`` and ``vasseg evaluate``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vasseg.cli import main
from vasseg.metrics import dice

from tests.clitools import cli_error
from tests.trained import phantom_h5, trained_run

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, phantom_root: Path) -> Path:
    return trained_run(tmp_path_factory, phantom_root)


def _predict(run: Path, source: Path, out: Path, *flags: str) -> np.ndarray:
    assert main(["predict", str(run), str(source), str(out), "--device", "cpu", "--quiet", *flags]) == 0
    return np.asarray(nib.load(str(out)).dataobj)


def test_predict_states_and_applies_windows_and_precision(run, phantom_root, tmp_path, caplog) -> None:
    source = phantom_h5(phantom_root)
    with caplog.at_level(logging.INFO, logger="vasseg"):
        default = _predict(run, source, tmp_path / "default.nii.gz")
    assert "windows: stride 8x8x8; precision: " in caplog.text  # the config's eval.stride
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="vasseg"):
        dense = _predict(run, source, tmp_path / "dense.nii.gz", "--precision", "fp32", "--stride", "8", "8", "8")
    assert "windows: stride 8x8x8; precision: fp32" in caplog.text
    overlap = _predict(run, source, tmp_path / "overlap.nii.gz", "--precision", "fp32", "--overlap", "0.5")
    whole = _predict(run, source, tmp_path / "whole.nii.gz", "--precision", "fp32", "--window", "whole")
    for labels in (default, overlap, whole):
        assert labels.shape == dense.shape
        if dense.any() or labels.any():
            assert dice(labels == 1, dense == 1) >= 0.9


def test_evaluate_reports_the_mode_it_used(run, tmp_path, capsys) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inference"] == "windows: stride 8x8x8; precision: fp32"  # the paper protocol
    assert "Inference: windows: stride 8x8x8" in (out / "summary.md").read_text()
    whole = tmp_path / "eval_whole"
    assert main(["evaluate", str(run), "--split", "test", "--device", "cpu", "--quiet", "--out", str(whole),
                 "--window", "whole", "--precision", "auto"]) == 0
    assert json.loads((whole / "summary.json").read_text())["inference"].startswith("windows: whole volume")
    capsys.readouterr()


def test_bad_window_flags_are_one_line_errors(run, phantom_root, tmp_path, capsys) -> None:
    source = str(phantom_h5(phantom_root))
    line = cli_error(capsys, "predict", str(run), source, str(tmp_path / "a.nii.gz"), "--stride", "8", "8", "8",
                     "--overlap", "0.5")
    assert "--stride and --overlap: give one of them" in line
    line = cli_error(capsys, "predict", str(run), source, str(tmp_path / "b.nii.gz"), "--overlap", "1.5")
    assert "--overlap 1.5: must lie in [0, 1)" in line
    line = cli_error(capsys, "evaluate", str(run), "--stride", "0", "8", "8", "--out", str(tmp_path / "e"))
    assert "three positive integers" in line
    assert not (tmp_path / "a.nii.gz").exists() and not (tmp_path / "e").exists()
