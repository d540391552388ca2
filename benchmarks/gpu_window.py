"""One device call does it all: unpack the carried LA chunks, a 20-step smoke test of every
config, a job list sized to the time budget from the smoke test's step times, the runs (2-3 at
once on CUDA, each validated on ``--num-val`` cases), stopped at the deadline, and at most 8 files
of <= 16 MiB under $OUT (summary.md, sweep.jsonl, window.tgz, weights.tar.partNN if asked).

    bash benchmarks/gpu_table.sh window [--budget-s 500] [--weights] [-- dotted overrides]

Every decision (runs at once, budget, skipped runs, the deadline) is logged at WARNING and
written to summary.md. Back home: ``cat weights.tar.part* | tar x`` beside the unpacked
window.tgz gives run folders that ``gpu_table.sh test`` evaluates on the test split.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import gpu_plan

REPO = gpu_plan.REPO
log = logging.getLogger("gpu_window")
PACK_RESERVE_S = 20.0  # left at the deadline for the archive and the weights
AT_ONCE_MAX = 3  # runs at once on one GPU: they time-share it, more only make every one late


class Deadline(Exception):
    """The window's deadline came while runs were still training."""


@dataclass
class Timing:
    """What a smoke run measured: seconds per step, before the first step, after the last."""

    step_s: float
    startup_s: float
    tail_s: float
    gpu_mib: float | None

    def estimate(self, iterations: int, num_val: int, export: bool) -> float:
        """Seconds for a run of ``iterations`` steps validated on ``num_val`` cases (the smoke
        run's tail held one case: scaled by num_val, a generous bound), plus the export."""
        return self.startup_s * (2 if export else 1) + iterations * self.step_s + self.tail_s * max(1, num_val)


@dataclass
class Window:
    args: argparse.Namespace
    t0: float = field(default_factory=time.monotonic)
    stages: dict[str, float] = field(default_factory=dict)
    decisions: list[str] = field(default_factory=list)
    smoke: dict[str, Timing] = field(default_factory=dict)
    jobs: list = field(default_factory=list)
    at_once: int = 1

    def decide(self, message: str, *args: object) -> None:
        text = message % args
        log.warning(text)
        self.decisions.append(text)

    def left_s(self) -> float:
        return self.args.deadline_s - (time.monotonic() - self.t0)


def unpack(window: Window) -> str:
    """Every carried pack into the LA root (chunks unpacked before are skipped); returns the id
    list the runs train from: train.list, or window.list when only part of the cases came."""
    from vasseg.config import load_config
    from vasseg.data.la import TRAIN_DIR, read_id_list
    from vasseg.data.pack import unpack_la
    from vasseg.data.volumes import DataError

    args = window.args
    packs = args.packs or [p for p in sorted(REPO.glob(".lapack*")) if (p / "manifest.json").is_file()]
    for pack in packs:
        unpack_la(pack, args.la, workers=min(8, os.cpu_count() or 1))
    ids = read_id_list(args.la / "train.list")
    present = [i for i in ids if (args.la / TRAIN_DIR / i / "mri_norm2.h5").is_file()]
    if len(present) == len(ids):
        return "train.list"
    labeled = max(load_config(c).data.labeled for c in config_paths(args))
    missing = [i for i in ids[:labeled] + ids[len(ids) - args.num_val:] if i not in present]
    if missing:
        raise DataError(f"{args.la}: labeled or validation cases not carried: {', '.join(missing[:5])}")
    (args.la / "window.list").write_text("\n".join(present) + "\n")
    window.decide("%d of %d training cases carried: runs use window.list (%d unlabeled instead of %d)",
                  len(present), len(ids), len(present) - labeled - args.num_val, len(ids) - labeled - args.num_val)
    return "window.list"


def smoke_dir(args: argparse.Namespace) -> Path:
    """The smoke runs' folder, beside the runs (so that a report of the runs leaves them out)."""
    return args.runs.with_name(args.runs.name + "_smoke")


def config_paths(args: argparse.Namespace) -> list[str]:
    return [str(args.configs / f"{m}_{args.setting}.yaml") for m in args.methods]


def _watch_memory(jobs: list, memory: dict[str, float], stop: threading.Event) -> None:
    """Peak GPU memory of each running job, read every 0.5 s (nvidia-smi takes ~0.1 s a call: in
    a thread of its own, it does not delay the step timing)."""
    from vasseg.sweep.runner import process_gpu_mib

    while not stop.wait(0.5):
        for job in jobs:
            if job.proc.poll() is None and (used := process_gpu_mib(job.proc.pid)) is not None:
                memory[job.name] = max(memory.get(job.name, 0.0), used)


