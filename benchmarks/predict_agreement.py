"""Each window mode and precision against the dense fp32 result and the ground truth, on a trained run.

    python benchmarks/predict_agreement.py RUN [--cases N] [--json OUT.json [--resume]] [--budget-s S]
    python benchmarks/predict_agreement.py --summary OUT.json

For every validation case of RUN (its ``split.yaml`` order; the first N with ``--cases``) the class
probabilities are computed on the model grid in every (mode, precision): ``stride`` (the config's
``eval.stride``, the paper protocol), ``stride2x`` (the same windows at twice that stride),
``overlap`` 0.5 and 0.75 with Gaussian weights, ``whole`` volume; fp32 and bf16. Each label map
is scored the way ``vasseg evaluate`` scores it (on the native grid for a down-sampled run) and
compared with the dense fp32 map. Per case the JSON also
keeps the share of the voxels on which a mode's model-grid map differs from the dense one where
the dense fp32 foreground probability lies in [0.25, 0.75] (the model's uncertain boundary).

Long measurements go in chunks: ``--json OUT --resume`` skips the cases OUT already holds and
appends; ``--budget-s S`` starts no new case once the next one would likely end after S seconds;
``--cases N`` then counts the cases measured in this call. ``--summary`` prints the table of a
finished JSON (or ``.json.gz``) without the model (``--per-case PREC``: also per case, and how the
agreement follows the model's accuracy). Printed: per (mode, precision) the agreement with dense
fp32 (median, mean, min, and the mean over the cases the dense model segments, Dice > 0.5), the mean
Dice against the ground truth, its paired difference to dense fp32 with a 95 % bootstrap interval
and the Wilcoxon p (:mod:`vasseg.report.stats`), and whether the mode passes issue 28's bar
(:func:`passes`). Seconds per case are in the JSON only: a shared host's, not a benchmark.
Nothing is written into RUN.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vasseg.inferer.windows import Windows
from vasseg.report.stats import bootstrap_ci, wilcoxon_p

MODES = {"stride": Windows("stride"), "stride2x": None, "overlap": Windows("overlap", overlap=0.5),
         "overlap0.75": Windows("overlap", overlap=0.75), "whole": Windows("whole")}  # stride2x: see windows_of
LABELS = {"stride": "stride (eval.stride)", "stride2x": "stride 2 x eval.stride", "overlap": "overlap 0.5",
          "overlap0.75": "overlap 0.75", "whole": "whole"}
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
DENSE = "stride fp32"
UNCERTAIN = (0.25, 0.75)  # dense fp32 foreground probability counted as the model's uncertain boundary
# Issue 28's bar for predict's default, fixed before the finished runs were measured: the label maps
# agree with dense fp32 at a mean per-case Dice >= AGREEMENT, and the Dice against the ground truth
# is not lower: the paired mean difference (mode - dense) is >= 0, or, when it is negative, the
# Wilcoxon test does not find it (p >= ALPHA) and its 95 % bootstrap interval stays above -MARGIN.
AGREEMENT, ALPHA, MARGIN = 0.98, 0.05, 0.005
SEGMENTED = 0.5  # cases whose dense fp32 Dice vs the ground truth exceeds this: "the model segments them"
GOOD = 0.85  # --per-case: the cases the model segments well


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="a trained run folder (read only)")
    parser.add_argument("--cases", type=int, default=0, help="at most N cases in this call (default: all)")
    parser.add_argument("--checkpoint", default="last")
    parser.add_argument("--json", help="also write the per-case numbers here (after every case)")
    parser.add_argument("--resume", action="store_true", help="skip the cases --json already holds, append")
    parser.add_argument("--budget-s", type=float, default=0.0, help="start no case likely to end after S seconds")
    parser.add_argument("--summary", metavar="JSON", help="print the table of a written JSON and stop")
    parser.add_argument("--per-case", choices=tuple(PRECISIONS), help="--summary: also a per-case table of "
                        "this precision (Dice vs ground truth / agreement with dense fp32)")
    args = parser.parse_args(argv)
    if args.summary:
        raw = Path(args.summary).read_bytes()
        doc = json.loads(gzip.decompress(raw) if args.summary.endswith(".gz") else raw)
        print(table(doc) + ("\n\n" + per_case(doc, args.per_case) if args.per_case else ""))
        return 0
    if not args.run:
        parser.error("give a RUN folder or --summary JSON")
    if args.resume and not args.json:
        parser.error("--resume needs --json")
    doc = measure(args)
    print(table(doc) if doc["cases"] else "no cases measured")
    return 0


def measure(args: argparse.Namespace) -> dict:
    """Score the run's validation cases (see the module docstring); returns the JSON document."""
    from vasseg.data.setup import iter_cases
    from vasseg.engine.hostmem import retain_freed_memory
    from vasseg.inference.evaluate import split_ids
    from vasseg.inference.open import open_model
    from vasseg.inferer.inferer import scoring_grids

    retain_freed_memory()
    device = torch.device("cpu")
    loaded = open_model(args.run, args.checkpoint, device)
    exp, method = loaded.exp, loaded.method
    method.eval()
    method.to(memory_format=torch.channels_last_3d)  # as vasseg.load_model does
    grid = scoring_grids(exp)[0]
    doc = {"run": str(loaded.run_dir), "step": loaded.step, "grid": grid, "stride": list(exp.eval.stride),
           "cases": []}
    out = Path(args.json) if args.json else None
    if args.resume and out is not None and out.is_file():
        doc["cases"] = json.loads(out.read_text())["cases"]
    done = {r["case"] for r in doc["cases"]}
    ids = [i for i in split_ids(exp, loaded.run_dir, "val")[0] if i not in done]
    ids = ids[: args.cases] if args.cases else ids
    start, took = time.perf_counter(), []
    for case_id in ids:
        elapsed = time.perf_counter() - start
        if args.budget_s and took and elapsed + max(took) > args.budget_s:
            print(f"budget: stopping after {len(took)} cases ({elapsed:.0f} s)", file=sys.stderr)
            break
        case = next(iter_cases(exp, [case_id], "val"))
        doc["cases"].append(score_case(method, case, exp, device, grid))
        took.append(time.perf_counter() - start - elapsed)
        print(f"{case.id} ({took[-1]:.0f} s): " + ", ".join(
            f"{k} {v['dice_gt']:.4f}/{v['dice_dense']:.4f}" for k, v in doc["cases"][-1]["modes"].items()),
            file=sys.stderr, flush=True)
        if out is not None:  # after every case: a stopped run keeps what it measured
            out.write_text(json.dumps(doc, indent=1))
    return doc


