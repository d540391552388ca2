"""Evaluation and report outputs across a refactor: run it with the old code, then the new, and diff.

    PYTHONPATH=<old>/src python benchmarks/output_identity.py DIR DIR/old   # trains DIR/runs once
    PYTHONPATH=<new>/src python benchmarks/output_identity.py DIR DIR/new   # reuses DIR/runs
    diff -r DIR/old DIR/new                                                  # no output: identical

Six tiny CPU runs (supervised and two mean-teacher seeds, 30 steps, so that some predictions are
empty and some are not) on two-class isotropic phantoms and on three-class phantoms with
anisotropic spacing (1 x 1 x 2 mm: the mm distances are computed, not scaled). Each run is
evaluated on its validation split (``OUT/eval/<run>``: cases.csv, summary.json, summary.md) and
each group reported (``OUT/report/<group>``: report.md/html, tables/*.csv, figures) without the
sections that need the data or the features.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

from vasseg.config import build_experiment
from vasseg.data.synthetic import write_phantom_la_layout
from vasseg.engine.run import evaluate_run, train_experiment
from vasseg.report.build import ReportOptions, build_report

RUNS = (("supervised", 7), ("mean_teacher", 7), ("mean_teacher", 8))
DATASETS = ((2, [1.0, 1.0, 1.0]), (3, [1.0, 1.0, 2.0]))  # classes, spacing (mm)


def train_runs(base: Path) -> None:
    for classes, spacing in DATASETS:
        root = write_phantom_la_layout(base / f"ph{classes}", n_train=10, n_test=3, shape=(32, 32, 32), seed=0,
                                       num_classes=classes)
        for method, seed in RUNS:
            train_experiment(build_experiment({
                "data": {"root": str(root), "labeled": 4, "num_val": 3, "patch_size": [16, 16, 16],
                         "labeled_bs": 2, "unlabeled_bs": 2, "spacing": spacing, "num_classes": classes},
                "model": {"filters": 4}, "method": {"name": method},
                "train": {"iterations": 30, "lr_step": 30, "ckpt_every": 30, "log_every": 5, "device": "cpu",
                          "progress": False, "seed": seed},
                "eval": {"stride": [8, 8, 8], "batch_size": 2},
                "run": {"tensorboard": False, "out_dir": str(base / "runs" / f"c{classes}")}}), evaluate_val=False)


def main(base: Path, out: Path) -> None:
    torch.set_num_threads(1)
    if not (base / "runs").exists():
        train_runs(base)
    shutil.rmtree(out, ignore_errors=True)
    for group in sorted((base / "runs").iterdir()):
        for run in sorted(group.iterdir()):
            evaluate_run(run, split="val", device="cpu", progress=False, out=str(out / "eval" / run.name))
            evaluate_run(run, split="val", device="cpu", progress=False, overwrite=True)  # eval/val_step_30
        build_report([group], out / "report" / group.name, ReportOptions(
            eval_name="val_last", skip=frozenset({"qualitative", "features", "snapshots"}), device="cpu",
            progress=False))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
