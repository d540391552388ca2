"""Paired Wilcoxon signed-rank tests of each method against a reference method, per case.

Cases are paired by id; a case's value in a group is its mean over the group's seeds. Pairs with
an undefined value (NaN, e.g. a distance of an empty prediction) are dropped. Zero differences
are dropped before ranking (``zero_method="wilcox"``, the textbook test); the test is two-sided.
Each test also carries the mean per-case difference with a 95 % percentile-bootstrap interval
over cases (10 000 resamples, fixed seed), so an effect's size is read beside its p-value.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats

from vasseg.metrics.table import table_metrics
from vasseg.report.collect import Group, seed_averaged

# With fewer than 6 untied pairs the smallest two-sided exact p is 2 / 2**5 = 0.0625: no result
# could reach 0.05, so a p-value would only look like evidence.
MIN_PAIRS = 6


def tested_metrics() -> list[tuple[str, str]]:
    """(metric, label) of every test: the metrics of the summary tables (:mod:`vasseg.metrics.table`)."""
    return [(m.name, m.label) for m in table_metrics()]


@dataclass(frozen=True)
class PairedTest:
    """One test of ``group`` against ``reference`` on ``metric`` (``cls`` None: class mean)."""

    group: str
    labeled: int
    reference: str
    metric: str
    cls: int | None
    n_pairs: int
    n_untied: int
    median_diff: float  # group minus reference, in the metric's unit (Dice as a fraction)
    p: float
    reason: str  # why p is n/a ("" when it is defined)
    mean_diff: float = math.nan  # mean per-case difference, same unit
    ci_low: float = math.nan  # 95 % bootstrap interval of mean_diff
    ci_high: float = math.nan


BOOTSTRAP_RESAMPLES = 10_000


def bootstrap_ci(diff: np.ndarray, level: float = 0.95, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of paired differences ``(n,)`` (NaN if n < 2)."""
    diff = np.asarray(diff, float)
    if diff.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(resamples, diff.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return float(low), float(high)


def wilcoxon_p(a: np.ndarray, b: np.ndarray, min_pairs: int = MIN_PAIRS) -> tuple[float, str]:
    """Two-sided p of the signed-rank test of paired samples, or NaN and the reason it is n/a."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    untied = int(np.count_nonzero(diff))
    if diff.size == 0:
        return math.nan, "no common cases"
    if untied == 0:
        return math.nan, "all pairs tied"
    if untied < min_pairs:
        return math.nan, f"{untied} untied pairs < {min_pairs}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns when ties force the normal approximation
        try:
            result = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        except ValueError as exc:
            return math.nan, " ".join(str(exc).split())
    return float(result.pvalue), ""


def paired_arrays(group: Group, reference: Group, metric: str, cls: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Seed-averaged values of the cases both groups have, NaN pairs dropped, in id order."""
    a = seed_averaged(group, metric, cls)
    b = seed_averaged(reference, metric, cls)
    ids = sorted(c for c in set(a) & set(b) if not (math.isnan(a[c]) or math.isnan(b[c])))
    return np.array([a[c] for c in ids]), np.array([b[c] for c in ids])


def paired_test(group: Group, reference: Group, metric: str, cls: int | None = None,
                min_pairs: int = MIN_PAIRS) -> PairedTest:
    """The Wilcoxon test of ``group`` vs ``reference`` on one metric."""
    a, b = paired_arrays(group, reference, metric, cls)
    p, reason = wilcoxon_p(a, b, min_pairs)
    median = float(np.median(a - b)) if a.size else math.nan
    mean = float(np.mean(a - b)) if a.size else math.nan
    low, high = bootstrap_ci(a - b)
    return PairedTest(group.label, group.labeled, reference.label, metric, cls, int(a.size),
                      int(np.count_nonzero(a - b)), median, p, reason, mean, low, high)


def find_reference(group: Group, groups: list[Group], reference: str) -> Group | None:
    """The reference method's group with the same dataset and labeled count.

    Where that method has variants (an ablation, a batch-size control), the one with the most runs
    is the reference, the first in table order on a tie; its other variants are tested against it.
    """
    same = [g for g in groups if g.method == reference and g.dataset == group.dataset
            and g.labeled == group.labeled]
    return max(same, key=lambda g: len(g.runs)) if same else None


def all_tests(groups: list[Group], reference: str, min_pairs: int = MIN_PAIRS) -> list[PairedTest]:
    """Every non-reference group against its reference: class-mean metrics, then Dice per class."""
    out = []
    for g in groups:
        ref = find_reference(g, groups, reference)
        if ref is None or ref is g:
            continue
        out += [paired_test(g, ref, m, None, min_pairs) for m, _ in tested_metrics()]
        if len(g.classes) > 1:
            out += [paired_test(g, ref, "dice", c, min_pairs) for c in g.classes]
    return out


def format_p(test: PairedTest) -> str:
    """``0.0312 (n=20)``, ``<0.0001 (n=20)`` or a short ``n/a (...)`` (the table notes explain)."""
    if test.reason:
        short = {"no common cases": "no pairs", "all pairs tied": "all tied"}.get(test.reason)
        return f"n/a ({short or f'{test.n_untied} untied'})"
    p = "<0.0001" if test.p < 1e-4 else f"{test.p:.4f}"
    return f"{p} (n={test.n_pairs})"
