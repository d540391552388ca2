"""Training health and exact resume: crash/resume with a discriminator, non-finite stops, disk
full while saving, no half-made run folders, and the ``--deterministic`` mode.

The SIGKILL-at-a-random-step test lives in ``test_trainer.py``; here a crash is an exception
raised by a test-only method, so that the run can use a second optimizer and be inspected
in-process.
"""

from __future__ import annotations

import errno
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from vasseg.cli import main
from vasseg.config import Experiment, build_experiment, merge
from vasseg import atomic
from vasseg.engine.checkpoint import latest_checkpoint, load_checkpoint
from vasseg.engine.run import train_experiment
from vasseg.engine.scalars import ScalarLog

from tests.conftest import tiny_raw
from tests.engine.toy_methods import CRASH, toy_methods  # noqa: F401 - a fixture

FAST = {"num_val": 0}  # no validation split: no evaluation at the end of a run


def _raw(root: Path, out: Path, params: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    """A tiny ``toy_gan`` config (``params``: its fault-injection parameters)."""
    return merge(tiny_raw(root, out, "toy_gan", **sections), {"method": params or {}})


def _toy(root: Path, out: Path, params: dict[str, Any] | None = None, **sections: Any) -> Experiment:
    return build_experiment(_raw(root, out, params, **sections))


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in (run_dir / "scalars.jsonl").read_text().splitlines() if ln]


def _training_rows(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in _rows(run_dir) if "loss" in r]


