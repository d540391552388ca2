"""Many trainings at once: configs x seeds x overrides as concurrent ``vasseg train`` processes.

Each job is one ``vasseg train --config C train.seed=S run.out_dir=OUT <overrides>`` process with
its own run folder (the folder name is the config hash, so every job's folder is known, and
checked, before anything starts). Separate processes rather than CUDA streams in one process:
each run keeps the engine's exact-resume and failure guarantees, a crash takes one run down, and
the GPU time-slices kernels of separate processes well when one run alone leaves it idle (small
CPU-scale patches).

Concurrency (``jobs``): an integer, or ``auto``. ``auto`` is 1 on the CPU (on 2 cores two
short runs at once gave 1.11x the runs per hour for twice the memory: RESULTS.md §9) and on CUDA is measured: the first
job starts alone, its GPU memory is read with ``nvidia-smi`` once it has logged its first steps,
and as many more start as the free memory holds with a 15 % margin, at most ``AUTO_CUDA_MAX``
in all (runs at once time-share one GPU: more of them only make every one of them late) and at
most one per CPU core. With N > 1 runs at once each gets ``cores / N`` threads, on CUDA too.

A finished job's student weights are exported next to it (``model.safetensors``, fp16 by default,
~19 MB for the LA VNet) so that a run folder without checkpoints still carries the model.
One JSON line per finished job goes to ``OUT/sweep.jsonl``; ``resume=True`` skips the jobs it
records as finished and continues the others from their checkpoints.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from vasseg.config import ConfigError, load_config
from vasseg.errors import CheckpointError
from vasseg.rundir import RunDir

log = logging.getLogger(__name__)

MEMORY_MARGIN = 1.15  # a run's GPU memory grows a little after its first logged steps
AUTO_CUDA_MAX = 3  # runs at once that `--jobs auto` starts on one GPU


@dataclass
class Job:
    """One training: its command line parts and the run folder it will write."""

    config: str
    seed: int
    fold: int | None
    overrides: list[str]  # everything after the seed: fold, varied and shared overrides
    run_dir: Path
    iterations: int
    name: str
    device: str = "auto"  # the run's train.device
    proc: subprocess.Popen | None = None
    phase: str = "waiting"  # waiting | train | export | done
    started: float = 0.0  # time.perf_counter() at the start
    started_at: float = 0.0  # time.time() at the start, and at the end of training
    ended_at: float = 0.0
    rc: int | None = None
    wall_s: float = 0.0
    log_path: Path | None = None
    extra: dict = field(default_factory=dict)

    def record(self) -> dict:
        return {"config": self.config, "seed": self.seed, "fold": self.fold, "run_dir": str(self.run_dir),
                "rc": self.rc, "wall_s": round(self.wall_s, 1), "overrides": self.overrides,
                "started_at": round(self.started_at, 3), "ended_at": round(self.ended_at, 3), **self.extra}


def vary_grid(vary: Sequence[str]) -> list[list[str]]:
    """``["a.b=1,2", "c=x,y"]`` -> the 4 override lists of their cross product (``[[]]`` for none)."""
    axes = []
    for item in vary:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--vary {item!r}: expected KEY=V1,V2,...")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)]


def expand_jobs(configs: Sequence[str], seeds: Sequence[int], out: Path, overrides: Sequence[str] = (),
                folds: Sequence[int] | None = None, vary: Sequence[str] = ()) -> list[Job]:
    """Every (seed[, fold]) x varied-overrides x config job, in that nesting order. Each config is
    loaded here with the job's overrides, so a bad config, key or value stops the sweep before any
    run starts, and two jobs that would share a run folder are refused."""
    if folds is not None and len(folds) != len(seeds):
        raise ConfigError(f"--folds: {len(folds)} folds for {len(seeds)} seeds (one fold per seed)")
    jobs, seen = [], {}
    for seed, fold in zip(seeds, folds if folds is not None else [None] * len(seeds)):
        for varied in vary_grid(vary):
            for config in configs:
                extra = ([f"data.fold={fold}"] if fold is not None else []) + varied + list(overrides)
                exp = load_config(config, [f"train.seed={seed}", f"run.out_dir={out}", *extra])
                run_dir = out / RunDir.of(exp).name
                if run_dir in seen:
                    raise ConfigError(f"{config} and {seen[run_dir]}: two jobs would train the same run "
                                      f"({run_dir.name}); give them different seeds or overrides")
                seen[run_dir] = config
                label = "_".join([Path(config).stem, f"s{seed}", *([f"f{fold}"] if fold is not None else []),
                                  *(v.replace("=", "-") for v in varied)])
                jobs.append(Job(config, seed, fold, extra, run_dir, exp.train.iterations, label, exp.train.device))
    return jobs


def finished_runs(out: Path) -> set[str]:
    """Names of the run folders ``OUT/sweep.jsonl`` records as finished (exit code 0).

    Keyed by the run folder, the experiment's identity (config content, seed, overrides), not by
    how the command spelled its config path: a sweep started with ``configs/x.yaml`` and resumed
    with ``/abs/configs/x.yaml`` (or through a symlink) must not train a finished run again."""
    path = out / "sweep.jsonl"
    if not path.is_file():
        return set()
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {Path(r["run_dir"]).name for r in rows if r["rc"] == 0}


# --------------------------------------------------------------------------- concurrency


def uses_cuda(jobs: Sequence[Job]) -> bool:
    """Whether any job will train on a GPU: ``train.device`` cuda*, or auto with a GPU present."""
    devices = {j.device for j in jobs}
    return any(d.startswith("cuda") for d in devices) or ("auto" in devices and gpu_free_mib() is not None)


def _nvidia_smi(*query: str) -> list[list[str]] | None:
    try:
        out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]


def mib(text: str) -> float | None:
    """A number ``nvidia-smi`` printed, or None for what it prints instead (``[N/A]``,
    ``[Not Supported]``, e.g. on MIG slices and in some containers)."""
    try:
        return float(text)
    except ValueError:
        return None


def gpu_free_mib() -> float | None:
    """Free memory of GPU 0 in MiB, or None without an NVIDIA GPU or a reading (no CUDA context
    is made here)."""
    rows = _nvidia_smi("--query-gpu=memory.free")
    return mib(rows[0][0]) if rows else None


def process_gpu_mib(pid: int) -> float | None:
    """GPU memory held by process ``pid`` in MiB, or None when ``nvidia-smi`` does not list it."""
    rows = _nvidia_smi("--query-compute-apps=pid,used_memory") or []
    used = [m for r in rows if len(r) == 2 and r[0] == str(pid) and (m := mib(r[1])) is not None]
    return sum(used) if used else None


def fill_count(run_mib: float, free_mib: float, cpus: int, remaining: int) -> int:
    """How many more runs to start beside one measured run of ``run_mib`` (MiB) with ``free_mib``
    free: as many as fit with the margin, at most ``AUTO_CUDA_MAX`` and one per CPU core in all,
    at most ``remaining``."""
    fit = int(free_mib // (run_mib * MEMORY_MARGIN)) if run_mib > 0 else remaining
    return max(0, min(fit, cpus - 1, AUTO_CUDA_MAX - 1, remaining))


# --------------------------------------------------------------------------- running


def child_env(jobs_at_once: int) -> dict[str, str]:
    """Each run gets its share of the cores (unless OMP_NUM_THREADS is set), so N runs at once do
    not oversubscribe the machine: on CUDA too, where each process would otherwise start one
    thread per core for its CPU work (data, metrics)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if jobs_at_once > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs_at_once))
    return env


