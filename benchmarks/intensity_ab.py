"""Paired per-case comparison of two runs (or run sets) that differ in ``data.intensity`` or anything else.

    python benchmarks/intensity_ab.py --root /path/to/LA --a RUN_A [RUN_A2 ...] --b RUN_B [...] \\
        [--evals val_last fold1_last fold2_last] [--dark 8]

Reads ``RUN/eval/<name>/cases.csv`` of every run (several evaluation folders are pooled, so a
supervised model scored on every non-labeled id compares over all of them); a side given several
runs (seeds, folds) scores a case by its mean over the runs that evaluated it. Pairs the cases by
id and prints: mean Dice of each, the paired Wilcoxon p, the mean difference (b - a) with its 95 %
bootstrap interval, the empty predictions of each, and the ``--dark`` cases whose stored image has
the lowest mean (the LA release's darkest, lowest-contrast crops) case by case.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

import numpy as np

from vasseg.data.la import case_path, read_h5_case
from vasseg.report.stats import bootstrap_ci, wilcoxon_p


def case_dice(runs: list[Path], evals: list[str]) -> dict[str, float]:
    """Foreground-mean Dice per case over the given evaluation folders of ``runs`` (mean over runs)."""
    out: dict[str, list[float]] = {}
    for run in runs:
        found = [run / "eval" / name / "cases.csv" for name in evals if (run / "eval" / name / "cases.csv").is_file()]
        if not found:
            raise SystemExit(f"{run}: no eval/<{'|'.join(evals)}>/cases.csv")
        for path in found:
            for row in csv.DictReader(path.open()):
                out.setdefault(row["case"], []).append(float(row["dice"]))
    return {case: float(np.mean(v)) for case, v in out.items()}


def intensity_stats(root: Path, case: str) -> tuple[float, float]:
    image, _ = read_h5_case(case_path(root, case))
    return float(image.mean()), float(image.std())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="the LA root, for the image statistics")
    ap.add_argument("--a", type=Path, nargs="+", required=True, help="first run folder(s) (e.g. data.intensity=file)")
    ap.add_argument("--b", type=Path, nargs="+", required=True, help="second run folder(s) (e.g. data.intensity=zscore)")
    ap.add_argument("--evals", nargs="+", default=["val_last"], help="evaluation folders to pool")
    ap.add_argument("--dark", type=int, default=8, help="how many of the darkest cases to list")
    args = ap.parse_args()
    a, b = case_dice(args.a, args.evals), case_dice(args.b, args.evals)
    ids = sorted(set(a) & set(b))
    if not ids:
        raise SystemExit(f"no common cases between A and B in {', '.join(args.evals)}")
    va, vb = np.array([a[i] for i in ids]), np.array([b[i] for i in ids])
    p, reason = wilcoxon_p(vb, va)
    low, high = bootstrap_ci(vb - va)
    names = [", ".join(r.name for r in side) for side in (args.a, args.b)]
    print(f"{len(ids)} paired cases; A = {names[0]}, B = {names[1]}\n")
    print("| run | mean Dice % | median Dice % | cases < 10 % Dice | empty (Dice 0) |")
    print("|---|---|---|---|---|")
    for name, v in (("A", va), ("B", vb)):
        print(f"| {name} | {v.mean() * 100:.2f} | {np.median(v) * 100:.2f} | {int((v < 0.1).sum())} | "
              f"{int((v == 0).sum())} |")
    p_text = f"{p:.2g}" if not math.isnan(p) else f"n/a ({reason})"
    print(f"\nB - A: mean {np.mean(vb - va) * 100:+.2f} pp [95% CI {low * 100:+.2f}, {high * 100:+.2f}], "
          f"Wilcoxon p = {p_text}\n")
    stats = {i: intensity_stats(args.root, i) for i in ids}
    dark = sorted(ids, key=lambda i: stats[i][0])[: args.dark]
    print("| case | image mean | image std | Dice A % | Dice B % |")
    print("|---|---|---|---|---|")
    for i in dark:
        print(f"| {i} | {stats[i][0]:.2f} | {stats[i][1]:.2f} | {a[i] * 100:.1f} | {b[i] * 100:.1f} |")
    rest = [i for i in ids if i not in dark]
    print(f"| the other {len(rest)} | | | {np.mean([a[i] for i in rest]) * 100:.1f} | "
          f"{np.mean([b[i] for i in rest]) * 100:.1f} |")


if __name__ == "__main__":
    main()
