"""``vasseg sweep``: configs x seeds x overrides as concurrent trainings, with one progress bar
and a summary table (``OUT/summary.md``). See :mod:`vasseg.sweep.runner`.

    vasseg sweep --configs configs/la_cpu/{supervised,mean_teacher,vas}_8.yaml --seeds 1337 1338 \\
        --out runs/sweep -- data.root=/data/LA

Only ``argparse`` is imported at module level (the CLI builds its parser from here).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``sweep`` subcommand's flags."""
    parser.add_argument("--configs", nargs="+", required=True, help="experiment YAMLs")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1337], help="train.seed values (default 1337)")
    parser.add_argument("--folds", nargs="+", type=int, default=None,
                        help="data.fold for each seed, in order (as many as --seeds; k-fold configs)")
    parser.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                        help="an override with several values; repeated --vary flags form a grid")
    parser.add_argument("--jobs", default="auto",
                        help="runs at once: a number, or auto (default): 1 on the CPU; on a GPU as many "
                             "as its free memory holds, measured on the first run")
    parser.add_argument("--out", type=Path, required=True, help="parent folder of the run folders")
    parser.add_argument("--export", default="fp16", choices=("fp16", "bf16", "fp32", "none"),
                        help="dtype of each finished run's portable weights file (default fp16)")
    parser.add_argument("--resume", action="store_true",
                        help="skip the jobs OUT/sweep.jsonl records as finished; resume the others")
    parser.add_argument("overrides", nargs="*", help="dotted overrides for every run (after --)")


def parse_jobs(text: str) -> int | None:
    """``auto`` -> None, else a positive integer."""
    from vasseg.config import ConfigError

    if text == "auto":
        return None
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"--jobs {text!r}: expected auto or a positive integer")
    return int(text)


def val_dice(run_dir: Path) -> float | None:
    """Mean validation Dice (%) of ``run_dir/eval/val_last``, when the run evaluated one."""
    from vasseg.rundir import VAL_LAST, RunDir

    try:
        summary = json.loads((RunDir(run_dir).eval_dir(VAL_LAST) / "summary.json").read_text())
        return 100.0 * summary["mean"]["dice"]["mean"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def summary_table(jobs: list, wall_s: float, at_once: int) -> str:
    """Markdown: one row per job (exit code, wall time, validation Dice), then the throughput."""
    rows = ["| run | seed | fold | exit | wall (s) | val Dice % | run folder |", "|---|---|---|---|---|---|---|"]
    for job in jobs:
        dice = val_dice(job.run_dir) if job.rc == 0 else None
        rows.append(f"| {job.name} | {job.seed} | {'' if job.fold is None else job.fold} | {job.rc} | "
                    f"{job.wall_s:.0f} | {'' if dice is None else f'{dice:.2f}'} | {job.run_dir} |")
    ok = sum(j.rc == 0 for j in jobs)
    serial = sum(j.wall_s for j in jobs)
    rate = 3600.0 * ok / wall_s if wall_s > 0 else 0.0
    rows += ["", f"{ok}/{len(jobs)} runs finished in {wall_s:.0f} s with {at_once} at once: {rate:.2f} runs/hour "
                 f"(the runs' own wall times add up to {serial:.0f} s)."]
    return "\n".join(rows) + "\n"


def run(args: argparse.Namespace) -> int:
    """Run the sweep; prints the summary table. Exit 1 when any run failed."""
    import logging
    import sys
    import time

    from tqdm import tqdm

    from vasseg.atomic import atomic_write_bytes
    from vasseg.sweep.runner import Sweep, expand_jobs, finished_runs, uses_cuda

    log = logging.getLogger("vasseg.sweep")
    out = args.out.expanduser().resolve()
    jobs = expand_jobs(args.configs, args.seeds, out, args.overrides, args.folds, args.vary)
    if args.resume:
        done = finished_runs(out)
        jobs = [j for j in jobs if j.run_dir.name not in done]
    if not jobs:
        log.info("nothing to run: every job is finished in %s", out / "sweep.jsonl")
        return 0
    on_cpu = not uses_cuda(jobs)
    at_once = parse_jobs(args.jobs)
    if at_once is None and on_cpu:
        at_once = 1  # 2 at once on 2 cores: 1.11x runs/hour for 2x the memory (RESULTS.md §9)
    bar = tqdm(total=sum(j.iterations for j in jobs), desc="sweep", unit="step", disable=args.quiet, smoothing=0)

    def progress(done: int, total: int, status: str) -> None:
        bar.n = done
        bar.set_postfix_str(status, refresh=True)

    def finish(job) -> None:  # noqa: ANN001 - a vasseg.sweep.runner.Job
        status = "ok" if job.rc == 0 else f"FAILED (exit {job.rc}, log {job.log_path})"
        if not args.quiet:
            tqdm.write(f"{job.name}: {status} {job.wall_s:.0f} s", file=sys.stderr)

    t0 = time.perf_counter()
    sweep = Sweep(jobs, out, at_once, on_cpu, args.export, args.resume, on_progress=progress, on_finish=finish)
    try:
        sweep.run()
    finally:
        bar.close()
    table = summary_table(jobs, time.perf_counter() - t0, sweep.jobs_at_once or 1)
    atomic_write_bytes(out / "summary.md", lambda fh: fh.write(table.encode()))
    print(table, end="")
    return 0 if all(j.rc == 0 for j in jobs) else 1
