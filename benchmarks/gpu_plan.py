"""What one device call carries and returns, checked here before any device time is spent.

The lent GPU machine (device tool) takes one command of <= 2,000 characters and <= 10 minutes; the
working tree plus <= 8 carried ignored paths travel, <= 64 MiB in all; at most 8 files of <= 16 MiB
(64 MiB together) come back from $OUT. This script sizes the LA data to that (the chunk size is
what the actual tree leaves free) and prints the plan of one window:

    python benchmarks/gpu_plan.py pack /path/to/LA          # -> .lapack/, labeled + val cases first
    python benchmarks/gpu_plan.py plan [--weights] [--budget-s 500] ...   # carry / command / returns

`plan` prints `carry PATH MiB`, `command N chars`, `returns PATH MiB` and the runs the budget
holds with the prior step times below (the window replaces them by its own smoke-test timings).
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 2**20

# The device tool's limits (/work/.library/device/README.md, 2026-12).
CARRY_MIB = 64.0  # working tree + carried paths, one call
CARRY_PATHS = 8
COMMAND_CHARS = 2000
RETURN_FILES = 8
RETURN_FILE_MIB = 16.0
RETURN_TOTAL_MIB = 64.0
PART_MIB = 15.0  # weights travel back in parts below the per-file limit
SLACK_MIB = 0.5  # kept free for what a session adds to the tree before its call (notes, logs)

# Per-step time of one run alone on the H100, bf16 + channels-last, batch 2 + 2 at 112x112x80
# (benchmarks/RESULTS.md §1, 2026-11-26): only the plan's prior; the window measures its own.
PRIOR_MS = {"supervised": 22.4, "mean_teacher": 32.0, "vas": 66.4, "uamt": 71.1, "sassnet": 47.0,
            "dtc": 32.4, "mcnet": 60.0}
PRIOR_OVERHEAD_S = 60.0  # start-up, data on the GPU, 16 validation cases (RESULTS §2: 23-40 s)


def tree_files(repo: Path = REPO) -> list[Path]:
    """What a device call sends besides its carried paths: tracked and untracked, not ignored."""
    out = subprocess.run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"], cwd=repo,
                         capture_output=True, check=True).stdout
    return [repo / n for n in dict.fromkeys(out.decode().split("\0")) if n]


def tree_mib(repo: Path = REPO) -> float:
    return sum(p.stat().st_size for p in tree_files(repo) if p.is_file()) / MIB


def chunk_mib(tree: float, other_carry: float = 0.0) -> float:
    """The largest data chunk that travels beside a tree of ``tree`` MiB in one call."""
    room = CARRY_MIB - tree - other_carry - SLACK_MIB
    if room <= 1.0:
        raise SystemExit(f"the tree takes {tree:.2f} MiB: no room for data in a {CARRY_MIB:.0f} MiB call")
    return room


def path_mib(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / MIB


def carry_for_call(packs: list[Path], tree: float) -> tuple[list[tuple[str, float]], list[str]]:
    """The carried paths of one call: each pack's manifest and its chunks in order while they fit
    beside the tree; returns (path, MiB) pairs and the chunks left for another call."""
    carry, left, total = [], [], tree
    for pack in packs:
        manifest = json.loads((pack / "manifest.json").read_text())
        names = [pack / "manifest.json"] + [pack / c for c in manifest["chunks"]]
        for path in names:
            size = path_mib(path)
            if total + size <= CARRY_MIB - SLACK_MIB and len(carry) < CARRY_PATHS and not left:
                carry.append((str(path.relative_to(REPO) if path.is_relative_to(REPO) else path), size))
                total += size
            else:
                left.append(str(path))
    return carry, left


def window_command(window_args: list[str]) -> str:
    return " ".join(["bash benchmarks/gpu_table.sh window", *map(shlex.quote, window_args)])


def scalars_bytes_per_step(repo: Path = REPO) -> float:
    """Gzipped scalars per logged training step, from the committed run folders (largest run)."""
    rates = []
    for log in repo.glob("benchmarks/*_runs/**/scalars.jsonl.gz"):
        steps = sum(1 for line in gzip.decompress(log.read_bytes()).splitlines() if b'"loss"' in line)
        if steps:
            rates.append(log.stat().st_size / steps)
    return max(rates) if rates else 200.0


def weights_mib(config: Path) -> float:
    """Size of a run's fp16 ``model.safetensors`` (parameters x 2 bytes, buffers x 4), MiB."""
    from vasseg.config import load_config
    from vasseg.methods.base import build_vnet

    exp = load_config(config)
    net = build_vnet(exp, exp.data.num_classes)
    params = {n for n, _ in net.named_parameters()}
    sizes = [t.numel() * (2 if n in params else 4) for n, t in net.state_dict().items() if t.is_floating_point()]
    return sum(sizes) / MIB


