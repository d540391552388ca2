"""``vasseg demo``: the whole pipeline on embedded synthetic phantoms, on the CPU, in minutes.

Writes phantoms in the LA layout, trains ``supervised`` and ``mean_teacher`` briefly with a
small VNet, evaluates both on the held-out phantoms and returns the combined table.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vasseg.config import build_experiment, merge
from vasseg.data.synthetic import write_phantom_la_layout
from vasseg.engine.run import evaluate_run, train_experiment

log = logging.getLogger(__name__)

DEMO_METHODS = ("supervised", "mean_teacher")

# A CPU-sized experiment: 4 labeled + 12 unlabeled phantoms, 6 held out for testing.
DEMO_CONFIG: dict[str, Any] = {
    "data": {
        "labeled": 4,
        "num_val": 0,
        "patch_size": [32, 32, 32],
        "labeled_bs": 2,
        "unlabeled_bs": 2,
        "spacing": [1.0, 1.0, 1.0],
    },
    "model": {"filters": 8},
    "train": {
        "iterations": 300,
        "lr": 0.01,
        "lr_step": 200,
        "ckpt_every": 100,
        "log_every": 10,
        "device": "cpu",
    },
    "eval": {"stride": [16, 16, 16], "batch_size": 4},
}
PHANTOMS = {"n_train": 16, "n_test": 6, "shape": (48, 48, 48), "seed": 0}


def demo_experiment(out: Path, method: str, iterations: int | None, progress: bool) -> Any:
    raw = merge(DEMO_CONFIG, {
        "data": {"root": str(out / "data")},
        "method": {"name": method},
        "run": {"out_dir": str(out / "runs"), "name": method, "tensorboard": True},
        "train": {"progress": progress, **({"iterations": iterations} if iterations else {})},
    })
    return build_experiment(raw)


def run_demo(out_dir: str | Path = "vasseg-demo", iterations: int | None = None, progress: bool = True) -> str:
    """Run the demo into ``out_dir``; returns the printed table (markdown)."""
    out = Path(out_dir).expanduser().resolve()
    data = out / "data"
    if not (data / "train.list").exists():
        log.info("writing phantoms to %s", data)
        write_phantom_la_layout(data, **PHANTOMS)
    tables = []
    for method in DEMO_METHODS:
        exp = demo_experiment(out, method, iterations, progress)
        run_dir = train_experiment(exp, resume=True)
        _, table = evaluate_run(run_dir, split="test", progress=progress)
        tables.append(table)
    return combine_tables(tables) + f"\nruns and per-case results: {out / 'runs'}\n"


def combine_tables(tables: list[str]) -> str:
    """One table: the header once, one line per method, the notes once."""
    lines = [ln for ln in tables[0].splitlines()[:2]]
    for t in tables:
        lines.append(t.splitlines()[2])
    notes = tables[0].split("\n\n", 1)[1] if "\n\n" in tables[0] else ""
    return "\n".join(lines) + "\n\n" + notes
