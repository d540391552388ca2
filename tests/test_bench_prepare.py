"""benchmarks/bench_prepare.py runs (tiny sizes) and prints its table: it backs benchmarks/RESULTS.md."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_bench_prepare_prints_a_row_per_measurement(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO / "src"))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_prepare.py"), "--cases", "3", "4",
                           "--shape", "24", "24", "10", "--workers", "1"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| ") and "cases" not in line]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("3", "1"), ("4", "1")]
    assert all(float(r[2]) > 0 and float(r[4]) > 100 for r in rows)  # wall time, peak RSS (MiB)