@dataclass
class Planned:
    name: str
    estimate_s: float


def schedule(estimates: list[Planned], slots: int, budget_s: float) -> tuple[list[Planned], list[Planned]]:
    """Jobs in priority order onto ``slots`` runs at once: each goes to the slot free first and is
    kept when it ends within ``budget_s``; returns (kept, skipped)."""
    free = [0.0] * max(1, slots)
    kept, skipped = [], []
    for job in estimates:
        i = min(range(len(free)), key=free.__getitem__)
        if free[i] + job.estimate_s <= budget_s:
            free[i] += job.estimate_s
            kept.append(job)
        else:
            skipped.append(job)
    return kept, skipped


def returns(n_runs: int, iterations: int, weights: bool, model_mib: float, per_step: float) -> list[tuple[str, float]]:
    """The files one window writes to $OUT with their expected sizes (MiB)."""
    files = [("summary.md", 0.01), ("sweep.jsonl", 0.001 * max(1, n_runs)),
             ("window.tgz", n_runs * (iterations * per_step / MIB + 0.05) + 0.05)]
    if weights and n_runs:
        total = n_runs * model_mib
        parts = math.ceil(total / PART_MIB)
        files += [(f"weights.tar.part{i:02d}", min(PART_MIB, total - i * PART_MIB)) for i in range(parts)]
    return files


def cmd_pack(args: argparse.Namespace) -> int:
    from vasseg.data.pack import pack_la

    tree = tree_mib()
    size = chunk_mib(tree)
    print(f"tree {tree:.2f} MiB: chunks of <= {size:.2f} MiB")
    for chunk in pack_la(args.root, args.out, size, first=args.first, last=args.last):
        print(f"{chunk}: {chunk.stat().st_size / MIB:.2f} MiB")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    tree = tree_mib()
    packs = args.packs or [p for p in sorted(REPO.glob(".lapack*")) if (p / "manifest.json").is_file()]
    carry, left = carry_for_call(packs, tree)
    print(f"tree {tree:.2f} MiB ({len(tree_files())} files)")
    for path, size in carry:
        print(f"carry {path} {size:.2f} MiB")
    for path in left:
        print(f"not carried (no room in this call): {path}")
    total = tree + sum(s for _, s in carry)
    print(f"total {total:.2f} MiB of {CARRY_MIB:.0f} in {len(carry)} carried paths (at most {CARRY_PATHS})")
    window_args = ["--budget-s", str(args.budget_s), "--methods", " ".join(args.methods), "--seeds",
                   " ".join(map(str, args.seeds)), "--setting", str(args.setting), *(["--weights"] if args.weights else [])]
    command = window_command(window_args)
    print(f"command {len(command)} chars: {command}")
    configs = [REPO / "configs" / "la" / f"{m}_{args.setting}.yaml" for m in args.methods]
    from vasseg.config import load_config

    jobs = [Planned(f"{c.stem} s{s}", load_config(c).train.iterations * PRIOR_MS.get(m, 100.0) / 1000 + PRIOR_OVERHEAD_S)
            for s in args.seeds for m, c in zip(args.methods, configs)]
    kept, skipped = schedule(jobs, args.jobs, args.budget_s)
    for job in kept:
        print(f"run {job.name} ~{job.estimate_s:.0f} s (prior: RESULTS §1, alone on an H100)")
    for job in skipped:
        print(f"skip {job.name} ~{job.estimate_s:.0f} s: beyond the {args.budget_s:.0f} s budget")
    iterations = max(load_config(c).train.iterations for c in configs)
    model = weights_mib(configs[0]) if args.weights else 0.0
    for name, size in returns(len(kept), iterations, args.weights, model, scalars_bytes_per_step()):
        print(f"returns {name} {size:.2f} MiB")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="pack LA's training cases in chunks that fit beside the tree")
    p.add_argument("root", type=Path)
    p.add_argument("--out", type=Path, default=REPO / ".lapack")
    p.add_argument("--first", type=int, default=16, help="labeled ids packed first")
    p.add_argument("--last", type=int, default=16, help="validation ids packed next")
    p = sub.add_parser("plan", help="print what one window carries, runs and returns")
    p.add_argument("--methods", nargs="+", default=["mean_teacher", "vas"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1337])
    p.add_argument("--setting", type=int, default=16)
    p.add_argument("--budget-s", type=float, default=500.0)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--weights", action="store_true")
    p.add_argument("--packs", nargs="+", type=Path, default=None, help="packed folders (default ./.lapack*)")
    args = parser.parse_args(argv)
    return cmd_pack(args) if args.cmd == "pack" else cmd_plan(args)


if __name__ == "__main__":
    sys.exit(main())
