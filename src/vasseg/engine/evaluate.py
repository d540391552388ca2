"""Evaluation of a trained method on a set of cases: per-case CSV and a summary table.

Every foreground class of every case is scored by sliding-window inference and
:mod:`vasseg.metrics`. Distances are reported in voxels (as the lineage's tables are) and in mm
when the spacing is known. The empty-mask rule of :mod:`vasseg.metrics` applies and the summary
counts how many cases fell under it.

Grids. A case is scored on the ``native`` grid (the file's original grid; the model's
probabilities are resized to it) or on the ``model`` grid (the volume the network ran on);
``eval.native_resolution`` picks the primary one, whose rows fill ``cases.csv`` and
``summary.json``. The dataset format says which grids a case is scored on and what its native
reference is (:mod:`vasseg.data.format`): a prepared multi-organ dataset is scored on both, as the
paper's Table II is in voxels of the prepared 128x128x64 grid while mm belong to the original
scan. The other grid's rows go to ``cases_<grid>.csv`` and its tables to ``summary.md``.
With several foreground classes ``summary.md`` adds the paper's Table II layout (average
Dice, Jaccard, 95HD, ASSD, then one Dice column per class, named by ``data.class_names``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm import tqdm

from vasseg.config import Experiment
from vasseg.data.volumes import Case, VolumeSet
from vasseg.inferer.inferer import GridMaps, Inferer
from vasseg.methods.base import Method
from vasseg.metrics.table import (CaseRow, Summary, csv_columns, format_mean_std, is_percent, metric_columns,
                                  metric_of, score_labels, table_metrics)
from vasseg.outfolder import Owner

log = logging.getLogger(__name__)

Row = CaseRow  # one (case, class) result: the metric table's columns (vasseg.metrics.table) as a mapping


GRID_TITLES = {
    "native": "the original scan (native grid: voxels and mm of the file)",
    "model": "the model's grid (the volume the network ran on; for `vasseg prepare` data the prepared grid)",
}


def score_case(case_id: str, pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...],
               num_classes: int, empty_distance: str, grid: str = "native") -> list[Row]:
    """Rows of every metric of the table for every foreground class (distances in voxels and mm)."""
    return score_labels(case_id, pred, ref, list(range(1, num_classes)), spacing, empty_distance, grid)


def evaluate_cases(method: Method, cases: VolumeSet | Iterable[Case], exp: Experiment, device: torch.device,
                   progress: bool = True, total: int | None = None, inferer: Inferer | None = None) -> list[Row]:
    """Predict and score every case on every grid of :func:`~vasseg.inferer.inferer.scoring_grids`;
    the method is left in eval mode. Rows of the primary grid come first for each case.

    Metrics of case i run on a worker thread while case i+1 is being predicted (the network
    releases the GIL, so on a GPU the surface distances of one case hide behind the inference of
    the next); the rows keep the order of the cases. ``cases`` may be an iterator that reads each
    case when asked (``total``: their number, for the progress bar): at most two cases' arrays
    are alive at once, so memory does not grow with the number of cases. ``inferer``: how the
    probabilities are computed (default: the paper protocol, ``eval.stride`` windows in fp32).
    """
    method.eval()
    inferer = inferer or Inferer(exp, device)
    grids = inferer.grids
    pending: list[Future[list[Row]]] = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="metrics") as pool:
        for case in tqdm(cases, total=total, desc="evaluate", disable=not progress, dynamic_ncols=True):
            grid_maps = inferer.grid_maps(method, case)  # device -> host here
            if pending:
                pending[-1].result()  # one case's maps in the queue at most, however slow the metrics
            pending.append(pool.submit(_score_grids, case.id, grid_maps, grids, exp))
        return [row for future in pending for row in future.result()]


def _score_grids(case_id: str, grid_maps: list[GridMaps],
                 grids: tuple[str, ...], exp: Experiment) -> list[Row]:
    rows: list[Row] = []
    for (pred, ref, spacing), grid in zip(grid_maps, grids):
        rows += score_case(case_id, pred, ref, spacing, exp.data.num_classes, exp.eval.empty_distance, grid)
    return rows


def summarize_rows(rows: Iterable[Row]) -> dict[str, Any]:
    """Summary of the primary grid (the first grid in ``rows``); other grids under ``other_grids``.

    Each summary: mean ± std over cases per class and of the per-case mean over classes, plus
    the outcome counts and the number of cases.
    """
    rows = list(rows)
    grids = list(dict.fromkeys(r.grid for r in rows)) or ["native"]
    out = _summarize([r for r in rows if r.grid == grids[0]])
    out["grid"] = grids[0]
    out["other_grids"] = {g: _summarize([r for r in rows if r.grid == g]) for g in grids[1:]}
    return out


def _summarize(rows: list[Row]) -> dict[str, Any]:
    reduce = {m: metric_of(m).reduce for m in metric_columns()}
    per_class: dict[int, dict[str, Summary]] = {}
    for cls in sorted({r.cls for r in rows}):
        sel = [r for r in rows if r.cls == cls]
        per_class[cls] = {m: fn([r.values[m] for r in sel]) for m, fn in reduce.items()}
    by_case: dict[str, list[Row]] = {}
    for r in rows:
        by_case.setdefault(r.case, []).append(r)
    mean = {m: fn([_nanmean([r.values[m] for r in rs]) for rs in by_case.values()]) for m, fn in reduce.items()}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {"per_class": per_class, "mean": mean, "counts": counts, "cases": len(by_case)}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def summary_columns(with_mm: bool) -> list[tuple[str, str]]:
    """(value column, header) of the summary tables: the table's metrics, then their mm distances."""
    metrics = table_metrics()
    cols = [(m.name, f"{m.label} %" if m.unit == "fraction" else f"{m.label} (vox)") for m in metrics]
    return cols + ([(f"{m.name}_mm", f"{m.label} (mm)") for m in metrics if m.unit == "voxels"] if with_mm else [])


