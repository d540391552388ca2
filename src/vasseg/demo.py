"""``vasseg demo``: the whole pipeline on embedded synthetic phantoms, on the CPU, in minutes.

Writes phantoms in the LA layout, trains ``supervised`` and ``mean_teacher`` briefly with a
small VNet, evaluates both on the held-out phantoms, writes a report (tables, box plot, slices,
3-D views and training curves; with ``full_report`` also the feature-space t-SNEs, which take
minutes on a CPU) for the two runs and returns the combined table followed by the report's path
and the elapsed time. The experiment is ``configs/phantoms/demo.yaml``; ``vasseg demo --data-only
DIR`` writes the phantoms alone (:func:`write_phantoms`), so that any method or config trains on them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from vasseg.config import ConfigError, build_experiment, merge, read_yaml
from vasseg.data.synthetic import write_phantom_la_layout
from vasseg.inference.evaluate import evaluate_run
from vasseg.rundir import RunDir
from vasseg.training import train

log = logging.getLogger(__name__)

DEMO_METHODS = ("supervised", "mean_teacher")

# A CPU-sized experiment: 4 labeled + 12 unlabeled phantoms, 6 held out for testing.
DEMO_YAML = Path(__file__).resolve().parents[2] / "configs" / "phantoms" / "demo.yaml"
DEMO_CONFIG: dict[str, Any] = read_yaml(DEMO_YAML)
PHANTOMS = {"n_train": 16, "n_test": 6, "shape": (40, 40, 40), "seed": 0}
REPORT_POINTS = 1000  # voxels per feature embedding (--full-report): keeps each t-SNE to seconds
QUICK_REPORT_SKIP = frozenset({"features", "snapshots"})  # the t-SNEs: minutes on a CPU


def snapshot_steps(iterations: int) -> list[int]:
    """Feature snapshots a third of the way and at the end (the report shows the alignment)."""
    return sorted({max(1, iterations // 3), iterations})


def demo_experiment(out: Path, method: str, iterations: int | None, progress: bool) -> Any:
    steps = snapshot_steps(iterations or DEMO_CONFIG["train"]["iterations"])
    raw = merge(DEMO_CONFIG, {
        "data": {"root": str(out / "data")},
        "method": {"name": method},
        # No fixed run name: the folder name carries the config's hash, so a demo rerun with other
        # settings trains new runs instead of resuming old ones under a different schedule.
        "run": {"out_dir": str(out / "runs"), "tensorboard": True, "feature_snapshots": steps},
        "train": {"progress": progress, **({"iterations": iterations} if iterations else {})},
    })
    return build_experiment(raw)


def write_phantoms(out: str | Path, shape: tuple[int, int, int] | None = None,
                   cases: tuple[int, int] | None = None) -> str:
    """``vasseg demo --data-only``: the demo's phantoms (or ``cases`` = (train, test) phantoms of
    ``shape`` voxels) in the LA layout into the new or empty folder ``out``; returns what to run next."""
    out = Path(out).expanduser().resolve()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: --data-only writes into a new or empty folder")
    settings = dict(PHANTOMS, **({"shape": tuple(shape)} if shape else {}))
    if cases:
        settings.update(n_train=cases[0], n_test=cases[1])
    write_phantom_la_layout(out, **settings)
    size = "x".join(str(s) for s in settings["shape"])
    return (f"wrote {settings['n_train']} training + {settings['n_test']} test phantoms ({size} voxels, LA layout) "
            f"to {out}\ntrain any method on them: vasseg train --config {DEMO_YAML} data.root={out} "
            f"method.name=mean_teacher\n")


def run_demo(out_dir: str | Path = "vasseg-demo", iterations: int | None = None, progress: bool = True,
             full_report: bool = False) -> str:
    """Run the demo into ``out_dir``; returns the printed table (markdown), then the report's path
    and the elapsed time. ``full_report`` adds the feature-space sections to the report."""
    started = time.perf_counter()
    out = Path(out_dir).expanduser().resolve()
    data = out / "data"
    if not (data / "train.list").exists():
        log.info("writing phantoms to %s", data)
        write_phantom_la_layout(data, **PHANTOMS)
    tables, run_dirs = [], []
    for method in DEMO_METHODS:
        exp = demo_experiment(out, method, iterations, progress)
        # a rerun with the same settings continues (or reuses) the run instead of training again
        run_dir = train(exp, resume=RunDir.of(exp).has_checkpoint())
        _, table = evaluate_run(run_dir, split="test", progress=progress)
        tables.append(table)
        run_dirs.append(run_dir)
    html = write_report(run_dirs, out / "report", full_report, progress)
    elapsed = time.perf_counter() - started
    learning = "; ".join(training_summary(method, run_dir) for method, run_dir in zip(DEMO_METHODS, run_dirs))
    return (combine_tables(tables) + f"\ntraining (mean of the first / last {SUMMARY_STEPS} steps): {learning}\n"
            f"runs and per-case results: {out / 'runs'}\nreport: {html}\ndemo finished in {elapsed:.0f} s\n")


SUMMARY_STEPS = 10


def training_summary(method: str, run_dir: Path) -> str:
    """How a run's losses moved, from its ``scalars.jsonl``: ``method loss a -> b[, consistency ...]``.

    The consistency term is mean teacher's learning signal from the unlabeled phantoms.
    """
    import json

    rows = [json.loads(line) for line in RunDir(run_dir).scalars.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]
    first, last = rows[:SUMMARY_STEPS], rows[-SUMMARY_STEPS:]

    def mean(part: list[dict[str, Any]], key: str) -> float:
        return sum(r[key] for r in part) / len(part)

    text = f"{method} loss {mean(first, 'loss'):.3f} -> {mean(last, 'loss'):.3f}"
    if "loss_cons" in rows[-1]:
        text += (f", consistency {mean(first, 'loss_cons'):.4f} -> {mean(last, 'loss_cons'):.4f} "
                 f"at weight {rows[-1]['w_cons']:.3f}")
    return text


def write_report(run_dirs: list[Path], out: Path, full_report: bool = False, progress: bool = True) -> Path:
    """The report of the demo's runs on the test phantoms (last checkpoint); returns report.html."""
    from vasseg.report.build import ReportOptions, build_report

    options = ReportOptions(eval_name="test_last", reference="supervised", feature_points=REPORT_POINTS,
                            skip=frozenset() if full_report else QUICK_REPORT_SKIP, progress=progress,
                            title="vasseg demo: supervised vs mean teacher on phantoms")
    return build_report(run_dirs, out, options)


def combine_tables(tables: list[str]) -> str:
    """One table: the first table's preamble and header, every table's rows, the notes once."""
    parts = [_table_parts(t) for t in tables]
    before, header, _, after = parts[0]
    rows = [row for _, _, table_rows, _ in parts for row in table_rows]
    return "\n".join([*before, *header, *rows, *after]).rstrip() + "\n"


def _table_parts(table: str) -> tuple[list[str], list[str], list[str], list[str]]:
    """(lines before the table, header + separator, data rows, lines after) of a markdown summary."""
    lines = table.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("| method")), None)
    if start is None:
        return lines, [], [], []
    end = start + 2
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[:start], lines[start:start + 2], lines[start + 2:end], lines[end:]
