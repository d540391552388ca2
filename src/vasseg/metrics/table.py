"""The one table of metrics: what ``vasseg evaluate`` scores and writes, and the report tabulates.

Each :class:`Metric` is a name (its ``cases.csv`` column), a function of one binary
:class:`~vasseg.metrics.binary.MaskPair`, a unit (``fraction``, shown in %, or ``voxels``, a
distance that is also written in mm as ``<name>_mm``), which direction is better, the label
tables print and the reduction over cases and seeds. Evaluation computes every metric of the
table for every (case, class); summaries, ``summary.md``, the report's Table I and its Wilcoxon
tests show those with ``table=True``.

A new metric is one :func:`register_metric` call, e.g. in the module that defines it (a test
registers a toy metric this way and finds it in ``cases.csv`` and in the report's Table I)::

    register_metric(Metric("volume_ratio", lambda p: p.pred.sum() / max(p.ref.sum(), 1), "fraction",
                           "higher", "Volume ratio"))

A distance should honour the empty-mask rule of :mod:`vasseg.metrics.binary`: compute it as
``pair.distance(fn)``, ``fn`` taking the two directed surface-distance arrays.

Rows are mappings: a :class:`CaseRow` holds ``values``, ``{column: value}`` in
:func:`metric_columns` order (voxel or fraction columns in table order, then the ``_mm`` ones).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from vasseg.metrics.binary import (NAN, EmptyDistance, MaskPair, check_label_maps, pair_asd, pair_assd, pair_dice,
                                   pair_hd95, pair_jaccard)

Unit = Literal["fraction", "voxels"]
Better = Literal["higher", "lower"]


# --------------------------------------------------------------------------- reductions


@dataclass(frozen=True)
class Summary:
    """Mean and standard deviation of the non-NaN values; ``n`` used, ``n_nan`` skipped."""

    mean: float
    std: float
    n: int
    n_nan: int


def summarize(values: Sequence[float]) -> Summary:
    """Mean ± std over cases or seeds, skipping NaN (e.g. undefined distances) and counting it.

    ``std`` is the sample standard deviation (ddof=1) when at least two values remain, 0.0 for a
    single value (ddof=1 would be undefined), NaN for none; ``mean`` is NaN when none remain.
    """
    arr = np.asarray(values, dtype=np.float64).ravel()
    missing = np.isnan(arr)
    kept = arr[~missing]
    n = int(kept.size)
    if n == 0:
        return Summary(NAN, NAN, 0, int(missing.sum()))
    std = float(kept.std(ddof=1)) if n > 1 else 0.0
    return Summary(float(kept.mean()), std, n, int(missing.sum()))


def format_mean_std(summary: Summary, digits: int = 2) -> str:
    """``"88.42 ± 2.31"``; ``"n/a"`` when no value is defined; ``" (k n/a)"`` added for k NaN."""
    if summary.n == 0:
        return "n/a"
    text = f"{summary.mean:.{digits}f} ± {summary.std:.{digits}f}"
    if summary.n_nan:
        text += f" ({summary.n_nan} n/a)"
    return text


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Metric:
    """One metric of the table (see the module docstring)."""

    name: str  # the cases.csv column (and summary.json key); distances add <name>_mm
    compute: Callable[[MaskPair], float]  # of one binary pair; voxel units (pair.spacing None) or mm
    unit: Unit  # fraction: shown x100 in %; voxels: a distance, also reported in mm
    better: Better  # which direction is the better segmentation (for readers of the table)
    label: str  # what tables print: "Dice", "95HD", ...
    reduce: Callable[[Sequence[float]], Summary] = summarize  # over cases, then over seeds
    table: bool = True  # a column of summary.md, the report's Table I and its Wilcoxon tests


METRIC_TABLE: dict[str, Metric] = {m.name: m for m in (
    Metric("dice", pair_dice, "fraction", "higher", "Dice"),
    Metric("jaccard", pair_jaccard, "fraction", "higher", "Jaccard"),
    Metric("hd95", pair_hd95, "voxels", "lower", "95HD"),
    # The lineage's "ASSD" column is medpy's directed binary.asd(pred, ref): ASSD* in the tables.
    Metric("asd", pair_asd, "voxels", "lower", "ASSD*"),
    Metric("assd", pair_assd, "voxels", "lower", "ASSD", table=False),  # the symmetric one: cases.csv only
)}


def register_metric(metric: Metric) -> Metric:
    """Add ``metric`` to the table (after the ones there); a name or column taken is refused."""
    columns = metric_columns()
    taken = [c for c in (metric.name, f"{metric.name}_mm") if c in columns or c in ROW_FIELDS]
    if metric.name in METRIC_TABLE or taken:
        raise ValueError(f"metric {metric.name!r}: column {(taken or [metric.name])[0]!r} is taken")
    if metric.unit not in ("fraction", "voxels") or metric.better not in ("higher", "lower"):
        raise ValueError(f"metric {metric.name!r}: unit must be fraction|voxels and better higher|lower")
    METRIC_TABLE[metric.name] = metric
    return metric


def metric_columns() -> list[str]:
    """The value columns of a row: every metric in table order, then the mm twins of the distances."""
    metrics = list(METRIC_TABLE.values())
    return [m.name for m in metrics] + [f"{m.name}_mm" for m in metrics if m.unit == "voxels"]


def table_metrics() -> list[Metric]:
    """The metrics the summary tables show, in table order."""
    return [m for m in METRIC_TABLE.values() if m.table]


def metric_of(column: str) -> Metric:
    """The metric a value column belongs to (``hd95_mm`` -> hd95)."""
    return METRIC_TABLE[column] if column in METRIC_TABLE else METRIC_TABLE[column.removesuffix("_mm")]


def is_percent(column: str) -> bool:
    """Whether tables show ``column`` x100, in %."""
    return metric_of(column).unit == "fraction"


# --------------------------------------------------------------------------- rows


ROW_FIELDS = ("case", "cls", "status", "grid")  # the other columns of cases.csv


@dataclass(frozen=True)
class CaseRow:
    """One (case, class) result: ``values`` maps :func:`metric_columns` to floats (NaN: undefined)."""

    case: str
    cls: int
    values: dict[str, float]
    status: str
    grid: str = ""  # scoring grid: "native" (the file's grid) or "model"; "" when not recorded

    def csv_row(self) -> dict[str, Any]:
        """The row as ``cases.csv`` writes it."""
        return {"case": self.case, "cls": self.cls, **self.values, "status": self.status, "grid": self.grid}


def csv_columns() -> list[str]:
    """The columns of ``cases.csv``, in order."""
    return ["case", "cls", *metric_columns(), "status", "grid"]


def score_pair(pred: np.ndarray, ref: np.ndarray, spacing_mm: Sequence[float],
               empty_distance: EmptyDistance = "nan") -> tuple[dict[str, float], str]:
    """Every metric of the table on one binary pair, and the pair's empty-mask status.

    Values in :func:`metric_columns` order: voxel units, and the distances again in mm; for an
    isotropic ``spacing_mm`` the mm values are the voxel ones times the spacing (surfaces once).
    """
    vox = MaskPair(pred, ref, None, empty_distance)
    values = {m.name: m.compute(vox) for m in METRIC_TABLE.values()}
    distances = [m for m in METRIC_TABLE.values() if m.unit == "voxels"]
    if len(set(spacing_mm)) == 1:
        values |= {f"{m.name}_mm": values[m.name] * spacing_mm[0] for m in distances}
    else:
        mm = MaskPair(vox.pred, vox.ref, spacing_mm, empty_distance)
        values |= {f"{m.name}_mm": m.compute(mm) for m in distances}
    return values, vox.status


def score_labels(case_id: str, pred_labels: np.ndarray, ref_labels: np.ndarray, classes: Sequence[int],
                 spacing_mm: Sequence[float], empty_distance: EmptyDistance = "nan",
                 grid: str = "") -> list[CaseRow]:
    """One :class:`CaseRow` per class id of two integer label maps of one shape."""
    pred_arr, ref_arr = check_label_maps(pred_labels, ref_labels)
    rows = []
    for c in classes:
        values, status = score_pair(pred_arr == c, ref_arr == c, spacing_mm, empty_distance)
        rows.append(CaseRow(case_id, int(c), values, status, grid))
    return rows