def _has_checkpoint(run_dir: Path) -> bool:
    """Whether ``--resume`` has something to continue; a damaged pointer is the training's to report."""
    try:
        return RunDir(run_dir).has_checkpoint()
    except CheckpointError:
        return True


def start_train(job: Job, out: Path, resume: bool, env: dict[str, str]) -> None:
    job.log_path = out / "logs" / f"{job.name}.log"
    resume = resume and _has_checkpoint(job.run_dir)  # a job that never saved one starts afresh
    cmd = [sys.executable, "-m", "vasseg", "train", "--quiet", *(["--resume"] if resume else []),
           "--config", job.config, f"train.seed={job.seed}", f"run.out_dir={out}", *job.overrides]
    with job.log_path.open("a" if resume else "w") as fh:
        job.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, env=env, start_new_session=True)
    job.phase, job.started, job.started_at = "train", time.perf_counter(), time.time()


def start_export(job: Job, dtype: str, env: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "vasseg", "export", "--quiet", str(job.run_dir), str(RunDir(job.run_dir).model_file),
           "--dtype", dtype, "--overwrite"]
    with job.log_path.open("a") as fh:
        job.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh, env=env, start_new_session=True)
    job.phase = "export"


def last_step(run_dir: Path) -> int:
    """The last step a run logged to ``scalars.jsonl`` (0 before its first), read from the end."""
    path = RunDir(run_dir).scalars
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 4096))
            lines = fh.read().splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"]) + 1
        except (ValueError, KeyError, TypeError):
            continue
    return 0


def terminate(jobs: Sequence[Job]) -> None:
    """SIGTERM every running job (each saves a checkpoint and exits 130), then wait for them."""
    running = [j for j in jobs if j.proc is not None and j.proc.poll() is None]
    for job in running:
        os.killpg(job.proc.pid, signal.SIGTERM)
    for job in running:
        job.proc.wait()


