"""Issue 29 item 4: only the user's errors are one line; a bug keeps its traceback and asks for a report.

A bug is injected (a method's ``training_step`` or the predictor raising ``ValueError`` /
``IndexError``, the errors that used to pass for the user's) and must not come out as
``vasseg X: error: ...`` with exit 2, nor as a skipped case of ``vasseg predict``.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest

from vasseg.api import Model
from vasseg.cli import BUG_EXIT, main
from vasseg.errors import (
    BUG_REPORT,
    CheckpointError,
    ConfigError,
    DataError,
    PathNotFound,
    VassegError,
    is_user_error,
)

from tests.clitools import write_config
from tests.conftest import tiny_raw

CPU = ("--device", "cpu", "--quiet")


def _bug(*args: object, **kwargs: object) -> None:
    raise IndexError("index 3 is out of bounds for dimension 0 with size 3")


def _assert_bug(rc: int, err: str, command: str, message: str) -> None:
    assert rc == BUG_EXIT, err
    assert "Traceback (most recent call last)" in err and message in err
    assert err.strip().splitlines()[-1] == f"vasseg {command}: {BUG_REPORT}"
    assert f"vasseg {command}: error:" not in err


def test_the_user_error_classes_keep_their_builtin_bases() -> None:
    from vasseg.config import ConfigError as config_error
    from vasseg.data.volumes import DataError as volumes_error
    from vasseg.engine.checkpoint import CheckpointError as checkpoint_error
    from vasseg.io import ImageIOError

    assert config_error is ConfigError and volumes_error is DataError and checkpoint_error is CheckpointError
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ValueError)
    assert issubclass(CheckpointError, RuntimeError) and issubclass(ImageIOError, DataError)
    assert issubclass(PathNotFound, FileNotFoundError)
    assert all(issubclass(c, VassegError) for c in (ConfigError, DataError, CheckpointError, PathNotFound))


@pytest.mark.parametrize(("exc", "user"), [
    (ConfigError("train.lr: bad"), True),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/scan.nii.gz"), True),
    (PermissionError(errno.EACCES, "Permission denied", "/data/out"), True),
    (OSError(errno.ENOSPC, "No space left on device"), True),  # write(2) names no file
    (OSError("something inside went wrong"), False),
    (ValueError("operands could not be broadcast together"), False),
    (IndexError("list index out of range"), False),
    (RuntimeError("shape mismatch"), False),
])
def test_is_user_error(exc: BaseException, user: bool) -> None:
    assert is_user_error(exc) is user


def test_a_bug_in_training_is_not_shown_as_a_user_error(phantom_root: Path, tmp_path: Path, capsys,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from vasseg.methods.supervised import Supervised

    def broken(self, batch, step):  # noqa: ANN001, ANN202 - the method contract's signature
        raise ValueError("operands could not be broadcast together with shapes (2,1,16) (2,2,16)")

    monkeypatch.setattr(Supervised, "training_step", broken)
    config = write_config(tmp_path / "c.yaml", tiny_raw(phantom_root, tmp_path / "runs", "supervised",
                                                        train={"iterations": 2}))
    rc = main(["train", "--config", str(config), "--quiet"])
    _assert_bug(rc, capsys.readouterr().err, "train", "operands could not be broadcast")


def test_a_bug_in_the_predictor_is_not_shown_as_a_user_error(trained: Path, image: Path, tmp_path: Path, capsys,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Model, "predict_volume", _bug)
    rc = main(["predict", str(trained), str(image), str(tmp_path / "out.nii.gz"), *CPU])
    _assert_bug(rc, capsys.readouterr().err, "predict", "index 3 is out of bounds")
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_bug_stops_predict_instead_of_skipping_the_case(trained: Path, image: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from vasseg.api import load_model
    from vasseg.inference.predict import PredictOptions, predict_paths

    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a.nii.gz", "b.nii.gz"):
        shutil.copy(image, scans / name)
    model = load_model(trained, device="cpu")
    monkeypatch.setattr(Model, "predict_volume", _bug)
    with pytest.raises(IndexError, match="out of bounds"):
        predict_paths(model, scans, tmp_path / "out", PredictOptions(progress=False))


def test_a_bad_case_is_still_skipped(trained: Path, image: Path, tmp_path: Path) -> None:
    from vasseg.api import load_model
    from vasseg.inference.predict import PredictOptions, predict_paths

    scans = tmp_path / "scans"
    scans.mkdir()
    shutil.copy(image, scans / "a.nii.gz")
    (scans / "b.nii.gz").write_bytes(b"not a nifti")
    result = predict_paths(load_model(trained, device="cpu"), scans, tmp_path / "out", PredictOptions(progress=False))
    assert result.written == [tmp_path / "out" / "a.nii.gz"]
    assert [(src.name, isinstance(exc, DataError)) for src, exc in result.failed] == [("b.nii.gz", True)]


def test_a_damaged_cases_csv_is_a_data_error_naming_the_file(tmp_path: Path) -> None:
    from vasseg.metrics.table import metric_columns
    from vasseg.report.collect import read_cases_csv

    columns = metric_columns()
    values = ",".join(["0.5"] * len(columns))
    path = tmp_path / "cases.csv"
    path.write_text(f"case,cls,status,{','.join(columns)}\nla_001,1,ok,{values}\nla_002,one,ok,{values}\n")
    with pytest.raises(DataError, match=rf"{path}: line 3: "):
        read_cases_csv(path)
