"""``vasseg prepare`` speed and memory over many cases: peak RSS must not grow with their number.

    python benchmarks/bench_prepare.py --cases 10 40 --shape 160 160 64 --workers 1 2

Writes synthetic MR-like scans (:mod:`vasseg.data.synthetic_nnunet`) as an nnU-Net v2 dataset (a
quarter labeled, the rest in an ``--unlabeled`` folder) to a temporary folder once, for the largest
case count; then, for each case count and worker setting, runs ``vasseg prepare`` in a fresh
process on the first N cases and reports its wall time, cases per second, and the peak resident
set size (``ru_maxrss``) of the main process and of its largest worker process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_data(root: Path, cases: int, shape: tuple[int, int, int]) -> None:
    from vasseg.data.synthetic_nnunet import write_synthetic_nnunet, write_unlabeled_scans

    labeled = max(2, cases // 4)
    write_synthetic_nnunet(root / "raw", labeled=labeled, shape=shape, seed=0)
    write_unlabeled_scans(root / "unlabeled", cases - labeled, shape=shape)


def subset(root: Path, cases: int) -> Path:
    """Symlinks to the first ``cases`` scans (the same quarter labeled) under ``root/n<cases>``."""
    out = root / f"n{cases}"
    if out.exists():
        return out
    labeled = max(2, cases // 4)
    for folder in ("imagesTr", "labelsTr", "unlabeled"):
        (out / folder).mkdir(parents=True)
    for i in range(labeled):
        for folder, name in (("imagesTr", f"case_{i:03d}_0000.nii.gz"), ("labelsTr", f"case_{i:03d}.nii.gz")):
            (out / folder / name).symlink_to(root / "raw" / folder / name)
    for i in range(cases - labeled):
        (out / "unlabeled" / f"extra_{i:03d}.nii.gz").symlink_to(root / "unlabeled" / f"extra_{i:03d}.nii.gz")
    meta = json.loads((root / "raw" / "dataset.json").read_text()) | {"numTraining": labeled}
    (out / "dataset.json").write_text(json.dumps(meta))
    return out


def child(source: str, out: str, workers: int) -> None:
    """One measurement in its own process: prepare, then print wall time and peak RSS (MiB)."""
    from vasseg.cli import main

    start = time.perf_counter()
    assert main(["prepare", source, "--unlabeled", f"{source}/unlabeled", "--out", out, "--workers", str(workers),
                 "--quiet"]) == 0
    wall = time.perf_counter() - start
    mib = lambda who: resource.getrusage(who).ru_maxrss / 1024  # noqa: E731 - KiB on Linux
    print(json.dumps({"wall_s": wall, "rss_main_mib": mib(resource.RUSAGE_SELF),
                      "rss_worker_mib": mib(resource.RUSAGE_CHILDREN)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[10, 40])
    parser.add_argument("--shape", type=int, nargs=3, default=[160, 160, 64])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_data(root, max(args.cases), tuple(args.shape))
        print(f"| cases | workers | wall (s) | cases/s | peak RSS main (MiB) | peak RSS per worker (MiB) |")
        print("|---|---|---|---|---|---|")
        for cases in args.cases:
            for workers in args.workers:
                source = subset(root, cases)
                out = root / f"out_{cases}_{workers}"
                proc = subprocess.run([sys.executable, __file__, "--child", str(source), str(out), str(workers)],
                                      capture_output=True, text=True, env=dict(os.environ))
                if proc.returncode:
                    raise SystemExit(proc.stderr[-2000:])
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                worker = f"{r['rss_worker_mib']:.0f}" if workers > 1 else "-"
                print(f"| {cases} | {workers} | {r['wall_s']:.1f} | {cases / r['wall_s']:.2f} | "
                      f"{r['rss_main_mib']:.0f} | {worker} |", flush=True)


if __name__ == "__main__":
    main()
