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


@pytest.mark.slow
def test_bench_eval_memory_prints_every_row(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_eval_memory.py"), "--cases", "1", "2",
                           "--shape", "32", "32", "16", "--malloc", "keep", "system"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [ln for ln in proc.stdout.splitlines() if ln.startswith(("| keep |", "| system |"))]
    assert [r.split(" | ")[:2] for r in rows] == [["| keep", "1"], ["| keep", "2"], ["| system", "1"], ["| system", "2"]]
    assert all("MiB" in r for r in rows)
    traces = [ln for ln in proc.stdout.splitlines() if "peak RSS (MiB) before each case" in ln]
    assert len(traces) == 2 and all(len(t.split(":")[-1].split()) == 2 for t in traces)
