"""Each bf16 training run against its fp32 twin: paired per-case Dice and finite loss terms (issue 28, item 3).

    python benchmarks/bf16_compare.py FP32_OUT BF16_OUT [--evals val_last]

Runs are read from their ``config.yaml`` and paired by (method, labeled, seed, fold), and sided by
the precision they trained in: the ``training precision:`` line of ``train.log`` where the engine
wrote one (``train.amp=auto`` resolves per host: bf16 on a bf16 CPU), else ``train.amp`` (runs from
before that line, when ``auto`` meant fp32 on a CPU: only ``bf16`` is bf16). Per method, over the paired runs: the mean Dice of each side and the bf16 -
fp32 difference per case (a case's value is its mean over the seeds that validated it, as the
report pairs them) with its 95 % bootstrap interval and the paired Wilcoxon p
(:mod:`vasseg.report.stats`, via ``intensity_ab.case_dice``). Per run: that every logged loss term
and gradient norm in ``scalars.jsonl`` (or ``.gz``) is finite and the last logged step is
``train.iterations - 1``. Exit status 1 when a run has a non-finite term, stopped early, or lacks
its twin or its evaluation; 2 on a bad argument.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from intensity_ab import case_dice  # noqa: E402  (a sibling script, not a package)

from vasseg.report.stats import bootstrap_ci, wilcoxon_p  # noqa: E402

Key = tuple[str, int, int, int]  # method, labeled, seed, fold


def trained_precision(run: Path, amp: str) -> str:
    """``bf16`` or ``fp32``: the last ``training precision:`` the run's train.log states, else from ``amp``."""
    log = run / "train.log"
    said = re.findall(r"training precision: (\w+)", log.read_text(errors="replace")) if log.is_file() else []
    if said:
        return "bf16" if said[-1] == "bf16" else "fp32"
    return "bf16" if amp == "bf16" else "fp32"


def run_key(run: Path) -> tuple[Key, str, int]:
    """(method, labeled, seed, fold), the precision trained in and ``train.iterations`` of a run folder."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    key = (cfg["method"]["name"], int(cfg["data"]["labeled"]), int(cfg["train"]["seed"]), int(cfg["data"]["fold"]))
    return key, trained_precision(run, str(cfg["train"]["amp"])), int(cfg["train"]["iterations"])


def find_runs(out: Path, bf16: bool) -> dict[Key, tuple[Path, int]]:
    """The run folders directly under ``out`` on one side (bf16 or not), by key."""
    runs: dict[Key, tuple[Path, int]] = {}
    for cfg in sorted(out.glob("*/config.yaml")):
        key, precision, iterations = run_key(cfg.parent)
        if (precision == "bf16") == bf16:
            if key in runs:
                raise SystemExit(f"{out}: two {'bf16' if bf16 else 'fp32'} runs of {key}: "
                                 f"{runs[key][0].name}, {cfg.parent.name}")
            runs[key] = (cfg.parent, iterations)
    return runs


def scalar_rows(run: Path) -> list[dict]:
    """The rows of ``scalars.jsonl`` or ``scalars.jsonl.gz`` (json reads NaN and Infinity)."""
    plain, packed = run / "scalars.jsonl", run / "scalars.jsonl.gz"
    if plain.is_file():
        text = plain.read_text()
    elif packed.is_file():
        text = gzip.decompress(packed.read_bytes()).decode()
    else:
        raise FileNotFoundError(f"{run}: no scalars.jsonl(.gz)")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def training_problems(run: Path, iterations: int) -> list[str]:
    """Non-finite loss terms / gradient norms, and an early stop, of one run (empty: all well)."""
    try:
        rows = scalar_rows(run)
    except FileNotFoundError as exc:
        return [str(exc)]
    problems: dict[str, list[int]] = defaultdict(list)
    for row in rows:
        for name, value in row.items():
            if (name.startswith("loss") or name == "grad_norm") and not math.isfinite(float(value)):
                problems[name].append(int(row.get("step", -1)))
    out = [f"{run.name}: {name} non-finite at {len(steps)} steps (first {steps[0]})" for name, steps in problems.items()]
    last = max((int(r["step"]) for r in rows if "step" in r), default=-1)
    if last != iterations - 1:
        out.append(f"{run.name}: last logged step {last}, expected {iterations - 1}")
    return out


def compare_method(pairs: list[tuple[Path, Path]], evals: list[str]) -> str:
    """One table row: paired per-case Dice of the bf16 runs against their fp32 twins."""
    fp32, bf16 = case_dice([a for a, _ in pairs], evals), case_dice([b for _, b in pairs], evals)
    ids = sorted(set(fp32) & set(bf16))
    a, b = np.array([fp32[i] for i in ids]), np.array([bf16[i] for i in ids])
    p, reason = wilcoxon_p(b, a)
    low, high = bootstrap_ci(b - a)
    p_text = f"{p:.2g}" if not math.isnan(p) else f"n/a ({reason})"
    return (f"{len(pairs)} | {len(ids)} | {100 * a.mean():.2f} | {100 * b.mean():.2f} | "
            f"{100 * (b - a).mean():+.2f} [{100 * low:+.2f}, {100 * high:+.2f}] | {p_text}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fp32_out", type=Path, help="the protocol's output folder (fp32 runs)")
    ap.add_argument("bf16_out", type=Path, help="the bf16 runs' output folder")
    ap.add_argument("--evals", nargs="+", default=["val_last"], help="evaluation folders to pool")
    args = ap.parse_args(argv)
    for out in (args.fp32_out, args.bf16_out):
        if not out.is_dir():
            ap.error(f"{out}: no such folder")
    fp32, bf16 = find_runs(args.fp32_out, bf16=False), find_runs(args.bf16_out, bf16=True)
    if not bf16:
        ap.error(f"{args.bf16_out}: no run trained in bf16")
    problems = [f"{key}: no fp32 twin in {args.fp32_out}" for key in bf16 if key not in fp32]
    by_method: dict[str, list[tuple[Path, Path]]] = defaultdict(list)
    for key in sorted(k for k in bf16 if k in fp32):
        (a, a_iter), (b, b_iter) = fp32[key], bf16[key]
        problems += training_problems(a, a_iter) + training_problems(b, b_iter)
        missing = [r.name for r in (a, b) if not any((r / "eval" / e / "cases.csv").is_file() for e in args.evals)]
        problems += [f"{name}: no eval/<{'|'.join(args.evals)}>/cases.csv" for name in missing]
        if not missing:
            by_method[f"{key[0]} ({key[1]} labeled)"].append((a, b))
    print("| method | paired runs | cases | fp32 Dice % | bf16 Dice % | bf16 - fp32: mean pp [95 % CI] | Wilcoxon p |")
    print("|---|---|---|---|---|---|---|")
    for method, pairs in by_method.items():
        print(f"| {method} | {compare_method(pairs, args.evals)} |")
    print("\nloss terms: " + ("all finite, every run finished" if not problems else "PROBLEMS"))
    for line in problems:
        print(f"  {line}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