def probe_memory(job: Job, free_before: float | None) -> float | None:
    """GPU memory (MiB) of a running job once it has logged a step (None while unknown): what
    ``nvidia-smi`` lists for its process, else the drop in free memory since it started (a
    container often hides other processes' usage)."""
    if job.proc is None or last_step(job.run_dir) == 0:
        return None
    used = process_gpu_mib(job.proc.pid)
    if used is None and free_before is not None:
        free_now = gpu_free_mib()
        used = free_before - free_now if free_now is not None else None
    return used if used and used > 0 else None


@dataclass
class Sweep:
    """Runs ``jobs`` with at most ``jobs_at_once`` processes (None: decide by measuring on CUDA)."""

    jobs: list[Job]
    out: Path
    jobs_at_once: int | None
    on_cpu: bool
    export: str = "fp16"  # fp16 | bf16 | fp32 | none
    resume: bool = False
    poll_s: float = 1.0
    on_progress: Callable[[int, int, str], None] | None = None  # (steps done, steps total, status)
    on_finish: Callable[[Job], None] | None = None
    free_before: float | None = None

    def run(self) -> list[Job]:
        """Run every job; returns them with exit codes and wall times. SIGTERM/Ctrl-C stops the
        running jobs with a checkpoint each (``resume`` continues them) and re-raises."""
        (self.out / "logs").mkdir(parents=True, exist_ok=True)
        limit = self.jobs_at_once or 1
        env = child_env(limit)
        if self.jobs_at_once is None and not self.on_cpu:
            self.free_before = gpu_free_mib()
        try:
            with (self.out / "sweep.jsonl").open("a") as records:
                while not all(j.phase == "done" for j in self.jobs):
                    limit, env = self._maybe_fill(limit, env)
                    self._start(limit, env)
                    self._advance(records)
                    self._report()
                    time.sleep(self.poll_s)
        except BaseException:
            terminate(self.jobs)
            raise
        return self.jobs

    def _maybe_fill(self, limit: int, env: dict[str, str]) -> tuple[int, dict[str, str]]:
        if self.jobs_at_once is not None:
            return limit, env
        running = [j for j in self.jobs if j.phase == "train"]
        if len(running) != 1 or any(j.phase == "done" for j in self.jobs):
            return limit, env
        used = probe_memory(running[0], self.free_before)
        if used is None:
            return limit, env
        free = gpu_free_mib() or 0.0
        waiting = sum(j.phase == "waiting" for j in self.jobs)
        limit = 1 + fill_count(used, free, os.cpu_count() or 1, waiting)
        self.jobs_at_once = limit
        log.warning("one run holds %.0f MiB of GPU memory, %.0f MiB free: %d runs at once (at most %d)",
                    used, free, limit, AUTO_CUDA_MAX)
        return limit, child_env(limit)

    def _start(self, limit: int, env: dict[str, str]) -> None:
        active = sum(j.phase in ("train", "export") for j in self.jobs)
        for job in [j for j in self.jobs if j.phase == "waiting"][: max(0, limit - active)]:
            start_train(job, self.out, self.resume, env)

    def _advance(self, records) -> None:  # noqa: ANN001 - an open text file
        for job in self.jobs:
            if job.phase not in ("train", "export") or job.proc.poll() is None:
                continue
            rc = job.proc.returncode
            if job.phase == "train":
                job.wall_s, job.rc, job.ended_at = time.perf_counter() - job.started, rc, time.time()
                if rc == 0 and self.export != "none":
                    start_export(job, self.export, child_env(1))
                    continue
            elif rc == 0:
                job.extra["weights"] = str(RunDir(job.run_dir).model_file)
            else:  # the training stands; `vasseg export RUN` can be rerun by hand
                log.warning("%s: exporting the weights failed (exit %d, see %s)", job.name, rc, job.log_path)
            job.phase = "done"
            records.write(json.dumps(job.record()) + "\n")
            records.flush()
            if self.on_finish:
                self.on_finish(job)

    def _report(self) -> None:
        if self.on_progress is None:
            return
        done = sum(j.iterations if j.phase in ("done", "export") else last_step(j.run_dir) if j.phase == "train"
                   else 0 for j in self.jobs)
        total = sum(j.iterations for j in self.jobs)
        counts = {p: sum(j.phase == p for j in self.jobs) for p in ("train", "done")}
        failed = sum(j.phase == "done" and j.rc != 0 for j in self.jobs)
        self.on_progress(done, total, f"running {counts['train']}, finished {counts['done']}/{len(self.jobs)}"
                                      + (f", failed {failed}" if failed else ""))
