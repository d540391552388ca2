"""Each window mode and precision against the dense fp32 result and the ground truth, on a trained run.

    python benchmarks/predict_agreement.py RUN [--cases N] [--json OUT.json]

For every validation case of RUN (its ``split.yaml``; the first N with ``--cases``) the class
probabilities are computed on the model grid in every (mode, precision): ``stride`` (the config's
``eval.stride``, the paper protocol), ``overlap`` 0.5 with Gaussian weights, ``whole`` volume; fp32
and bf16. Each label map is scored the way ``vasseg evaluate`` scores it (on the native grid for a
down-sampled run) and compared with the dense fp32 map. Printed: per (mode, precision) the median,
mean and minimum Dice against dense fp32, the mean Dice against the ground truth with its paired
difference to dense fp32, and the largest probability difference to the same mode in fp32 (the
seconds per case are in the JSON: a shared host's, not a benchmark).
Nothing is written into RUN.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vasseg.data.setup import iter_cases
from vasseg.engine.hostmem import retain_freed_memory
from vasseg.inference.evaluate import split_ids
from vasseg.inference.open import open_model
from vasseg.inferer.inferer import Inferer, scoring_grids
from vasseg.inferer.windows import Windows
from vasseg.metrics import dice

MODES = {"stride": Windows("stride"), "overlap": Windows("overlap", overlap=0.5),
         "overlap0.75": Windows("overlap", overlap=0.75), "whole": Windows("whole")}
LABELS = {"stride": "stride (eval.stride)", "overlap": "overlap 0.5", "overlap0.75": "overlap 0.75", "whole": "whole"}
PRECISIONS = ("fp32", "bf16")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a trained run folder (read only)")
    parser.add_argument("--cases", type=int, default=0, help="first N validation cases (default: all)")
    parser.add_argument("--checkpoint", default="last")
    parser.add_argument("--json", help="also write the per-case numbers here")
    args = parser.parse_args(argv)
    retain_freed_memory()
    device = torch.device("cpu")
    loaded = open_model(args.run, args.checkpoint, device)
    exp, method = loaded.exp, loaded.method
    method.eval()
    method.to(memory_format=torch.channels_last_3d)  # as vasseg.load_model does
    ids, source = split_ids(exp, loaded.run_dir, "val")
    ids = ids[: args.cases] if args.cases else ids
    grid = scoring_grids(exp)[0]
    rows = []
    for case in iter_cases(exp, ids, source):
        rows.append(score_case(method, case, exp, device, grid))
        print(f"{case.id}: " + ", ".join(f"{k} {v['dice_gt']:.4f}/{v['dice_dense']:.4f}/{v['seconds']:.1f}s"
                                         for k, v in rows[-1]["modes"].items()), file=sys.stderr, flush=True)
        if args.json:  # after every case: a stopped run keeps what it measured
            Path(args.json).write_text(json.dumps(rows, indent=1))
    print(table(rows, exp.eval.stride, loaded.run_dir, loaded.step, grid))
    return 0


def score_case(method, case, exp, device: torch.device, grid: str) -> dict:
    """Every (mode, precision) of one case through ``vasseg predict``'s path (the Inferer,
    channels-last): Dice vs ground truth and vs the dense fp32 map, seconds, largest probability
    difference to the same mode in fp32."""
    probs, maps, seconds = {}, {}, {}
    for mode, windows in MODES.items():
        for name in PRECISIONS:
            inferer = Inferer(exp, device, windows, name, channels_last=True)
            start = time.perf_counter()
            p = inferer.probs(method, case.image)
            seconds[f"{mode} {name}"] = time.perf_counter() - start
            probs[f"{mode} {name}"] = p
            maps[f"{mode} {name}"] = inferer.on_grid(p, case, grid)
    dense, ref, _ = maps["stride fp32"]
    out = {"case": case.id, "modes": {}}
    for key, (pred, _, _) in maps.items():
        mode = key.split()[0]
        out["modes"][key] = {
            "dice_gt": float(dice(pred == 1, ref == 1)),
            "dice_dense": float(dice(pred == 1, dense == 1)),
            "max_prob_diff_vs_fp32": float((probs[key] - probs[f"{mode} fp32"]).abs().max()),
            "seconds": seconds[key],
        }
    return out


def table(rows: list[dict], stride, run_dir: Path, step: int, grid: str) -> str:
    keys = list(rows[0]["modes"])
    gt_dense = [r["modes"]["stride fp32"]["dice_gt"] for r in rows]
    lines = [f"{len(rows)} validation cases of {run_dir.name} (step {step}), scored on the {grid} grid; "
             f"dense = stride {'x'.join(map(str, stride))} fp32 (`vasseg evaluate`'s protocol).\n",
             "| mode | precision | Dice vs dense fp32 (median / mean / min) | Dice vs ground truth (mean) | "
             "paired diff vs dense fp32 (mean, min) | max prob diff vs same mode fp32 |",
             "|---|---|---|---|---|---|"]
    for key in keys:
        vals = [r["modes"][key] for r in rows]
        agree = [v["dice_dense"] for v in vals]
        gt = [v["dice_gt"] for v in vals]
        diff = [g - d for g, d in zip(gt, gt_dense)]
        mode, prec = key.split()
        lines.append(f"| {LABELS[mode]} | {prec} | {statistics.median(agree):.4f} / {statistics.mean(agree):.4f} / "
                     f"{min(agree):.4f} | {100 * statistics.mean(gt):.2f} % | {100 * statistics.mean(diff):+.3f} pp, "
                     f"{100 * min(diff):+.3f} pp | {max(v['max_prob_diff_vs_fp32'] for v in vals):.4f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
