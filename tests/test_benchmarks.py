"""The benchmark scripts run (tiny sizes) and print their tables: they back benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = ["--device", "cpu", "--patch", "16", "16", "16", "--volume", "24", "24", "24", "--filters", "4",
        "--steps", "2", "--warmup", "1", "--workers", "0"]


def _bench(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_step.py"), *args],
                          capture_output=True, text=True, env=env, cwd=tmp, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.parametrize("mode", [[], ["--interleave"]], ids=["sequential", "interleaved"])
def test_bench_step_times_every_pair(mode: list[str], tmp_path: Path) -> None:
    out = tmp_path / "steps.json"
    proc = _bench(*TINY, "--methods", "supervised,vas", "--variants", "plain,lineage", *mode, "--json", str(out),
                  tmp=tmp_path)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["method"], r["variant"]) for r in rows] == [
        ("supervised", "plain"), ("supervised", "lineage"), ("vas", "plain"), ("vas", "lineage")]
    assert all(r["ms"] > 0 and r["steps"] == 2 for r in rows)
    assert "| vas | lineage |" in proc.stdout and "FAILED" not in proc.stdout


def test_sweep_pairs_seeds_with_folds_and_resume_skips_finished_runs(phantom_root: Path, tmp_path: Path) -> None:
    import yaml

    from tests.conftest import tiny_raw

    raw = tiny_raw(phantom_root, tmp_path / "unused", "supervised",
                   data={"num_val": 0, "folds": 2, "unlabeled_bs": 0}, train={"iterations": 2})
    raw.pop("run")
    config = tmp_path / "sup.yaml"
    config.write_text(yaml.safe_dump(raw))
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(REPO / "benchmarks" / "sweep.py"), "--configs", str(config), "--seeds", "3", "4",
           "--folds", "0", "1", "--out", str(out), "--", "run.tensorboard=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert [(r["seed"], r["fold"], r["rc"]) for r in rows] == [(3, 0, 0), (4, 1, 0)]
    vals = [yaml.safe_load((Path(r["run_dir"]) / "split.yaml").read_text())["val"] for r in rows]
    assert len(vals[0]) == len(vals[1]) == 3 and not set(vals[0]) & set(vals[1])  # 6 non-labeled ids, 2 folds
    again = subprocess.run([*cmd[:-2], "--resume", "--", "run.tensorboard=false"], capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0 and again.stdout == ""  # both finished: nothing to run
    bad = subprocess.run([*cmd[:7], "--folds", "0", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "1 folds for 2 seeds" in bad.stderr
