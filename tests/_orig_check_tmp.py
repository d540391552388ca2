"""The overwrite test of tests/engine/test_predict_cases.py, against the code before the fix."""
from pathlib import Path
import pytest
from vasseg.cli import main
from tests.clitools import cli_error
from tests.conftest import tiny_experiment
from tests.trained import phantom_nifti


def test_output_equal_to_the_input_is_refused_unless_overwrite(phantom_root, tmp_path, capsys) -> None:
    from vasseg.engine.run import train_experiment
    run = train_experiment(tiny_experiment(phantom_root, tmp_path / "runs", "supervised", data={"num_val": 0},
                                           train={"iterations": 1, "ckpt_every": 1}))
    scan = phantom_nifti(phantom_root, tmp_path / "scan.nii.gz")
    before = scan.read_bytes()
    line = cli_error(capsys, "predict", str(run), str(scan), str(scan), "--device", "cpu", "--quiet")
    assert "is the input image" in line
    assert scan.read_bytes() == before
