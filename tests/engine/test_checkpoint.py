"""Checkpoint files: atomic writes, the ``latest`` pointer, retention, safe loading, RNG states."""

from __future__ import annotations

import errno
import math
import os
import pickle
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
from vasseg.config import build_experiment, to_dict
from vasseg.engine.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    prune_checkpoints,
    rng_state,
    save_checkpoint,
    set_rng_state,
    validate_checkpoint,
)


def _state(step: int) -> dict[str, Any]:
    """A checkpoint state with every entry :func:`validate_checkpoint` requires."""
    return {"step": step, "method": {"w": torch.full((64, 64), float(step))}, "config": to_dict(build_experiment({})),
            "optimizers": {"main": {"state": {}, "param_groups": []}}, "scaler": {}, "batcher": {},
            "rng": {"torch": torch.get_rng_state()}, "best": {"val_dice": -math.inf, "step": -1}}


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
    save_checkpoint(tmp_path, "step_000001.pt", _state(1))
    script = textwrap.dedent(f"""
        import os, signal, torch
        from pathlib import Path
        from vasseg.engine import checkpoint as ckpt
        folder = Path({str(tmp_path)!r})
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
    path = save_checkpoint(tmp_path, "step_000001.pt", _state(1) | {"rng": rng_state()})
    draws = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    set_rng_state(load_checkpoint(path)["rng"])
    again = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert draws[:3] == again[:3] and torch.equal(draws[3], again[3])


# ------------------------------------------------------------------------------ structure


@pytest.mark.parametrize("change, problem", [
    ({"step": None}, "entry 'step' is missing (expected a non-negative integer)"),
    ({"step": "5"}, "entry 'step' is '5' (str), not a non-negative integer"),
    ({"step": -1}, "entry 'step' is -1 (int), not a non-negative integer"),
    ({"step": True}, "entry 'step' is True (bool), not a non-negative integer"),
    ({"method": [1, 2]}, "entry 'method' is [1, 2] (list), not a mapping of parameter names to tensors"),
    ({"method": {"w": 3.0}}, "entry 'method' is {'w': 3.0} (dict), not a mapping of parameter names to tensors"),
    ({"config": None}, "entry 'config' is missing (expected a mapping (the experiment's configuration))"),
    ({"config": "x"}, "entry 'config' is 'x' (str), not a mapping (the experiment's configuration)"),
    ({"config": {"train": {"lr": "fast"}}},
     "entry 'config' is not a valid experiment (train.lr: expected a number, got 'fast')"),
    ({"optimizers": {"disc": {"state": {}, "param_groups": []}}},
     "entry 'optimizers' is a dict value, not a mapping of optimizer states including 'main'"),
    ({"optimizers": {"main": []}}, "entry 'optimizers' is {'main': []} (dict), not a mapping of optimizer states"),
    ({"rng": {}}, "entry 'rng' is {} (dict), not a mapping holding the 'torch' generator state"),
    ({"best": {"val_dice": 0.5}}, "entry 'best' is {'val_dice': 0.5} (dict), not a mapping with 'val_dice' and 'step'"),
    ({"batcher": None}, "entry 'batcher' is missing"),
    ({"scaler": 0}, "entry 'scaler' is 0 (int), not a mapping"),
    ({"nonfinite_skips": 1.5}, "entry 'nonfinite_skips' is 1.5 (float), not a non-negative integer"),
])
def test_a_checkpoint_with_a_bad_entry_is_one_line_naming_file_and_entry(change: dict, problem: str,
                                                                         tmp_path: Path) -> None:
    state = _state(3) | change
    state = {k: v for k, v in state.items() if v is not None}
    path = tmp_path / "step_000003.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: invalid checkpoint: {problem}")
    assert "\n" not in str(err.value)


def test_validate_checkpoint_is_public_and_returns_the_state(tmp_path: Path) -> None:
    state = _state(1)
    assert validate_checkpoint(state, tmp_path / "x.pt") is state
    with pytest.raises(CheckpointError, match=r"^nowhere.pt: not a vasseg checkpoint \(a list, not a mapping\)$"):
        validate_checkpoint([1], Path("nowhere.pt"))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_raw_pickle_is_refused_in_one_line_without_warnings(protocol: int, tmp_path: Path, recwarn) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps({"step": 1, "method": {"w": torch.ones(2)}, "x": _Evil(marker)}, protocol=protocol))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == (f"{path}: refused to load: a raw pickle, not a torch.save checkpoint; it was not "
                              f"unpickled (only torch.save files of plain tensors and containers are accepted)")
    assert not marker.exists()
    assert [str(w.message) for w in recwarn] == []


def test_a_torch_archive_with_a_newer_pickle_protocol_is_refused_without_warnings(tmp_path: Path, recwarn) -> None:
    """torch's safe unpickler lacks protocol 4's instructions: refused, not called pickled code."""
    path = tmp_path / "p4.pt"
    torch.save(_state(2), path, pickle_protocol=4)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value).startswith(f"{path}: refused to load: its pickle uses an instruction (opcode ")
    assert str(err.value).endswith("that torch's safe loader does not accept; nothing was executed")
    assert [str(w.message) for w in recwarn] == []


def test_the_legacy_torch_format_is_not_taken_for_a_raw_pickle(tmp_path: Path) -> None:
    path = tmp_path / "legacy.pt"
    torch.save(_state(4), path, _use_new_zipfile_serialization=False)
    assert load_checkpoint(path)["step"] == 4
