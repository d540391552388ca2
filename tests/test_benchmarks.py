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
    cmd = [sys.executable, "-m", "vasseg", "sweep", "--configs", str(config), "--seeds", "3", "4",
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
    bad = subprocess.run([*cmd[:9], "--folds", "0", "--out", str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "1 folds for 2 seeds" in bad.stderr


def test_intensity_ab_pairs_cases_over_evaluations_and_lists_the_darkest(phantom_root: Path, tmp_path: Path) -> None:
    ids = [f"phantom_{i:03d}" for i in range(6)]
    for run, dice in (("a", [0.0, 0.5, 0.6, 0.7, 0.8, 0.9]), ("b", [0.7, 0.6, 0.7, 0.8, 0.9, 0.95])):
        for name, part in (("val_last", slice(0, 3)), ("fold1_last", slice(3, 6))):
            folder = tmp_path / run / "eval" / name
            folder.mkdir(parents=True)
            rows = "".join(f"{i},1,{d}\n" for i, d in zip(ids[part], dice[part]))
            (folder / "cases.csv").write_text("case,cls,dice\n" + rows)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "intensity_ab.py"), "--root", str(phantom_root),
                           "--a", str(tmp_path / "a"), "--b", str(tmp_path / "b"), "--evals", "val_last",
                           "fold1_last", "--dark", "2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "6 paired cases" in out and "| A | 58.33 |" in out and "| B | 77.50 |" in out
    assert "B - A: mean +19.17 pp" in out and "| the other 4 |" in out
    # Two runs on side B (seeds): each case scores the mean of its two runs; a run without the
    # evaluation folders stops the script with its name.
    second = tmp_path / "b2" / "eval" / "val_last"
    second.mkdir(parents=True)
    (second / "cases.csv").write_text("case,cls,dice\n" + "".join(f"{i},1,0.5\n" for i in ids[:3]))
    (tmp_path / "empty").mkdir()
    cmd = [sys.executable, str(REPO / "benchmarks" / "intensity_ab.py"), "--root", str(phantom_root),
           "--a", str(tmp_path / "a"), "--evals", "val_last", "--dark", "0", "--b"]
    pooled = subprocess.run([*cmd, str(tmp_path / "b"), str(tmp_path / "b2")], capture_output=True, text=True,
                            timeout=300)
    assert pooled.returncode == 0, pooled.stderr
    assert "3 paired cases" in pooled.stdout and "| B | 58.33 |" in pooled.stdout  # (0.6+0.55+0.6)/3
    missing = subprocess.run([*cmd, str(tmp_path / "empty")], capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "empty: no eval/" in missing.stderr


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
