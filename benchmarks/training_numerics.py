"""Bit-identity check of training across a refactor: run it at the old commit, then at the new one.

    PYTHONPATH=<old>/src python benchmarks/training_numerics.py record DIR    # old code
    PYTHONPATH=<new>/src python benchmarks/training_numerics.py compare DIR   # new code

``record`` trains the adversarial methods (VAS; SASSNet with both discriminator inputs) and the
two baselines the protocols compare with (supervised, mean teacher) for 4
seeded CPU steps on tiny phantoms, checkpoints at steps 2 and 4, into ``DIR/old``. ``compare``
trains the same into ``DIR/new`` and requires every logged scalar (``scalars.jsonl``) and every
tensor of the final checkpoint (weights, both optimizers' states) to be bit-identical; then it
resumes a copy of each old run from its step-2 checkpoint (written by the old code) with the new
code and requires steps 2-3 and the final state to be bit-identical too. Exit status 1 on any
difference, listing it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

import torch

from vasseg.config import build_experiment
from vasseg.data.synthetic import write_phantom_la_layout
from vasseg.engine.run import train_experiment

RUNS: dict[str, dict[str, Any]] = {
    "vas": {"name": "vas", "voxels_per_class": 32},
    "vas_student_fusion": {"name": "vas", "voxels_per_class": 32, "adv_fusion": "student"},
    "sassnet": {"name": "sassnet"},
    "sassnet_cached": {"name": "sassnet", "disc_input": "cached"},
    "supervised": {"name": "supervised"},
    "mean_teacher": {"name": "mean_teacher"},
}


def experiment(root: Path, out: Path, method: dict[str, Any]):  # noqa: ANN201 - an Experiment
    """4 steps of 2 + 2 patches of 16^3 on the phantoms, checkpoints at steps 2 and 4; fp32 pinned
    (``train.amp=auto`` picks bf16 on bf16 CPUs since issue 28, fp32 before: like must meet like)."""
    return build_experiment({
        "data": {"root": str(root), "labeled": 4, "num_val": 2, "patch_size": [16, 16, 16], "labeled_bs": 2,
                 "unlabeled_bs": 2, "spacing": [1.0, 1.0, 1.0]},
        "model": {"filters": 4}, "method": method,
        "train": {"iterations": 4, "lr_step": 2, "ckpt_every": 2, "log_every": 1, "device": "cpu",
                  "progress": False, "seed": 7, "amp": "none"},
        "eval": {"stride": [8, 8, 8], "batch_size": 2}, "run": {"tensorboard": False, "out_dir": str(out)}})


def train_all(dir_: Path, out: Path) -> dict[str, Path]:
    root = dir_ / "phantoms"
    if not (root / "train.list").is_file():
        write_phantom_la_layout(root, n_train=10, n_test=2, shape=(32, 32, 32), seed=0)
    return {key: train_experiment(experiment(root, out / key, method), evaluate_val=False)
            for key, method in RUNS.items()}


def scalars(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "scalars.jsonl").read_text().splitlines()]


def tensors(obj: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor of a (nested) checkpoint entry by its key path."""
    if isinstance(obj, torch.Tensor):
        return {prefix: obj}
    if isinstance(obj, dict):
        return {k: v for key, value in obj.items() for k, v in tensors(value, f"{prefix}/{key}").items()}
    if isinstance(obj, (list, tuple)):
        return {k: v for i, value in enumerate(obj) for k, v in tensors(value, f"{prefix}/{i}").items()}
    return {}


def final_state(run: Path) -> dict[str, torch.Tensor]:
    state = torch.load(run / "checkpoints" / "step_000004.pt", map_location="cpu", weights_only=False)
    return tensors({"method": state["method"], "optimizers": state["optimizers"]})


def differences(label: str, old: Path, new: Path, first_step: int = 0) -> list[str]:
    """What differs between two runs: scalar rows from ``first_step`` on, final tensors, optimizer groups."""
    problems = []
    rows_old = [r for r in scalars(old) if r["step"] >= first_step]
    rows_new = [r for r in scalars(new) if r["step"] >= first_step]
    if rows_old != rows_new:
        problems.append(f"{label}: scalars differ:\n  old {rows_old}\n  new {rows_new}")
    a, b = final_state(old), final_state(new)
    if a.keys() != b.keys():
        problems.append(f"{label}: checkpoint keys differ: {sorted(a.keys() ^ b.keys())}")
    problems += [f"{label}: {key} differs" for key in sorted(a.keys() & b.keys()) if not torch.equal(a[key], b[key])]
    return problems


def resume_copy(old: Path, dest: Path) -> Path:
    """A copy of an old run cut back to its step-2 checkpoint."""
    shutil.copytree(old, dest)
    ckpts = dest / "checkpoints"
    (ckpts / "step_000004.pt").unlink()
    (ckpts / "latest").write_text("step_000002.pt")
    return dest


def compare(dir_: Path) -> list[str]:
    old = {key: next((dir_ / "old" / key).iterdir()) for key in RUNS}
    new = train_all(dir_, dir_ / "new")
    problems = [p for key in RUNS for p in differences(key, old[key], new[key])]
    root = dir_ / "phantoms"
    for key, method in RUNS.items():
        out = dir_ / "resumed" / key
        shutil.rmtree(out, ignore_errors=True)
        resume_copy(old[key], out / old[key].name)
        resumed = train_experiment(experiment(root, out, method), resume=True, evaluate_val=False)
        problems += differences(f"{key} resumed at step 2", old[key], resumed, first_step=2)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["record", "compare"])
    parser.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    if args.mode == "record":
        shutil.rmtree(args.dir / "old", ignore_errors=True)
        runs = train_all(args.dir, args.dir / "old")
        print("\n".join(f"recorded {key}: {run}" for key, run in runs.items()))
        return 0
    problems = compare(args.dir)
    print("\n".join(problems) if problems else f"bit-identical: {', '.join(RUNS)} (4 steps each, and resumed "
                                                 f"at step 2 from the old code's checkpoints)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