def table_header(with_mm: bool) -> str:
    cols = [header for _, header in summary_columns(with_mm)]
    return "| " + " | ".join(["method", "labeled", *cols]) + " |\n|" + "---|" * (len(cols) + 2) + "\n"


def _pct(x: Summary) -> Summary:
    return Summary(x.mean * 100, x.std * 100, x.n, x.n_nan)


def _shown(column: str, s: Summary) -> Summary:
    """A summary as the tables show it (fractions in %)."""
    return _pct(s) if is_percent(column) else s


def table_line(label: str, labeled: str, s: dict[str, Summary], with_mm: bool) -> str:
    cells = [format_mean_std(_shown(c, s[c])) for c, _ in summary_columns(with_mm)]
    return "| " + " | ".join([label, labeled, *cells]) + " |\n"


def _mean_cell(s: Summary) -> str:
    return "n/a" if s.n == 0 else f"{s.mean:.2f}"


def _class_name(cls: int, class_names: tuple[str, ...]) -> str:
    return class_names[cls] if cls < len(class_names) else f"class {cls}"


def table2(summary: dict[str, Any], method: str, class_names: tuple[str, ...], with_mm: bool) -> str:
    """The paper's Table II layout: averages over classes, then one Dice column per class.

    Means over cases only (the paper prints no std); the per-class rows above carry the spread.
    """
    classes = sorted(summary["per_class"])
    mean = summary["mean"]
    cols = [header for _, header in summary_columns(with_mm)]
    cols += [f"{_class_name(c, class_names)} (Dice %)" for c in classes]
    cells = [_mean_cell(_shown(c, mean[c])) for c, _ in summary_columns(with_mm)]
    cells += [_mean_cell(_pct(summary["per_class"][c]["dice"])) for c in classes]
    return ("| " + " | ".join(["method", *cols]) + " |\n|" + "---|" * (len(cols) + 1) + "\n"
            + "| " + " | ".join([method, *cells]) + " |\n")


