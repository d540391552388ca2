"""Train (and validate) many configs x seeds, several processes at a time, and record wall times.

    python benchmarks/sweep.py --configs configs/la_cpu/*_8.yaml --seeds 1337 1338 --parallel 6 \\
        --out runs/sweep -- data.root=/data/LA train.device=cuda

Every run is ``vasseg train --config C train.seed=S run.out_dir=OUT <overrides>``; with ``--folds``
(one per seed) seed i also gets ``data.fold=F_i`` (k-fold protocols: configs/la_cv/). Training ends
with the validation-split evaluation (``eval/val_last``) when the config has a validation split.
One JSON line per run goes to ``OUT/sweep.jsonl`` (config, seed, run folder, exit code, wall s),
each run's stdout/stderr to ``OUT/logs/``. ``--resume`` skips the jobs that ``sweep.jsonl`` records
as finished and continues the others from their latest checkpoint (a sweep cut by the end of a
session goes on where it stopped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def run_one(config: str, seed: int, out: Path, overrides: list[str], fold: int | None = None,
            resume: bool = False) -> dict:
    name = f"{Path(config).stem}_s{seed}" + ("" if fold is None else f"_f{fold}")
    if fold is not None:
        overrides = [f"data.fold={fold}", *overrides]
    log_path = out / "logs" / f"{name}.log"
    cmd = [sys.executable, "-m", "vasseg", "train", "--quiet", *(["--resume"] if resume else []), "--config",
           config, f"train.seed={seed}", f"run.out_dir={out}", *overrides]
    t0 = time.perf_counter()
    with log_path.open("a" if resume else "w") as log:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log, text=True,
                              env=dict(os.environ, PYTHONUNBUFFERED="1"))
    wall = time.perf_counter() - t0
    run_dir = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    return {"config": config, "seed": seed, "fold": fold, "run_dir": run_dir, "rc": proc.returncode, "wall_s": round(wall, 1),
            "overrides": overrides}


def finished(out: Path) -> set[tuple[str, int, int | None, tuple[str, ...]]]:
    """(config, seed, fold, overrides) of the jobs ``OUT/sweep.jsonl`` records with exit code 0."""
    path = out / "sweep.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    done = set()
    for r in rows:
        if r["rc"] == 0:
            extra = [o for o in r["overrides"] if not o.startswith("data.fold=")]
            done.add((r["config"], r["seed"], r.get("fold"), tuple(extra)))
    return done


def main() -> None:
    argv = sys.argv[1:]
    overrides = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", required=True)
    p.add_argument("--seeds", nargs="+", type=int, default=[1337])
    p.add_argument("--folds", nargs="+", type=int, default=None,
                   help="data.fold for each seed, in order (as many as --seeds)")
    p.add_argument("--parallel", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true",
                   help="skip jobs sweep.jsonl records as finished; resume the others from their checkpoints")
    args = p.parse_args(argv)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    if args.folds is not None and len(args.folds) != len(args.seeds):
        p.error(f"--folds: {len(args.folds)} folds for {len(args.seeds)} seeds")
    folds = args.folds or [None] * len(args.seeds)
    jobs = [(c, s, f) for s, f in zip(args.seeds, folds) for c in args.configs]
    if args.resume:
        done = finished(args.out)
        jobs = [j for j in jobs if (j[0], j[1], j[2], tuple(overrides)) not in done]
    with ThreadPoolExecutor(args.parallel) as pool, (args.out / "sweep.jsonl").open("a") as fh:
        for result in pool.map(lambda job: run_one(job[0], job[1], args.out, overrides, job[2], args.resume), jobs):
            fh.write(json.dumps(result) + "\n")
            fh.flush()
            status = "ok" if result["rc"] == 0 else f"FAILED rc={result['rc']}"
            fold = "" if result["fold"] is None else f" fold {result['fold']}"
            print(f"{Path(result['config']).stem:24s} seed {result['seed']}{fold}: {status} "
                  f"{result['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
