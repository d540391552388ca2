"""benchmarks/bf16_train_check.sh and bf16_compare.py on synthetic run folders (no training)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchscripts import load_script
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bf16_train_check.sh"
CASES = [f"case{i:02d}" for i in range(8)]


def fake_run(out: Path, method: str, seed: int, fold: int, amp: str, dice: list[float],
             losses: list[float] | None = None, iterations: int = 3) -> Path:
    """A run folder with what the comparison reads: config.yaml, scalars.jsonl, eval/val_last/cases.csv."""
    run = out / f"la_{method}_4l_s{seed}_{amp}"
    (run / "eval" / "val_last").mkdir(parents=True)
    cfg = {"method": {"name": method}, "data": {"labeled": 4, "fold": fold},
           "train": {"seed": seed, "amp": amp, "iterations": iterations}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    losses = losses if losses is not None else [0.5] * iterations
    rows = [{"step": i, "loss": v, "loss_sup": v, "grad_norm": 1.0} for i, v in enumerate(losses)]
    (run / "scalars.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    lines = ["case,cls,dice"] + [f"{c},1,{d}" for c, d in zip(CASES, dice)]
    (run / "eval" / "val_last" / "cases.csv").write_text("\n".join(lines) + "\n")
    return run


def _compare_module():
    return load_script("bf16_compare")


def check(*args: str | Path, compare_only: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(REPO / "src"))
    if compare_only:
        env["COMPARE_ONLY"] = "1"
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.fixture()
def outs(tmp_path: Path) -> tuple[Path, Path]:
    fp32, bf16 = tmp_path / "fp32", tmp_path / "bf16"
    base = [0.80, 0.70, 0.60, 0.75, 0.85, 0.65, 0.72, 0.78]
    for method in ("supervised", "mean_teacher"):
        fake_run(fp32, method, 1337, 0, "auto", base)
        fake_run(bf16, method, 1337, 0, "bf16", [d + 0.01 * (i + 1) for i, d in enumerate(base)])
    fake_run(fp32, "vas", 1337, 0, "auto", base)  # no bf16 twin wanted: ignored
    return fp32, bf16


def test_pairs_each_bf16_run_with_its_fp32_twin(outs: tuple[Path, Path]) -> None:
    proc = check(*outs)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| supervised") or
            line.startswith("| mean_teacher")]
    assert len(rows) == 2
    # every case 1..8 pp better: mean +4.50 pp, all 8 pairs positive -> exact two-sided p = 2 / 2**8
    assert all("| 1 | 8 |" in r and "+4.50 [" in r and "| 0.0078 |" in r for r in rows), rows
    assert "all finite, every run finished" in proc.stdout


def test_non_finite_loss_and_missing_twin_fail(outs: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    fp32, bf16 = outs
    nan_run = bf16 / "la_supervised_4l_s1337_bf16"
    (nan_run / "scalars.jsonl").write_text('{"step": 0, "loss": 0.5, "grad_norm": 1.0}\n'
                                           '{"step": 1, "loss": NaN, "loss_gan": Infinity, "grad_norm": 1.0}\n')
    fake_run(bf16, "supervised", 1338, 1, "bf16", [0.5] * 8)
    assert _compare_module().main([str(fp32), str(bf16)]) == 1  # in-process: no interpreter start
    out = capsys.readouterr().out
    assert "loss non-finite at 1 steps (first 1)" in out
    assert "loss_gan non-finite" in out
    assert "last logged step 1, expected 2" in out
    assert "('supervised', 4, 1338, 1): no fp32 twin" in out


def test_the_logged_precision_decides_the_side(outs: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    """A train.amp=auto run that the engine says it trained in bf16 (a bf16 CPU) is no fp32 twin; one
    that says fp32 is, and so is one from before the engine logged it (auto was fp32 on a CPU)."""
    fp32, bf16 = outs
    log = "2026-12-07 07:00:00,000 INFO vasseg.engine.trainer: training precision: {}\n"
    (fp32 / "la_supervised_4l_s1337_auto" / "train.log").write_text(log.format("bf16 (auto: CPU has avx512_bf16)"))
    (fp32 / "la_mean_teacher_4l_s1337_auto" / "train.log").write_text(
        log.format("fp32 (auto: CPU has no bf16 instructions (PyTorch kernels: AVX2))"))
    assert _compare_module().main([str(fp32), str(bf16)]) == 1
    out = capsys.readouterr().out
    assert "('supervised', 4, 1337, 0): no fp32 twin" in out
    assert "mean_teacher" in out and "('mean_teacher', 4, 1337, 0): no fp32 twin" not in out


@pytest.mark.parametrize("args, message", [
    (["same"], "must differ from FP32_OUT"),
    (["other", "train.amp=fp32"], "train.amp=fp32: set by this script"),
    (["other", "data.fold=1"], "data.fold=1: set by this script"),
])
def test_bad_arguments_exit_2_before_training(outs: tuple[Path, Path], args: list[str], message: str) -> None:
    fp32, _ = outs
    second = fp32 if args[0] == "same" else fp32.parent / args[0]
    proc = check(fp32, second, *args[1:], compare_only=False)
    assert proc.returncode == 2 and message in proc.stderr
    assert not (fp32.parent / "other").exists()  # nothing trained, nothing written


def test_missing_folders_are_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    proc = check(tmp_path / "nope", tmp_path / "bf16", compare_only=False)
    assert proc.returncode == 2 and "nope: no such folder" in proc.stderr
    (tmp_path / "fp32").mkdir()
    (tmp_path / "bf16").mkdir()
    with pytest.raises(SystemExit) as stop:
        _compare_module().main([str(tmp_path / "fp32"), str(tmp_path / "bf16")])
    assert stop.value.code == 2 and "no run trained in bf16" in capsys.readouterr().err
