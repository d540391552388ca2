"""Evaluation of a trained method on a set of cases: per-case CSV and a summary table.

Every foreground class of every case is scored by sliding-window inference and
:mod:`vasseg.metrics`. Distances are reported in voxels (as the lineage's tables are) and in mm
when the spacing is known. The empty-mask rule of :mod:`vasseg.metrics` applies and the summary
counts how many cases fell under it.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from tqdm import tqdm

from vasseg.config import Experiment
from vasseg.data.volumes import Case, VolumeSet
from vasseg.engine.inference import resize_probs, sliding_window_probs
from vasseg.methods.base import Method
from vasseg.metrics import CaseMetrics, Summary, format_mean_std, per_class_metrics, summarize

log = logging.getLogger(__name__)

METRICS = ("dice", "jaccard", "hd95", "asd", "assd")
MM_METRICS = ("hd95", "asd", "assd")


@dataclass
class Row:
    """One (case, class) result; distances in voxels and, when known, in mm."""

    case: str
    cls: int
    dice: float
    jaccard: float
    hd95: float
    asd: float
    assd: float
    hd95_mm: float
    asd_mm: float
    assd_mm: float
    status: str


@torch.no_grad()
def predict_case(method: Method, case: Case, exp: Experiment, device: torch.device) -> tuple[np.ndarray, Case]:
    """Label map of one case ``(X, Y, Z)`` (native resolution when configured) and its reference."""
    probs = sliding_window_probs(
        method.predict, case.image, exp.eval_patch, exp.eval.stride, exp.data.num_classes,
        batch_size=exp.eval.batch_size, device=device,
    )
    if exp.eval.native_resolution and case.native_label is not None:
        probs = resize_probs(probs, tuple(case.native_label.shape))
    return probs.argmax(0).to(torch.uint8).cpu().numpy(), case


def reference_of(case: Case, exp: Experiment) -> tuple[np.ndarray, tuple[float, ...]]:
    """The label the prediction is scored against, and its spacing in mm."""
    if exp.eval.native_resolution and case.native_label is not None:
        return case.native_label.cpu().numpy(), tuple(case.native_spacing or case.spacing)
    if case.label is None:
        raise ValueError(f"{case.where}: no label to evaluate against")
    return case.label.cpu().numpy(), tuple(case.spacing)


def score_case(case_id: str, pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...],
               num_classes: int, empty_distance: str) -> list[Row]:
    """Rows for every foreground class; mm distances reuse voxel ones for isotropic spacing."""
    classes = list(range(1, num_classes))
    vox = per_class_metrics(pred, ref, classes, None, empty_distance)
    isotropic = len(set(spacing)) == 1
    mm = vox if isotropic else per_class_metrics(pred, ref, classes, spacing, empty_distance)
    factor = spacing[0] if isotropic else 1.0
    return [_row(case_id, c, vox[c], mm[c], factor) for c in classes]


def _row(case_id: str, cls: int, vox: CaseMetrics, mm: CaseMetrics, factor: float) -> Row:
    return Row(case=case_id, cls=cls, dice=vox.dice, jaccard=vox.jaccard, hd95=vox.hd95,
               asd=vox.asd, assd=vox.assd, hd95_mm=mm.hd95 * factor, asd_mm=mm.asd * factor,
               assd_mm=mm.assd * factor, status=vox.status)


def evaluate_cases(method: Method, cases: VolumeSet, exp: Experiment, device: torch.device,
                   progress: bool = True) -> list[Row]:
    """Predict and score every case; the method is left in eval mode."""
    method.eval()
    rows: list[Row] = []
    for case in tqdm(list(cases), desc="evaluate", disable=not progress, dynamic_ncols=True):
        pred, _ = predict_case(method, case, exp, device)
        ref, spacing = reference_of(case, exp)
        rows += score_case(case.id, pred, ref, spacing, exp.data.num_classes, exp.eval.empty_distance)
    return rows


def summarize_rows(rows: Iterable[Row]) -> dict[str, Any]:
    """Mean ± std over cases, per class and for the per-case mean over classes, plus counts."""
    rows = list(rows)
    per_class: dict[int, dict[str, Summary]] = {}
    for cls in sorted({r.cls for r in rows}):
        sel = [r for r in rows if r.cls == cls]
        per_class[cls] = {m: summarize([getattr(r, m) for r in sel]) for m in (*METRICS, *(f"{k}_mm" for k in MM_METRICS))}
    by_case: dict[str, list[Row]] = {}
    for r in rows:
        by_case.setdefault(r.case, []).append(r)
    mean = {m: summarize([_nanmean([getattr(r, m) for r in rs]) for rs in by_case.values()])
            for m in (*METRICS, *(f"{k}_mm" for k in MM_METRICS))}
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {"per_class": per_class, "mean": mean, "counts": counts, "cases": len(by_case)}


def _nanmean(values: list[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def table_header(with_mm: bool) -> str:
    cols = ["Dice %", "Jaccard %", "95HD (vox)", "ASSD* (vox)"]
    if with_mm:
        cols += ["95HD (mm)", "ASSD* (mm)"]
    return "| " + " | ".join(["method", "labeled", *cols]) + " |\n|" + "---|" * (len(cols) + 2) + "\n"


def table_line(label: str, labeled: str, s: dict[str, Summary], with_mm: bool) -> str:
    pct = lambda x: Summary(x.mean * 100, x.std * 100, x.n, x.n_nan)  # noqa: E731
    cells = [format_mean_std(pct(s["dice"])), format_mean_std(pct(s["jaccard"])),
             format_mean_std(s["hd95"]), format_mean_std(s["asd"])]
    if with_mm:
        cells += [format_mean_std(s["hd95_mm"]), format_mean_std(s["asd_mm"])]
    return "| " + " | ".join([label, labeled, *cells]) + " |\n"


TABLE_NOTES = (
    "Mean ± sample std over cases. *ASSD column as the lineage computes the paper's ASSD: "
    "medpy `binary.asd(pred, ref)`, the mean distance from the predicted surface to the reference "
    "surface (the symmetric ASSD is the `assd` column of cases.csv). 95HD: 95th percentile of both "
    "directed surface-distance sets pooled (medpy `binary.hd95`). Empty prediction: Dice 0 and "
    "distances undefined (NaN, excluded from the distance means and counted), not the lineage's 0."
)


def format_summary(summary: dict[str, Any], method: str, labeled: str, note: str = "",
                   class_names: tuple[str, ...] = ()) -> str:
    """Markdown: the paper's column order, the mean over classes, then each class."""
    with_mm = not math.isnan(summary["mean"]["hd95_mm"].mean)
    text = table_header(with_mm) + table_line(method, labeled, summary["mean"], with_mm)
    if len(summary["per_class"]) > 1:
        for cls, s in summary["per_class"].items():
            name = class_names[cls] if cls < len(class_names) else f"class {cls}"
            text += table_line(f"{method} ({name})", labeled, s, with_mm)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary["counts"].items()))
    text += f"\n{summary['cases']} cases; case/class outcomes: {counts}. {note}\n\n{TABLE_NOTES}\n"
    return text


def write_results(rows: list[Row], summary: dict[str, Any], out_dir: Path, title: str, labeled: str,
                  note: str = "", class_names: tuple[str, ...] = ()) -> str:
    """Write ``cases.csv``, ``summary.json`` and ``summary.md`` into ``out_dir``; return the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "cases.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(Row.__dataclass_fields__))
        writer.writeheader()
        for r in rows:
            writer.writerow(asdict(r))
    plain = {
        "per_class": {str(c): {m: asdict(v) for m, v in s.items()} for c, s in summary["per_class"].items()},
        "mean": {m: asdict(v) for m, v in summary["mean"].items()},
        "counts": summary["counts"],
        "cases": summary["cases"],
    }
    (out_dir / "summary.json").write_text(json.dumps(plain, indent=2))
    table = format_summary(summary, title, labeled, note, class_names)
    (out_dir / "summary.md").write_text(table)
    return table
