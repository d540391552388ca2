"""The run folder's lock: one training at a time, released on any exit, stale locks taken over."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from vasseg.cli import main
from vasseg.config import build_experiment
from vasseg.engine.lock import RunFolderBusy, lock_path, run_lock
from vasseg.config import absolute_paths
from vasseg.engine.run import train_experiment
from vasseg.engine.setup import run_dir_for

from tests.clitools import cli_error, listing
from tests.conftest import tiny_raw
from tests.engine.toy_methods import CRASH, toy_methods  # noqa: F401 - a fixture

FAST = {"num_val": 0}
SRC = str(Path(__file__).resolve().parents[2] / "src")


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "r"
    with run_lock(run_dir) as path:
        assert path == tmp_path / "runs" / ".r.lock"
        holder = json.loads(path.read_text())
        assert holder["pid"] == os.getpid()
        with pytest.raises(RunFolderBusy) as err:
            with run_lock(run_dir):
                pass
        message = str(err.value)
        assert message.startswith(f"{run_dir}: run folder is in use by another training (pid {os.getpid()} on ")
        assert message.endswith("; wait for it to end or choose another run.name / run.out_dir")
        assert "\n" not in message
        assert path.exists(), "a refused attempt must not remove the holder's lock"
    assert not path.exists()
    with run_lock(run_dir):  # released: free again
        pass


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    with pytest.raises(KeyError):
        with run_lock(run_dir):
            raise KeyError("boom")
    assert not lock_path(run_dir).exists()
    with run_lock(run_dir):
        pass


def _hold_in_subprocess(run_dir: Path) -> subprocess.Popen:
    """A process that takes the lock, says so on stdout, then waits to be killed."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {SRC!r})
        from vasseg.engine.lock import run_lock
        with run_lock(Path({str(run_dir)!r})):
            print("locked", flush=True)
            time.sleep(300)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_killed_holder_leaves_a_stale_lock_that_is_taken_over(tmp_path: Path, caplog) -> None:
    run_dir = tmp_path / "r"
    proc = _hold_in_subprocess(run_dir)
    try:
        with pytest.raises(RunFolderBusy, match=f"in use by another training \\(pid {proc.pid} on "):
            with run_lock(run_dir):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert json.loads(lock_path(run_dir).read_text())["pid"] == proc.pid  # left behind by the kill
    with caplog.at_level(logging.WARNING, logger="vasseg.engine.lock"):
        with run_lock(run_dir) as path:
            assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"took over the lock of a training that ended without releasing it (pid {proc.pid} on" in caplog.text
    assert not lock_path(run_dir).exists()


# ------------------------------------------------------------------------------ through train


def test_a_second_training_into_a_locked_run_folder_is_refused(toy_methods, phantom_root, tmp_path, capsys) -> None:
    raw = tiny_raw(phantom_root, tmp_path / "runs", "toy_gan", data=FAST, train={"iterations": 2, "ckpt_every": 2})
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    run_dir = run_dir_for(absolute_paths(build_experiment(raw)))
    proc = _hold_in_subprocess(run_dir)  # the first training, as far as the folder can tell
    try:
        for extra in ((), ("--resume",)):
            line = cli_error(capsys, "train", "--config", str(config), "--quiet", *extra)
            assert f"{run_dir}: run folder is in use by another training (pid {proc.pid} on " in line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert listing(tmp_path / "runs") == [f".{run_dir.name}.lock"]  # the refused runs wrote nothing
    assert main(["train", "--config", str(config), "--quiet"]) == 0  # the stale lock is taken over
    assert (run_dir / "checkpoints" / "latest").is_file() and not lock_path(run_dir).exists()


def test_a_crashed_training_releases_its_lock(toy_methods, tiny) -> None:
    exp = tiny("toy_gan", data=FAST, train={"iterations": 4, "ckpt_every": 2, "log_every": 1})
    run_dir = run_dir_for(absolute_paths(exp))
    CRASH["at"] = 3
    try:
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_experiment(exp)
    finally:
        CRASH["at"] = None
    assert not lock_path(run_dir).exists()
    assert train_experiment(exp, resume=True) == run_dir
    assert not lock_path(run_dir).exists()
