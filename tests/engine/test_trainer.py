"""The engine: schedules, checkpoints, exact resume after SIGKILL, non-finite guard, validation."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from vasseg.config import build_experiment
from vasseg.engine.checkpoint import latest_checkpoint, load_checkpoint
from vasseg.engine.optim import ema_decay, lr_factor
from vasseg.engine.run import train_experiment
from vasseg.engine.trainer import TrainingStopped

from tests.conftest import tiny_raw


def _losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(ln) for ln in (run_dir / "scalars.jsonl").read_text().splitlines() if ln]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_lr_policies_follow_the_lineage() -> None:
    t = build_experiment({"train": {"lr_policy": "step", "lr_step": 2500}}).train
    assert [lr_factor(t, s) for s in (0, 2499, 2500, 4999, 5000)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    p = build_experiment({"train": {"lr_policy": "poly", "iterations": 100}}).train
    assert lr_factor(p, 0) == 1 and lr_factor(p, 50) == pytest.approx(0.5**0.9)
    c = build_experiment({"train": {"lr_policy": "constant"}}).train
    assert lr_factor(c, 12345) == 1
    assert ema_decay(0, 0.99) == 0 and ema_decay(9, 0.99) == pytest.approx(0.9) and ema_decay(10**4, 0.99) == 0.99


def test_fit_writes_logs_checkpoints_and_validation(tiny) -> None:
    exp = tiny("mean_teacher", train={"iterations": 6, "ckpt_every": 2, "keep_checkpoints": 2,
                                      "val_every": 3, "log_every": 2})
    run_dir = train_experiment(exp)
    losses = _losses(run_dir)
    assert sorted(losses) == list(range(6))
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("step_*.pt"))
    assert ckpts == ["step_000004.pt", "step_000006.pt"]  # retention keeps the newest two
    assert latest_checkpoint(run_dir / "checkpoints").name == "step_000006.pt"
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    state = load_checkpoint(run_dir / "checkpoints" / "step_000006.pt")
    assert state["step"] == 6 and set(state["optimizers"]) == {"main"}
    rows = [json.loads(ln) for ln in (run_dir / "scalars.jsonl").read_text().splitlines()]
    assert any("val_dice" in r for r in rows)
    assert (run_dir / "eval" / "val_last" / "cases.csv").is_file()
    assert not list(run_dir.rglob("*.tmp"))


def test_a_second_run_of_the_same_config_refuses_to_overwrite(tiny) -> None:
    exp = tiny("supervised", train={"iterations": 2})
    train_experiment(exp)
    with pytest.raises(Exception, match="already has checkpoints"):
        train_experiment(exp)


def test_non_finite_loss_stops_naming_step_term_and_checkpoint(tiny) -> None:
    exp = tiny("supervised", train={"iterations": 8, "lr": 1e12, "ckpt_every": 1, "log_every": 1})
    with pytest.raises(TrainingStopped, match=r"non-finite value at step \d+: \w+ = (nan|inf).*Last good checkpoint"):
        train_experiment(exp)


def test_skip_mode_bounds_the_number_of_skips(tiny) -> None:
    exp = tiny("supervised", train={"iterations": 8, "lr": 1e12, "nonfinite": "skip", "max_nonfinite_skips": 2})
    with pytest.raises(TrainingStopped, match="more than 2 non-finite steps skipped"):
        train_experiment(exp)


def _write_config(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def _run_cli(config: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "vasseg", "train", "--config", str(config), "--quiet", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)


def test_quiet_console_still_writes_a_complete_train_log(phantom_root: Path, tmp_path: Path) -> None:
    cfg = _write_config(tmp_path / "q.yaml", tiny_raw(phantom_root, tmp_path / "q", "supervised",
                                                      train={"iterations": 2}, data={"num_val": 0}))
    proc = _run_cli(cfg)
    assert proc.wait(timeout=300) == 0
    run_dir = Path(proc.stdout.read().decode().strip().splitlines()[-1])
    assert "INFO" not in proc.stderr.read().decode()  # --quiet: warnings only on the console
    log = (run_dir / "train.log").read_text()
    assert "INFO vasseg.engine.run: run folder:" in log and "trained 2 steps" in log


def test_sigkill_then_resume_reproduces_the_uninterrupted_losses(phantom_root: Path, tmp_path: Path) -> None:
    train = {"iterations": 24, "ckpt_every": 3, "log_every": 1}
    ref_cfg = _write_config(tmp_path / "ref.yaml", tiny_raw(phantom_root, tmp_path / "ref", "mean_teacher", train=train))
    cut_cfg = _write_config(tmp_path / "cut.yaml", tiny_raw(phantom_root, tmp_path / "cut", "mean_teacher", train=train))
    ref = _run_cli(ref_cfg)
    assert ref.wait(timeout=300) == 0, ref.stderr.read().decode()
    ref_dir = Path(ref.stdout.read().decode().strip().splitlines()[-1])

    kill_at = random.Random().randint(4, 18)
    proc = _run_cli(cut_cfg)
    cut_dir = tmp_path / "cut" / ref_dir.name
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = cut_dir / "scalars.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= kill_at:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill at step {kill_at}"
    resumed = _run_cli(cut_cfg, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read().decode()
    steps = [json.loads(ln)["step"] for ln in (cut_dir / "scalars.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert steps == list(range(24)), "a step is missing or logged twice after the resume"
    expected, got = _losses(ref_dir), _losses(cut_dir)
    assert sorted(got) == list(range(24))
    assert got == expected, f"killed after ~{kill_at} steps: losses differ after resume"


def test_resume_refuses_changed_settings_under_a_fixed_run_name(tiny) -> None:
    exp = tiny("supervised", train={"iterations": 2}, run={"name": "fixed"})
    train_experiment(exp)
    longer = tiny("supervised", train={"iterations": 4}, run={"name": "fixed"})
    with pytest.raises(Exception, match=r"cannot resume with changed settings \(train.iterations"):
        train_experiment(longer, resume=True)
    assert train_experiment(exp, resume=True).name == "fixed"  # same settings: fine
