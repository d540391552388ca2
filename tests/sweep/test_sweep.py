"""``vasseg sweep``: concurrent runs with their own folders, portable weights, summary, resume."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_raw
from vasseg.config import ConfigError
from vasseg.sweep.runner import expand_jobs, fill_count, last_step, vary_grid
from vasseg.sweep.cli import parse_jobs


def _config(phantom_root: Path, folder: Path, method: str, **data) -> Path:
    raw = tiny_raw(phantom_root, folder / "unused", method, data={"num_val": 2, **data},
                   train={"iterations": 3, "ckpt_every": 3}, run={"tensorboard": False})
    raw.pop("run")
    path = folder / f"{method}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vasseg", "sweep", *args], capture_output=True, text=True,
                          timeout=900)


def test_two_configs_times_two_seeds_run_at_once_in_their_own_folders(phantom_root: Path, tmp_path: Path) -> None:
    configs = [str(_config(phantom_root, tmp_path, m)) for m in ("supervised", "mean_teacher")]
    out = tmp_path / "sweep"
    args = ["--configs", *configs, "--seeds", "3", "4", "--jobs", "2", "--out", str(out), "--",
            "train.device=cpu"]
    proc = _sweep(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "sweep.jsonl").read_text().splitlines()]
    assert sorted((Path(r["config"]).stem, r["seed"], r["rc"]) for r in rows) == [
        ("mean_teacher", 3, 0), ("mean_teacher", 4, 0), ("supervised", 3, 0), ("supervised", 4, 0)]
    folders = {Path(r["run_dir"]) for r in rows}
    assert len(folders) == 4 and all(f.parent == out.resolve() for f in folders)
    for row in rows:
        run = Path(row["run_dir"])
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert (config["method"]["name"], config["train"]["seed"]) == (Path(row["config"]).stem, row["seed"])
        assert last_step(run) == 3 and (run / "eval" / "val_last" / "cases.csv").is_file()
        assert Path(row["weights"]) == run / "model.safetensors" and (run / "model.safetensors").is_file()
    spans = sorted((r["started_at"], r["ended_at"]) for r in rows)
    assert any(b[0] < a[1] for a, b in zip(spans, spans[1:])), "two runs never overlapped with --jobs 2"
    summary = (out / "summary.md").read_text()
    assert summary == proc.stdout and summary.count("| 0 |") == 4 and "4/4 runs finished" in summary
    assert "with 2 at once" in summary
    again = _sweep("--resume", *args)
    assert again.returncode == 0 and again.stdout == "" and "nothing to run" in again.stderr
    # the same configs spelled another way (through a symlink) are the same finished runs
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    respelled = [str(tmp_path / "link" / Path(c).name) for c in configs]
    again = _sweep("--resume", "--configs", *respelled, *args[1 + len(configs):])
    assert again.returncode == 0 and "nothing to run" in again.stderr, again.stderr[-2000:]


def test_the_weights_file_of_a_sweep_run_evaluates_like_its_checkpoint(phantom_root: Path, tmp_path: Path) -> None:
    config = _config(phantom_root, tmp_path, "supervised", unlabeled_bs=0)
    out = tmp_path / "sweep"
    proc = _sweep("--configs", str(config), "--seeds", "5", "--out", str(out), "--export", "fp32", "--",
                  "train.device=cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [Path(json.loads(line)["run_dir"]) for line in (out / "sweep.jsonl").read_text().splitlines()]
    from vasseg.inference.evaluate import evaluate_run

    evaluate_run(run, "test", out=tmp_path / "a", progress=False)
    evaluate_run(run / "model.safetensors", "test", out=tmp_path / "b", progress=False)
    # fp32 weights: the same per-case scores to the last digit
    assert (tmp_path / "a" / "cases.csv").read_text() == (tmp_path / "b" / "cases.csv").read_text()


def test_vary_forms_a_grid_and_jobs_that_share_a_run_folder_are_refused(phantom_root: Path, tmp_path: Path) -> None:
    assert vary_grid([]) == [[]]
    assert vary_grid(["train.lr=0.01,0.02", "method.name=a"]) == [["train.lr=0.01", "method.name=a"],
                                                                    ["train.lr=0.02", "method.name=a"]]
    config = _config(phantom_root, tmp_path, "supervised")
    jobs = expand_jobs([str(config)], [1, 2], tmp_path / "o", vary=["train.lr=0.01,0.02"])
    assert [(j.seed, j.overrides) for j in jobs] == [(1, ["train.lr=0.01"]), (1, ["train.lr=0.02"]),
                                                     (2, ["train.lr=0.01"]), (2, ["train.lr=0.02"])]
    assert len({j.run_dir for j in jobs}) == 4
    with pytest.raises(ConfigError, match="two jobs would train the same run"):
        expand_jobs([str(config), str(config)], [1], tmp_path / "o")
    with pytest.raises(ConfigError, match="1 folds for 2 seeds"):
        expand_jobs([str(config)], [1, 2], tmp_path / "o", folds=[0])
    with pytest.raises(ConfigError, match="expected KEY=V1,V2"):
        vary_grid(["train.lr"])
    with pytest.raises(ConfigError, match="train.lrr"):
        expand_jobs([str(config)], [1], tmp_path / "o", overrides=["train.lrr=1"])


def test_concurrency_is_what_the_free_memory_holds_with_a_margin() -> None:
    assert fill_count(run_mib=10_000, free_mib=100_000, cpus=16, remaining=20) == 2  # 8 fit; 3 at once in all
    assert fill_count(run_mib=40_000, free_mib=50_000, cpus=16, remaining=20) == 1  # 50 / (40 * 1.15)
    assert fill_count(run_mib=10_000, free_mib=100_000, cpus=2, remaining=20) == 1  # one run per core
    assert fill_count(run_mib=10_000, free_mib=100_000, cpus=16, remaining=1) == 1
    assert fill_count(run_mib=10_000, free_mib=5_000, cpus=16, remaining=5) == 0
    assert parse_jobs("auto") is None and parse_jobs("3") == 3
    with pytest.raises(ConfigError, match="--jobs '0'"):
        parse_jobs("0")


def test_a_bad_config_stops_the_sweep_before_any_run(phantom_root: Path, tmp_path: Path) -> None:
    good = _config(phantom_root, tmp_path, "supervised")
    out = tmp_path / "sweep"
    proc = _sweep("--configs", str(good), str(tmp_path / "missing.yaml"), "--out", str(out))
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not out.exists()


def test_auto_concurrency_fills_the_gpu_after_measuring_the_first_run(monkeypatch, tmp_path: Path) -> None:
    import vasseg.sweep.runner as sweep

    jobs = [sweep.Job("c.yaml", s, None, [], tmp_path / f"r{s}", 10, f"r{s}") for s in range(6)]
    jobs[0].phase = "train"
    runner = sweep.Sweep(jobs, tmp_path, None, on_cpu=False)
    monkeypatch.setattr(sweep, "probe_memory", lambda job, free_before: None)  # no step logged yet
    assert runner._maybe_fill(1, {})[0] == 1 and runner.jobs_at_once is None
    monkeypatch.setattr(sweep, "probe_memory", lambda job, free_before: 20_000.0)
    monkeypatch.setattr(sweep, "gpu_free_mib", lambda: 100_000.0)
    monkeypatch.setattr(sweep.os, "cpu_count", lambda: 16)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    limit, env = runner._maybe_fill(1, {})
    assert limit == runner.jobs_at_once == 3  # 4 more would fit in 100 GB free; 3 at once in all
    assert env["OMP_NUM_THREADS"] == "5"  # 16 cores / 3 runs, on CUDA too


def test_nvidia_smi_non_numbers_read_as_unknown(monkeypatch) -> None:
    import vasseg.sweep.runner as sweep

    monkeypatch.setattr(sweep, "_nvidia_smi", lambda *q: [["[N/A]"]])
    assert sweep.gpu_free_mib() is None
    monkeypatch.setattr(sweep, "_nvidia_smi", lambda *q: [["41", "[N/A]"], ["42", "1024"], ["41", "512"]])
    assert sweep.process_gpu_mib(41) == 512.0 and sweep.process_gpu_mib(42) == 1024.0
    assert sweep.mib("[Not Supported]") is None and sweep.mib("80000") == 80000.0