TABLE_NOTES = (
    "Mean ± sample std over cases. *ASSD column as the lineage computes the paper's ASSD: "
    "medpy `binary.asd(pred, ref)`, the mean distance from the predicted surface to the reference "
    "surface (the symmetric ASSD is the `assd` column of cases.csv). 95HD: 95th percentile of both "
    "directed surface-distance sets pooled (medpy `binary.hd95`). Empty prediction: Dice 0 and "
    "distances undefined (NaN, excluded from the distance means and counted), not the lineage's 0."
)


def _has_mm(summary: dict[str, Any]) -> bool:
    """Whether the mm columns have a value: the first distance of the table has a mean in mm."""
    first = next((m for m in table_metrics() if m.unit == "voxels"), None)
    return first is not None and not math.isnan(summary["mean"][f"{first.name}_mm"].mean)


def _grid_section(summary: dict[str, Any], grid: str, method: str, labeled: str,
                  class_names: tuple[str, ...]) -> str:
    """One grid's tables: the lineage layout with per-class rows, then Table II (multi-class)."""
    with_mm = _has_mm(summary)
    text = f"Scored on {GRID_TITLES.get(grid, grid)}.\n\n"
    text += table_header(with_mm) + table_line(method, labeled, summary["mean"], with_mm)
    if len(summary["per_class"]) > 1:
        for cls, s in summary["per_class"].items():
            text += table_line(f"{method} ({_class_name(cls, class_names)})", labeled, s, with_mm)
        text += "\nTable II layout (means over cases; averages over the classes, then Dice per class):\n\n"
        text += table2(summary, method, class_names, with_mm)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary["counts"].items()))
    return text + f"\n{summary['cases']} cases; case/class outcomes: {counts}.\n"


def format_summary(summary: dict[str, Any], method: str, labeled: str, note: str = "",
                   class_names: tuple[str, ...] = ()) -> str:
    """Markdown: the paper's column order, the mean over classes, then each class, per grid."""
    text = _grid_section(summary, summary.get("grid", "native"), method, labeled, class_names)
    for grid, other in summary.get("other_grids", {}).items():
        text += "\n" + _grid_section(other, grid, method, labeled, class_names)
    return text + (f"\n{note}\n" if note else "") + f"\n{TABLE_NOTES}\n"


def _plain(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "per_class": {str(c): {m: asdict(v) for m, v in s.items()} for c, s in summary["per_class"].items()},
        "mean": {m: asdict(v) for m, v in summary["mean"].items()},
        "counts": summary["counts"],
        "cases": summary["cases"],
    }


def _write_csv(path: Path, rows: list[Row]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=csv_columns())
        writer.writeheader()
        for r in rows:
            writer.writerow(r.csv_row())


# What evaluate writes into its folder (vasseg.outfolder: the overwrite rule).
EVAL_OUTPUT = Owner("evaluate", ("cases.csv", "cases_*.csv", "summary.json", "summary.md"))


def write_results(rows: list[Row], summary: dict[str, Any], out_dir: Path, title: str, labeled: str,
                  note: str = "", class_names: tuple[str, ...] = (), inference: str = "") -> str:
    """Write ``cases.csv`` (primary grid), ``cases_<grid>.csv`` (other grids), ``summary.json``
    and ``summary.md`` into ``out_dir``; return the markdown. ``inference`` says how the
    probabilities were computed (windows, precision), in both summaries."""
    out_dir.mkdir(parents=True, exist_ok=True)
    primary = summary.get("grid", rows[0].grid if rows else "native")
    _write_csv(out_dir / "cases.csv", [r for r in rows if r.grid == primary])
    for grid in summary.get("other_grids", {}):
        _write_csv(out_dir / f"cases_{grid}.csv", [r for r in rows if r.grid == grid])
    plain = _plain(summary) | {"grid": primary,
                               "other_grids": {g: _plain(s) for g, s in summary.get("other_grids", {}).items()}}
    if inference:
        plain["inference"] = inference
        note = f"{note} Inference: {inference}.".strip()
    (out_dir / "summary.json").write_text(json.dumps(plain, indent=2))
    table = format_summary(summary, title, labeled, note, class_names)
    (out_dir / "summary.md").write_text(table)
    return table