def poll_smoke(jobs: list, steps: int) -> dict[str, Timing]:
    """Follow the smoke runs' logged steps every 20 ms until they exit; the step time is taken
    over the second half of the steps (after the warm-up)."""
    from vasseg.sweep.runner import last_step

    samples: dict[str, list[tuple[float, int]]] = {j.name: [] for j in jobs}
    memory: dict[str, float] = {}
    ended: dict[str, float] = {}
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_memory, args=(jobs, memory, stop), daemon=True)
    watcher.start()
    while len(ended) < len(jobs):
        now = time.perf_counter()
        for job in [j for j in jobs if j.name not in ended]:
            step = last_step(job.run_dir)
            if step and (not samples[job.name] or samples[job.name][-1][1] != step):
                samples[job.name].append((now, step))
            if job.proc.poll() is not None:
                ended[job.name] = now  # a run that logged no step has nothing to time: failed
                job.rc = job.proc.returncode if samples[job.name] else (job.proc.returncode or 1)
        time.sleep(0.02)
    stop.set()
    watcher.join()
    return {j.config: _timing(j, samples[j.name], ended[j.name], memory.get(j.name), steps) for j in jobs if j.rc == 0}


def _timing(job, samples: list[tuple[float, int]], ended: float, gpu_mib: float | None, steps: int) -> Timing:  # noqa: ANN001
    warm = [s for s in samples if s[1] >= steps // 2] or samples
    (t_a, s_a), (t_b, s_b) = warm[0], warm[-1]
    first_t, first_s = samples[0]
    step_s = (t_b - t_a) / (s_b - s_a) if s_b > s_a else (t_b - job.started) / max(1, s_b)
    return Timing(step_s=step_s, startup_s=max(0.0, first_t - job.started - first_s * step_s),
                  tail_s=max(0.0, ended - t_b), gpu_mib=gpu_mib)


def smoke(window: Window, overrides: list[str]) -> bool:
    """``--smoke-steps`` steps of every config at once (as many as will run at once), validated on
    one case; fills ``window.smoke``. False when one failed (its log says why)."""
    from vasseg.sweep.runner import child_env, expand_jobs, start_train

    args = window.args
    out = smoke_dir(args)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    extra = [*overrides, f"train.iterations={args.smoke_steps}", "train.log_every=1", "data.num_val=1"]
    jobs = expand_jobs(config_paths(args), args.seeds[:1], out, extra)
    for start in range(0, len(jobs), args.jobs):
        group = jobs[start: start + args.jobs]
        for job in group:
            start_train(job, out, False, child_env(len(group)))
        window.smoke.update(poll_smoke(group, args.smoke_steps))
    for job in jobs:
        if job.rc != 0:
            tail = job.log_path.read_text().strip().splitlines()[-1:] if job.log_path.is_file() else []
            log.error("smoke test of %s failed (exit %s): %s", job.config, job.rc, " ".join(tail))
    return all(j.rc == 0 for j in jobs)


def choose(window: Window, jobs: list, on_cpu: bool, free_mib: float | None) -> None:
    """Runs at once (memory of the largest config) and the jobs the budget holds."""
    from vasseg.sweep.runner import MEMORY_MARGIN

    args = window.args
    at_once = args.jobs
    peaks = [t.gpu_mib for t in window.smoke.values() if t.gpu_mib]
    if not on_cpu and peaks and free_mib:
        fit = int(free_mib // (max(peaks) * MEMORY_MARGIN))
        at_once = max(1, min(at_once, fit))
        window.decide("largest config holds %.0f MiB of GPU memory, %.0f MiB were free: %d runs at once",
                      max(peaks), free_mib, at_once)
    window.at_once = at_once
    budget = min(args.budget_s, window.left_s() - PACK_RESERVE_S)
    if budget < args.budget_s:
        window.decide("training budget cut to %.0f s by the %.0f s deadline", budget, args.deadline_s)
    planned = [gpu_plan.Planned(j.name, window.smoke[j.config].estimate(j.iterations, args.num_val, args.weights))
               for j in jobs]
    kept, skipped = gpu_plan.schedule(planned, at_once, budget)
    for p in kept:
        window.decide("run %s: ~%.0f s estimated", p.name, p.estimate_s)
    for p in skipped:
        window.decide("skip %s: ~%.0f s estimated, beyond the %.0f s budget at %d at once", p.name,
                      p.estimate_s, budget, at_once)
    names = {p.name for p in kept}
    window.jobs = [j for j in jobs if j.name in names]


def train(window: Window, on_cpu: bool) -> None:
    """The kept jobs as one sweep; at the deadline every running one is stopped (SIGTERM)."""
    from vasseg.sweep.runner import Sweep

    stop_at = time.monotonic() + window.left_s() - PACK_RESERVE_S

    def check(done: int, total: int, status: str) -> None:
        if time.monotonic() > stop_at:
            raise Deadline(status)

    sweep = Sweep(window.jobs, window.args.runs, window.at_once, on_cpu,
                  export="fp16" if window.args.weights else "none", on_progress=check)
    try:
        sweep.run()
    except Deadline as exc:
        window.decide("deadline: stopped the runs still going (%s); they return nothing", exc)


def _excluded(info: tarfile.TarInfo, skip_scalars: bool) -> tarfile.TarInfo | None:
    parts = Path(info.name).parts
    if {"checkpoints", "tb"} & set(parts) or info.name.endswith((".safetensors", ".lock")):
        return None
    if skip_scalars and parts[-1] == "scalars.jsonl":
        return None
    return info


def archive(window: Window, out: Path) -> Path:
    """Run folders, logs, validation CSVs and summaries (no weights, no checkpoints) in one tgz
    below the per-file limit (without the scalars logs if they would break it)."""
    runs = window.args.runs
    path = out / "window.tgz"
    for skip in (False, True):
        with tarfile.open(path, "w:gz") as tar:
            for folder in (runs, smoke_dir(window.args)):
                if folder.is_dir():
                    tar.add(folder, arcname=folder.name, filter=lambda i, s=skip: _excluded(i, s))
        if path.stat().st_size <= gpu_plan.RETURN_FILE_MIB * gpu_plan.MIB:
            return path
        window.decide("window.tgz is %.1f MiB: packed again without scalars.jsonl", path.stat().st_size / gpu_plan.MIB)
    return path


def weights(window: Window, out: Path, room_files: int, room_mib: float) -> list[Path]:
    """The finished runs' model.safetensors in one tar, split into parts of <= 15 MiB, as many runs
    (in priority order) as the files and MiB left to return hold."""
    files = [j.run_dir / "model.safetensors" for j in window.jobs if (j.run_dir / "model.safetensors").is_file()]
    part = gpu_plan.PART_MIB * gpu_plan.MIB
    kept, total = [], 0
    for f in files:
        size = f.stat().st_size + 1024
        if (total + size) / gpu_plan.MIB <= room_mib and -(-(total + size) // part) <= room_files:
            kept.append(f)
            total += size
        else:
            window.decide("weights of %s left out: no room in the files returned", f.parent.name)
    if not kept:
        return []
    bundle = window.args.runs.parent / f"{window.args.runs.name}_weights.tar"
    with tarfile.open(bundle, "w") as tar:
        for f in kept:
            tar.add(f, arcname=f"{window.args.runs.name}/{f.parent.name}/{f.name}")
    parts = []
    with bundle.open("rb") as fh:
        while chunk := fh.read(int(part)):
            parts.append(out / f"weights.tar.part{len(parts):02d}")
            parts[-1].write_bytes(chunk)
    bundle.unlink()
    return parts


def summary(window: Window, returned: list[Path]) -> str:
    from vasseg.sweep.cli import summary_table

    args = window.args
    rows = [f"# GPU window {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}", "",
            f"device: {device_name()}; methods {' '.join(args.methods)} at {args.setting} labeled, seeds "
            f"{' '.join(map(str, args.seeds))}, {args.num_val} validation cases; budget {args.budget_s:.0f} s, "
            f"deadline {args.deadline_s:.0f} s", "", "| stage | wall (s) |", "|---|---|"]
    rows += [f"| {k} | {v:.1f} |" for k, v in window.stages.items()]
    rows += ["", "## Smoke test", "", "| config | ms/step | start-up (s) | tail, 1 val case (s) | GPU MiB |",
             "|---|---|---|---|---|"]
    rows += [f"| {Path(c).stem} | {t.step_s * 1000:.1f} | {t.startup_s:.1f} | {t.tail_s:.1f} | "
             f"{'' if t.gpu_mib is None else f'{t.gpu_mib:.0f}'} |" for c, t in window.smoke.items()]
    rows += ["", "## Decisions", ""] + [f"- {d}" for d in window.decisions]
    if window.jobs:
        rows += ["", "## Runs", "", summary_table(window.jobs, window.stages.get("train", 0.0), window.at_once)]
    rows += ["", "## Returned", ""] + [f"- {p.name}: {p.stat().st_size / gpu_plan.MIB:.2f} MiB" for p in returned]
    return "\n".join(rows) + "\n"


def device_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return out.splitlines()[0] if out else "no NVIDIA GPU (nvidia-smi unavailable)"


def package(window: Window) -> list[Path]:
    """Everything that comes back, under $OUT; checks the device's limits on it."""
    out = window.args.out
    out.mkdir(parents=True, exist_ok=True)
    records = window.args.runs / "sweep.jsonl"
    (out / "sweep.jsonl").write_bytes(records.read_bytes() if records.is_file() else b"")
    (window.args.runs / "summary.md").write_text(summary(window, []))
    returned = [out / "sweep.jsonl", archive(window, out)]
    if window.args.weights:
        used = sum(p.stat().st_size for p in returned) / gpu_plan.MIB + 0.1
        returned += weights(window, out, gpu_plan.RETURN_FILES - 3, gpu_plan.RETURN_TOTAL_MIB - used)
    (out / "summary.md").write_text(summary(window, returned))
    returned.insert(0, out / "summary.md")
    big = [p.name for p in returned if p.stat().st_size > gpu_plan.RETURN_FILE_MIB * gpu_plan.MIB]
    if len(returned) > gpu_plan.RETURN_FILES or big:
        log.error("returns break the device's limits: %d files, too large: %s", len(returned), big)
    return returned


def parse(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--la", type=Path, default=Path(os.environ.get("LA", "/tmp/LA")), help="data root (unpacked here)")
    p.add_argument("--runs", type=Path, default=Path(os.environ.get("RUNS", "/tmp/window")))
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")))
    p.add_argument("--packs", type=Path, nargs="*", default=None, help="packed folders (default ./.lapack*)")
    p.add_argument("--configs", type=Path, default=REPO / "configs" / "la")
    p.add_argument("--methods", type=str.split, default="mean_teacher vas".split(), help='e.g. "mean_teacher vas"')
    p.add_argument("--setting", default="16", help="labeled count of the configs: METHOD_SETTING.yaml")
    p.add_argument("--seeds", type=lambda s: [int(x) for x in s.split()], default=[1337], help='e.g. "1337 1338"')
    p.add_argument("--budget-s", type=float, default=500.0, help="training seconds the job list may take")
    p.add_argument("--deadline-s", type=float, default=570.0, help="wall seconds from start to the last file")
    p.add_argument("--jobs", type=int, default=2, help=f"runs at once (at most {AT_ONCE_MAX})")
    p.add_argument("--num-val", type=int, default=16, help="validation cases of every run (data.num_val)")
    p.add_argument("--smoke-steps", type=int, default=20)
    p.add_argument("--weights", action="store_true", help="return the fp16 weights (parts of <= 15 MiB)")
    args = p.parse_args(argv)
    if not 1 <= args.jobs <= AT_ONCE_MAX:
        p.error(f"--jobs {args.jobs}: 1 to {AT_ONCE_MAX} runs at once on one GPU")
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(argv)
    for folder in (args.runs, smoke_dir(args)):  # one window, one sweep: nothing resumes across windows
        shutil.rmtree(folder, ignore_errors=True)
    args.runs.mkdir(parents=True)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        handlers=[logging.StreamHandler(), logging.FileHandler(args.runs / "window.log")])
    from vasseg.config import ConfigError
    from vasseg.data.volumes import DataError

    window = Window(args)
    rc = 1
    try:
        rc = 0 if run_stages(window, extra) else 1
    except (ConfigError, DataError) as exc:
        log.error("%s", exc)
        rc = 2
    finally:
        t = time.monotonic()
        returned = package(window)
        window.stages["package"] = time.monotonic() - t
        (args.out / "summary.md").write_text(summary(window, returned))
        log.info("returned %s", ", ".join(f"{p.name} {p.stat().st_size / gpu_plan.MIB:.2f} MiB" for p in returned))
    return rc


def run_stages(window: Window, extra: list[str]) -> bool:
    from vasseg.sweep.runner import expand_jobs, gpu_free_mib, uses_cuda

    args = window.args

    def timed(name: str, fn, *a):  # noqa: ANN001, ANN202
        t = time.monotonic()
        try:
            return fn(*a)
        finally:
            window.stages[name] = time.monotonic() - t

    id_list = timed("unpack", unpack, window)
    overrides = [f"data.root={args.la}", f"data.train_list={id_list}", f"data.num_val={args.num_val}", *extra]
    free = gpu_free_mib()
    if not timed("smoke", smoke, window, overrides):
        return False
    jobs = expand_jobs(config_paths(args), args.seeds, args.runs, overrides)
    on_cpu = not uses_cuda(jobs)
    choose(window, jobs, on_cpu, free)
    timed("train", train, window, on_cpu)
    return any(j.rc == 0 for j in window.jobs)


if __name__ == "__main__":
    sys.exit(main())
