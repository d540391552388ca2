"""Segmentation metrics: pure functions of ``(pred, ref, spacing)`` and the one table of them.

* :mod:`vasseg.metrics.binary`: Dice, Jaccard, HD, HD95, ASD, ASSD as medpy computes them
  (without medpy), the empty-mask rule, :class:`MaskPair` (one binary pair as a metric sees it);
* :mod:`vasseg.metrics.table`: the table of the metrics evaluation computes and the report shows
  (name, function, unit, better direction, label, reduction), rows as mappings, and the
  reductions :func:`summarize` / :func:`format_mean_std`. A new metric is one
  :func:`register_metric` call.
"""

from __future__ import annotations

from vasseg.metrics.binary import (EMPTY_DISTANCE_RULES, STATUSES, CaseMetrics, MaskPair, asd, assd,
                                   binary_metrics, dice, hd, hd95, jaccard, per_class_metrics, surface_distances)
from vasseg.metrics.table import (METRIC_TABLE, CaseRow, Metric, Summary, format_mean_std, metric_columns,
                                  register_metric, summarize, table_metrics)

__all__ = [
    "EMPTY_DISTANCE_RULES",
    "METRIC_TABLE",
    "STATUSES",
    "CaseMetrics",
    "CaseRow",
    "MaskPair",
    "Metric",
    "Summary",
    "asd",
    "assd",
    "binary_metrics",
    "dice",
    "format_mean_std",
    "hd",
    "hd95",
    "jaccard",
    "metric_columns",
    "per_class_metrics",
    "register_metric",
    "summarize",
    "surface_distances",
    "table_metrics",
]