def _tensors(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested checkpoint state into ``{dotted.key: leaf}``."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, (list, tuple)):
        return _tensors(dict(enumerate(obj)), prefix)
    return {prefix.rstrip("."): obj}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    return a == b


def _cli(capsys: pytest.CaptureFixture, tmp_path: Path, raw: dict, *extra: str) -> tuple[int, str, str]:
    config = tmp_path / f"cfg_{len(list(tmp_path.glob('cfg_*')))}.yaml"
    config.write_text(yaml.safe_dump(raw))
    rc = main(["train", "--config", str(config), "--quiet", *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_line_error(rc: int, err: str) -> str:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


# ------------------------------------------------------------------------------ exact resume


def test_crash_then_resume_matches_the_uninterrupted_run_with_discriminator(toy_methods, tiny, tmp_path: Path) -> None:
    train = {"iterations": 8, "ckpt_every": 3, "log_every": 1}
    ref_dir = train_experiment(tiny("toy_gan", data=FAST, train=train, run={"out_dir": str(tmp_path / "ref")}))
    cut = tiny("toy_gan", data=FAST, train=train, run={"out_dir": str(tmp_path / "cut")})
    CRASH["at"] = 5  # after the step-3 checkpoint, with the rows of steps 3 and 4 already on disk
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_experiment(cut)
    CRASH["at"] = None
    cut_dir = train_experiment(cut, resume=True)

    ref_rows, cut_rows = _training_rows(ref_dir), _training_rows(cut_dir)
    assert [r["step"] for r in cut_rows] == list(range(8)), "steps missing or logged twice"
    assert {"loss", "loss_d", "grad_norm_d"} <= set(cut_rows[0])
    assert cut_rows == ref_rows  # every logged value of every step, bit for bit

    ref_state = load_checkpoint(latest_checkpoint(ref_dir / "checkpoints"))
    cut_state = load_checkpoint(latest_checkpoint(cut_dir / "checkpoints"))
    assert set(cut_state["optimizers"]) == {"main", "disc"}
    a, b = _tensors({k: v for k, v in ref_state.items() if k != "config"}), \
        _tensors({k: v for k, v in cut_state.items() if k != "config"})
    assert a.keys() == b.keys()
    differ = [k for k in a if not _same(a[k], b[k])]
    assert not differ, f"state differs after resume: {differ[:5]}"


def test_scalar_log_resume_keeps_only_rows_before_the_checkpoint(tmp_path: Path) -> None:
    lines = [{"step": 0, "loss": 1.0}, {"step": 1, "loss": 0.9}, {"step": 2, "val_dice": 0.5},
             {"step": 2, "loss": 0.8}, {"step": 3, "loss": 0.7}]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"step": 4, "lo'  # cut by a kill
    (tmp_path / "scalars.jsonl").write_text(text)
    log = ScalarLog(tmp_path, tensorboard=False)
    log.truncate_after(2)  # a checkpoint after 2 steps (validated at step 2) resumes at step 2
    assert _rows(tmp_path) == lines[:3]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------------------ non-finite


def test_nan_loss_stops_naming_step_term_and_last_good_checkpoint(toy_methods, phantom_root, tmp_path, capsys) -> None:
    raw = _raw(phantom_root, tmp_path / "runs", {"nan_at": [4]}, data=FAST,
               train={"iterations": 8, "ckpt_every": 2, "log_every": 3})
    line = _one_line_error(*_cli(capsys, tmp_path, raw)[::2])
    ckpt_dir = next((tmp_path / "runs").iterdir()) / "checkpoints"
    assert "non-finite value at step 4: loss = nan; stopped at step 6" in line
    assert f"Last good checkpoint: {ckpt_dir / 'step_000004.pt'}" in line
    # The flush before a checkpoint checks every buffered step: nothing after the NaN is saved.
    assert sorted(p.name for p in ckpt_dir.glob("step_*.pt")) == ["step_000002.pt", "step_000004.pt"]
    state = load_checkpoint(ckpt_dir / "step_000004.pt")
    assert all(torch.isfinite(t).all() for t in state["method"].values() if t.is_floating_point())


def test_nan_gradient_under_a_finite_loss_stops_naming_grad_norm(toy_methods, phantom_root, tmp_path, capsys) -> None:
    raw = _raw(phantom_root, tmp_path / "runs", {"grad_nan_at": [1]}, data=FAST,
               train={"iterations": 6, "ckpt_every": 4, "log_every": 1})
    line = _one_line_error(*_cli(capsys, tmp_path, raw)[::2])
    assert "non-finite value at step 1: grad_norm = nan" in line
    assert "Last good checkpoint: none yet in" in line and "rerun" in line


def test_validation_never_checkpoints_weights_after_a_nan_step(toy_methods, phantom_root, tmp_path) -> None:
    exp = _toy(phantom_root, tmp_path / "runs", {"nan_at": [2]},
               train={"iterations": 6, "ckpt_every": 6, "log_every": 6, "val_every": 1})
    with pytest.raises(Exception, match=r"at step 2: loss = nan; stopped at step 3\."):
        train_experiment(exp)
    best = next(Path(exp.run.out_dir).iterdir()) / "checkpoints" / "best.pt"
    if best.exists():
        state = load_checkpoint(best)
        assert state["step"] <= 2
        assert all(torch.isfinite(t).all() for t in state["method"].values() if t.is_floating_point())


def test_skip_mode_continues_past_bounded_non_finite_steps(toy_methods, phantom_root, tmp_path) -> None:
    exp = _toy(phantom_root, tmp_path / "runs", {"nan_at": [1, 3]}, data=FAST,
               train={"iterations": 5, "ckpt_every": 5, "nonfinite": "skip", "max_nonfinite_skips": 2})
    run_dir = train_experiment(exp)
    state = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    assert state["step"] == 5 and state["nonfinite_skips"] == 2
    assert all(torch.isfinite(t).all() for t in state["method"].values() if t.is_floating_point())


# ------------------------------------------------------------------------------ disk full


class _FullDisk:
    """A file object whose writes fail with ENOSPC once ``room`` bytes are written."""

    def __init__(self, fh: Any, room: int) -> None:
        self.fh, self.room = fh, room

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            self.fh.write(bytes(data[: self.room]))  # a partial write, as a full disk gives
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.fh.write(data)

    def __enter__(self) -> "_FullDisk":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.fh.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


def test_disk_full_while_saving_keeps_the_previous_checkpoint(toy_methods, phantom_root, tmp_path, capsys,
                                                               monkeypatch) -> None:
    real_fdopen = os.fdopen
    calls = {"n": 0}

    def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1  # odd calls: checkpoints, even: the pointer; the 3rd is step_000004.pt
        fh = real_fdopen(fd, *args, **kwargs)
        return _FullDisk(fh, 4096) if calls["n"] == 3 else fh

    monkeypatch.setattr(atomic.os, "fdopen", fdopen)
    raw = _raw(phantom_root, tmp_path / "runs", data=FAST, train={"iterations": 6, "ckpt_every": 2, "log_every": 1})
    line = _one_line_error(*_cli(capsys, tmp_path, raw)[::2])
    ckpt_dir = next((tmp_path / "runs").iterdir()) / "checkpoints"
    assert f"{ckpt_dir / 'step_000004.pt'}: could not write checkpoint (No space left on device)" in line
    assert f"checkpoint folder {ckpt_dir} still holds the previous checkpoint (latest = step_000002.pt)" in line
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["latest", "step_000002.pt"]  # no temp file
    assert load_checkpoint(latest_checkpoint(ckpt_dir))["step"] == 2

    monkeypatch.setattr(atomic.os, "fdopen", real_fdopen)  # space freed: resume goes on
    rc, out, err = _cli(capsys, tmp_path, raw, "--resume")
    assert rc == 0, err
    assert [r["step"] for r in _training_rows(ckpt_dir.parent)] == list(range(6))


# ------------------------------------------------------------------------------ no partial output


def test_a_run_failing_before_its_first_step_leaves_no_run_folder(toy_methods, phantom_root, tmp_path, capsys) -> None:
    raw = tiny_raw(phantom_root, tmp_path / "runs", "broken_build", data=FAST)
    line = _one_line_error(*_cli(capsys, tmp_path, raw)[::2])
    assert "broken_build: cannot build" in line
    assert not any((tmp_path / "runs").iterdir())


def test_a_rerun_after_a_failure_without_checkpoint_starts_clean(toy_methods, tiny) -> None:
    exp = tiny("toy_gan", data=FAST, train={"iterations": 4, "ckpt_every": 100, "log_every": 1})
    CRASH["at"] = 2
    with pytest.raises(RuntimeError):
        train_experiment(exp)
    CRASH["at"] = None
    run_dir = train_experiment(exp)  # not blocked: the failed attempt wrote no checkpoint
    assert [r["step"] for r in _training_rows(run_dir)] == list(range(4))


# ------------------------------------------------------------------------------ determinism


@pytest.fixture
def restore_determinism():
    """``--deterministic`` switches torch globally: give the next tests the setting back."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_deterministic_flag_gives_identical_losses(phantom_root, tmp_path, capsys, restore_determinism) -> None:
    runs = []
    for name in ("a", "b"):
        raw = tiny_raw(phantom_root, tmp_path / name, "mean_teacher", data=FAST,
                       train={"iterations": 3, "ckpt_every": 3})
        rc, out, err = _cli(capsys, tmp_path, raw, "--deterministic")
        assert rc == 0, err
        runs.append(Path(out.strip().splitlines()[-1]))
    assert torch.are_deterministic_algorithms_enabled()
    assert yaml.safe_load((runs[0] / "config.yaml").read_text())["train"]["deterministic"] is True
    first, second = _training_rows(runs[0]), _training_rows(runs[1])
    assert len(first) == 3 and all(math.isfinite(r["loss"]) for r in first)
    assert first == second
