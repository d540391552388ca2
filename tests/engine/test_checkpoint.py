"""Checkpoint files: atomic writes, the ``latest`` pointer, retention, safe loading, RNG states."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vasseg import atomic
from vasseg.engine.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state(step: int) -> dict[str, Any]:
    return {"step": step, "method": {"w": torch.full((64, 64), float(step))}}


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class _Failing:
    """A file object that fails with ``error`` after ``room`` bytes (a full disk, an I/O error)."""

    def __init__(self, fh: Any, room: int, error: OSError) -> None:
        self.fh, self.room, self.error = fh, room, error

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.fh.write(bytes(data[: self.room]))
            raise self.error
        self.room -= len(data)
        return self.fh.write(data)

    def __enter__(self) -> "_Failing":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def _fail_nth_open(monkeypatch: pytest.MonkeyPatch, n: int, room: int = 100) -> None:
    real = os.fdopen
    calls = {"n": 0}

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        fh = real(fd, *args, **kwargs)
        return _Failing(fh, room, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) if calls["n"] == n else fh

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)


def test_save_load_round_trip_and_latest_pointer(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, "step_000001.pt", _state(1))
    save_checkpoint(tmp_path, "best.pt", _state(1), point_latest=False)
    path = save_checkpoint(tmp_path, "step_000002.pt", _state(2))
    assert latest_checkpoint(tmp_path) == path
    assert load_checkpoint(path)["step"] == 2
    assert _files(tmp_path) == ["best.pt", "latest", "step_000001.pt", "step_000002.pt"]


def test_disk_full_mid_write_keeps_previous_checkpoint_and_pointer(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, "step_000001.pt", _state(1))
    before = (tmp_path / "step_000001.pt").read_bytes()
    _fail_nth_open(monkeypatch, 1, room=1000)  # the checkpoint file itself
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(tmp_path, "step_000002.pt", _state(2))
    msg = str(err.value)
    assert msg.startswith(f"{tmp_path / 'step_000002.pt'}: could not write checkpoint (No space left on device)")
    assert f"checkpoint folder {tmp_path} still holds the previous checkpoint (latest = step_000001.pt)" in msg
    assert _files(tmp_path) == ["latest", "step_000001.pt"]  # no partial file, no temp file
    assert (tmp_path / "step_000001.pt").read_bytes() == before
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 1


def test_disk_full_while_moving_the_pointer_keeps_the_old_pointer(tmp_path: Path, monkeypatch) -> None:
    save_checkpoint(tmp_path, "step_000001.pt", _state(1))
    _fail_nth_open(monkeypatch, 2, room=0)  # the checkpoint succeeds, the pointer write fails
    with pytest.raises(CheckpointError, match="latest = step_000001.pt"):
        save_checkpoint(tmp_path, "step_000002.pt", _state(2))
    assert latest_checkpoint(tmp_path).name == "step_000001.pt"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_fsync_failure_is_a_checkpoint_error(tmp_path: Path, monkeypatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint \(Input/output error\).*none written yet"):
        save_checkpoint(tmp_path, "step_000001.pt", _state(1))
    assert _files(tmp_path) == []


def test_a_kill_mid_write_never_exposes_a_partial_file(tmp_path: Path) -> None:
    """SIGKILL between writing the temp file and renaming it (no Python cleanup can run)."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        from pathlib import Path
        from vasseg.engine import checkpoint as ckpt
        folder = Path({str(tmp_path)!r})
        ckpt.save_checkpoint(folder, "step_000001.pt", {{"step": 1, "method": {{}}}})
        os.fsync = lambda fd: os.kill(os.getpid(), signal.SIGKILL)
        ckpt.save_checkpoint(folder, "step_000002.pt", {{"step": 2, "method": {{"w": torch.ones(99)}}}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    names = _files(tmp_path)
    assert "step_000002.pt" not in names and any(n.endswith(".tmp") for n in names)
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 1
    save_checkpoint(tmp_path, "step_000003.pt", _state(3))
    prune_checkpoints(tmp_path, keep=2)  # the next save's housekeeping removes the dead temp file
    assert _files(tmp_path) == ["latest", "step_000001.pt", "step_000003.pt"]


def test_retention_keeps_the_newest_and_never_the_pointed_file(tmp_path: Path) -> None:
    for step in range(1, 6):
        save_checkpoint(tmp_path, f"step_{step:06d}.pt", _state(step))
        prune_checkpoints(tmp_path, keep=2)
    save_checkpoint(tmp_path, "best.pt", _state(3), point_latest=False)
    assert _files(tmp_path) == ["best.pt", "latest", "step_000004.pt", "step_000005.pt"]
    (tmp_path / "latest").write_text("step_000004.pt\n")  # e.g. the pointer move failed
    prune_checkpoints(tmp_path, keep=0)
    assert _files(tmp_path) == ["best.pt", "latest", "step_000004.pt"]


@pytest.mark.parametrize("content", ["", "../elsewhere.pt", "/etc/passwd", "sub/step_000001.pt"])
def test_a_pointer_that_is_not_a_file_name_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "latest").write_text(content)
    with pytest.raises(CheckpointError, match="latest pointer holds"):
        latest_checkpoint(tmp_path)


def test_a_pointer_to_a_missing_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "latest").write_text("step_000009.pt\n")
    with pytest.raises(CheckpointError, match="names step_000009.pt, which does not exist"):
        latest_checkpoint(tmp_path)


class _Evil:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"step": 1, "method": {"w": torch.ones(2)}, "payload": _Evil(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: refused to load: the file carries a pickled object (")
    assert "system" in msg and "nothing was executed" in msg
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg  # no unsafe advice
    assert "\n" not in msg
    assert not marker.exists()


def test_truncated_and_foreign_files_are_unreadable_checkpoints(tmp_path: Path) -> None:
    good = save_checkpoint(tmp_path, "step_000001.pt", _state(1)).read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match=f"^{cut}: not a readable checkpoint"):
        load_checkpoint(cut)
    foreign = tmp_path / "foreign.pt"
    torch.save([1, 2, 3], foreign)
    with pytest.raises(CheckpointError, match="not a vasseg checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_rng_states_survive_a_checkpoint(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.normal()  # leaves a cached Gaussian in NumPy's legacy state
    path = save_checkpoint(tmp_path, "step_000001.pt", {"method": {}, "rng": rng_state()})
    draws = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    set_rng_state(load_checkpoint(path)["rng"])
    again = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert draws[:3] == again[:3] and torch.equal(draws[3], again[3])