def score_case(method, case, exp, device: torch.device, grid: str) -> dict:
    """Every (mode, precision) of one case through ``vasseg predict``'s path (the Inferer,
    channels-last): Dice vs ground truth and vs the dense fp32 map, seconds, largest probability
    difference to the same mode in fp32, and where the maps differ from the dense one."""
    from vasseg.inferer.inferer import Inferer
    from vasseg.metrics import dice

    probs, maps, seconds = {}, {}, {}
    for mode in MODES:
        windows = windows_of(mode, exp.eval.stride)
        for name in PRECISIONS:
            inferer = Inferer(exp, device, windows, name, channels_last=True)
            start = time.perf_counter()
            p = inferer.probs(method, case.image)
            seconds[f"{mode} {name}"] = time.perf_counter() - start
            probs[f"{mode} {name}"] = p
            maps[f"{mode} {name}"] = inferer.on_grid(p, case, grid)
    dense, ref, _ = maps[DENSE]
    dense_fg = probs[DENSE][1]
    uncertain = (dense_fg >= UNCERTAIN[0]) & (dense_fg <= UNCERTAIN[1])
    out = {"case": case.id, "modes": {}}
    for key, (pred, _, _) in maps.items():
        mode = key.split()[0]
        differs = probs[key].argmax(0) != probs[DENSE].argmax(0)
        n_diff = int(differs.sum())
        out["modes"][key] = {
            "dice_gt": float(dice(pred == 1, ref == 1)),
            "dice_dense": float(dice(pred == 1, dense == 1)),
            "max_prob_diff_vs_fp32": float((probs[key] - probs[f"{mode} fp32"]).abs().max()),
            "seconds": seconds[key],
            "model_voxels_differing": n_diff,
            "uncertain_share": float((differs & uncertain).sum()) / n_diff if n_diff else math.nan,
        }
    return out


def windows_of(mode: str, stride) -> Windows:
    """The windows of a mode; ``stride2x``: the dense windows at twice ``eval.stride``
    (a quarter to an eighth of the windows, plain averaging)."""
    if mode == "stride2x":
        return Windows("stride", tuple(2 * int(s) for s in stride))
    return MODES[mode]


def summarise(rows: list[dict], key: str) -> dict:
    """Agreement, accuracy and the paired test of one (mode, precision) over the cases ``rows``."""
    vals = [r["modes"][key] for r in rows]
    agree = np.array([v["dice_dense"] for v in vals])
    gt = np.array([v["dice_gt"] for v in vals])
    dense = np.array([r["modes"][DENSE]["dice_gt"] for r in rows])
    diff = gt - dense
    p, reason = wilcoxon_p(gt, dense)
    low, high = bootstrap_ci(diff)
    segmented = dense > SEGMENTED
    shares = [v["uncertain_share"] for v in vals if not math.isnan(v.get("uncertain_share", math.nan))]
    return {"agree_median": float(np.median(agree)), "agree_mean": float(agree.mean()),
            "agree_min": float(agree.min()), "agree_segmented": float(agree[segmented].mean()) if segmented.any()
            else math.nan, "n_segmented": int(segmented.sum()), "gt_mean": float(gt.mean()),
            "diff_mean": float(diff.mean()), "ci": (low, high), "p": p, "p_reason": reason,
            "diff_min": float(diff.min()), "uncertain_share": float(np.mean(shares)) if shares else math.nan,
            "max_prob": max(v["max_prob_diff_vs_fp32"] for v in vals)}


