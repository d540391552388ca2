"""Issue 25 item 2: ``--resume`` does not depend on how paths and the device are spelled.

A run started with ``data.root=ph`` could never be resumed; an absolute path, ``./ph/``, a
trailing slash or ``train.device=auto`` silently started again from step 0 in a new folder. Now
one rule (:mod:`vasseg.identity`) names the run folder and checks the resume; ``--resume`` with
nothing to resume is an error naming the nearest runs; a moved dataset resumes when its files
match.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest
import yaml

from vasseg.cli import main
from vasseg.data.synthetic import write_phantom_la_layout
from vasseg.identity import changed_settings, identity_hash

from tests.clitools import cli_error, write_config
from tests.conftest import tiny_raw


@pytest.fixture
def setup(phantom_root: Path, tmp_path: Path, monkeypatch) -> Path:
    """Working folder ``tmp_path`` with the phantoms as ``ph`` and a config without data.root."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(phantom_root, tmp_path / "ph")
    raw = tiny_raw(phantom_root, tmp_path / "runs", "supervised", data={"num_val": 0},
                   train={"iterations": 2, "ckpt_every": 2})
    del raw["data"]["root"]
    (tmp_path / "cfg").mkdir()
    return write_config(tmp_path / "cfg" / "exp.yaml", raw)


def _train(capsys, config: Path, *args: str) -> Path:
    rc = main(["train", "--config", str(config), "--quiet", *args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return Path(out.strip())


def test_resume_under_five_spellings_continues_the_same_run(setup: Path, tmp_path: Path, capsys, caplog) -> None:
    run_dir = _train(capsys, setup, "data.root=ph")
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["data"]["root"] == str(tmp_path / "ph")  # stored resolved, absolute
    spellings = (["data.root=ph"], [f"data.root={tmp_path / 'ph'}"], ["data.root=./ph/"],
                 [f"data.root={tmp_path / 'ph'}/"], ["data.root=ph", "train.device=auto"])
    for spelling in spellings:
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="vasseg"):
            assert _train(capsys, setup, "--resume", *spelling) == run_dir, spelling
        assert f"resumed from {run_dir / 'checkpoints' / 'step_000002.pt'} at step 2" in caplog.text, spelling
    assert [p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")] == [run_dir.name]


def test_resume_with_nothing_to_resume_names_the_nearest_runs(setup: Path, tmp_path: Path, capsys) -> None:
    run_dir = _train(capsys, setup, "data.root=ph")
    line = cli_error(capsys, "train", "--config", str(setup), "--resume", "data.root=ph", "train.lr=0.02", "--quiet")
    assert "--resume found no checkpoint for this configuration; nearest runs of supervised with seed 7 in " \
           f"{tmp_path / 'runs'}: {run_dir.name} (differs in train.lr)" in line
    line = cli_error(capsys, "train", "--config", str(setup), "--resume", "data.root=ph", "train.seed=9", "--quiet")
    assert f"{tmp_path / 'runs'} holds no run of supervised with seed 9; train without --resume" in line
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if not p.name.startswith(".")) == [run_dir.name]


def test_a_moved_dataset_resumes_when_its_files_match(setup: Path, tmp_path: Path, capsys, caplog) -> None:
    run_dir = _train(capsys, setup, "data.root=ph")
    shutil.copytree(tmp_path / "ph", tmp_path / "moved")
    with caplog.at_level(logging.WARNING, logger="vasseg"):
        assert _train(capsys, setup, "--resume", "data.root=moved") == run_dir
    assert f"data.root moved from {tmp_path / 'ph'} to {tmp_path / 'moved'}: the 10 cases' ids and file sizes " \
           f"match the run's; resuming" in caplog.text
    other = write_phantom_la_layout(tmp_path / "other", n_train=10, n_test=2, shape=(32, 32, 48), seed=0)
    line = cli_error(capsys, "train", "--config", str(setup), "--resume", f"data.root={other}", "--quiet")
    assert f"cannot resume: data.root moved from {tmp_path / 'moved'} to {other} and case phantom_000's file " \
           f"differs" in line
    ids = (other / "train.list").read_text().split()
    shutil.rmtree(other)
    shutil.copytree(tmp_path / "ph", other)
    (other / "train.list").write_text("\n".join(ids[::-1]) + "\n")  # other labeled cases
    line = cli_error(capsys, "train", "--config", str(setup), "--resume", f"data.root={other}", "--quiet")
    assert f"{run_dir}: cannot resume: the case split of {other} differs from the run's split.yaml" in line


def test_one_identity_rule_for_the_name_and_the_resume_check() -> None:
    base = {"data": {"root": "/a", "labeled": 8}, "train": {"device": "cpu", "lr": 0.01, "init_from": ""},
            "run": {"out_dir": "x"}}
    moved = {"data": {"root": "b/", "labeled": 8}, "train": {"device": "cuda:1", "lr": 0.01}, "run": {"out_dir": "y"}}
    assert identity_hash(base) == identity_hash(moved) and changed_settings(base, moved) == []
    other = {**moved, "data": {"root": "/a", "labeled": 4}}
    assert identity_hash(base) != identity_hash(other) and changed_settings(base, other) == ["data.labeled"]