def passes(s: dict) -> tuple[bool, str]:
    """Issue 28's bar (see AGREEMENT): whether a mode may become predict's default, and why not."""
    if s["agree_mean"] < AGREEMENT:
        return False, f"agreement {s['agree_mean']:.3f} < {AGREEMENT}"
    if s["diff_mean"] >= 0:
        return True, "agrees, Dice not lower"
    if not math.isnan(s["p"]) and s["p"] < ALPHA:
        return False, f"Dice lower (p = {s['p']:.2g})"
    if math.isnan(s["ci"][0]) or s["ci"][0] < -MARGIN:
        return False, f"Dice interval reaches {100 * s['ci'][0]:+.2f} pp < -{100 * MARGIN:g} pp"
    return True, "agrees, Dice not detectably lower"


def table(doc: dict) -> str:
    rows = doc["cases"]
    stride = "x".join(map(str, doc["stride"]))
    lines = [f"{len(rows)} validation cases of {Path(doc['run']).name} (step {doc['step']}), scored on the "
             f"{doc['grid']} grid; dense = stride {stride} fp32 (`vasseg evaluate`'s protocol).\n",
             "| mode | precision | agreement with dense fp32: median / mean / min | mean on segmented cases | "
             "Dice vs GT (mean) | paired diff vs dense fp32: mean [95 % CI], Wilcoxon p, min | "
             "differing voxels at dense p in [0.25, 0.75] | max prob diff vs fp32 | default? |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in rows[0]["modes"]:
        s = summarise(rows, key)
        ok, why = passes(s)
        mode, prec = key.split()
        p = f"{s['p']:.2g}" if not math.isnan(s["p"]) else f"n/a ({s['p_reason']})"
        lines.append(
            f"| {LABELS[mode]} | {prec} | {s['agree_median']:.4f} / {s['agree_mean']:.4f} / {s['agree_min']:.4f} | "
            f"{s['agree_segmented']:.4f} (n={s['n_segmented']}) | {100 * s['gt_mean']:.2f} % | "
            f"{100 * s['diff_mean']:+.2f} pp [{100 * s['ci'][0]:+.2f}, {100 * s['ci'][1]:+.2f}], p = {p}, "
            f"{100 * s['diff_min']:+.2f} pp | {100 * s['uncertain_share']:.0f} % | {s['max_prob']:.4f} | "
            f"{'yes' if ok and key != DENSE else '-' if key == DENSE else 'no'}: {why} |")
    return "\n".join(lines)


def per_case(doc: dict, precision: str) -> str:
    """Per case: Dice vs ground truth (%) / agreement with dense fp32, every mode in ``precision``."""
    keys = [k for k in doc["cases"][0]["modes"] if k.endswith(" " + precision)]
    lines = ["| case | dense fp32 Dice % | " + " | ".join(f"{LABELS[k.split()[0]]} {precision}" for k in keys) + " |",
             "|---" * (len(keys) + 2) + "|"]
    for row in doc["cases"]:
        cells = [f"{100 * row['modes'][k]['dice_gt']:.1f} / {row['modes'][k]['dice_dense']:.3f}" for k in keys]
        lines.append(f"| {row['case']} | {100 * row['modes'][DENSE]['dice_gt']:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n" + by_accuracy(doc, keys)


def by_accuracy(doc: dict, keys: list[str]) -> str:
    """Does a mode disagree where the model is poor? Spearman's rho between each case's dense fp32
    Dice against the ground truth and its agreement, and the mean agreement on the best cases."""
    from scipy.stats import spearmanr

    dense = np.array([r["modes"][DENSE]["dice_gt"] for r in doc["cases"]])
    best = dense >= GOOD
    lines = [f"| mode | Spearman rho (dense Dice, agreement) | mean agreement, dense Dice >= {GOOD:g} (n={best.sum()}) |"
             f" mean agreement, the others |", "|---|---|---|---|"]
    for key in keys:
        agree = np.array([r["modes"][key]["dice_dense"] for r in doc["cases"]])
        rho = spearmanr(dense, agree).statistic
        rest = f"{agree[~best].mean():.4f}" if (~best).any() else "n/a"
        lines.append(f"| {LABELS[key.split()[0]]} {key.split()[1]} | {rho:+.2f} | {agree[best].mean():.4f} | {rest} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
