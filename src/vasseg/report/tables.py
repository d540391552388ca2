"""The paper's tables from per-case results: Table I (all metrics), Table II (Dice per class),
the Wilcoxon table, and an overview of the runs read.

Every number comes from the runs' ``cases.csv``: per seed, the mean over cases (per case, the
mean over classes for the "average" columns); then mean ± sample std across seeds. Under
cross-validation a seed is one run per fold (``Group.replicates``), so its mean covers every fold's
cases. A group with a single seed shows mean ± std over its cases instead, marked with † in the
seeds column.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vasseg.metrics.table import Summary, format_mean_std, is_percent, metric_of, table_metrics
from vasseg.report.collect import Group, RunRecord, case_values, parse_eval_name
from vasseg.report.document import Table, write_csv
from vasseg.report.stats import MIN_PAIRS, PairedTest, format_p, tested_metrics

ONE_SEED_MARK = "†"


@dataclass(frozen=True)
class Cell:
    """A table value: mean ± std over ``over`` (seeds or cases), ``undefined`` NaN case values skipped."""

    mean: float
    std: float
    n: int
    undefined: int
    over: str

    def text(self) -> str:
        """``mean ± std (k n/a)``; ``–`` for what one value (std) or none (mean) cannot define."""
        if self.n == 0:
            return f"– ({self.undefined} n/a)" if self.undefined else "n/a"
        if self.n == 1:
            return f"{self.mean:.2f} ± –" + (f" ({self.undefined} n/a)" if self.undefined else "")
        return format_mean_std(Summary(self.mean, self.std, self.n, self.undefined))


def group_cell(group: Group, metric: str, cls: int | None = None) -> Cell:
    """Mean ± std of ``metric`` for a group (percent for fractions such as Dice), reduced as the
    metric table says (per seed over its cases, then over seeds; a seed under cross-validation is
    one run per fold, ``Group.replicates``)."""
    scale = 100.0 if is_percent(metric) else 1.0
    reduce = metric_of(metric).reduce
    replicates = group.replicates
    reps = [[v for r in rep for v in case_values(r, metric, cls).values()] for rep in replicates]
    runs = [r for rep in replicates for r in rep]
    if cls is None and len(group.classes) > 1:
        # A case's mean over classes skips its undefined classes: count those (case, class)
        # values, or a method that predicts nothing for the hard organs would look best.
        undefined = sum(math.isnan(row.values[metric]) for r in runs for row in r.rows)
    else:
        undefined = sum(sum(math.isnan(v) for v in vals) for vals in reps)
    if len(reps) == 1:
        s, over = reduce(reps[0]), "cases"
    else:
        s, over = reduce([reduce(vals).mean for vals in reps]), "seeds"
    return Cell(s.mean * scale, s.std * scale, s.n, undefined, over)


def _seeds_text(group: Group) -> str:
    """Seeds behind the ± (× folds under cross-validation), † for one, + the runs left out."""
    reps = group.replicates
    text = f"{len(reps)}{ONE_SEED_MARK if len(reps) == 1 else ''}"
    if len(reps[0]) > 1:
        text += f" × {len(reps[0])} folds"
    left = len(group.runs) - sum(len(rep) for rep in reps)
    return text + (f" (+{left} run{'s' * (left > 1)})" if left else "")


# --------------------------------------------------------------------------- notes


@dataclass(frozen=True)
class EvalContext:
    """What the tables were computed from, for the notes under them."""

    eval_name: str
    reference: str
    grids: tuple[str, ...] = ()

    def split_text(self) -> str:
        split, ckpt = parse_eval_name(self.eval_name)
        where = {"val": "the validation split (cases held out from train.list, never trained on)",
                 "test": "the test split (test.list)", "labeled": "the labeled training cases",
                 "unlabeled": "the unlabeled training cases"}.get(split, f"the id list '{split}'")
        policy = {"last": "the last training iteration (no checkpoint selection; the lineage's policy)",
                  "best": "the best validation-Dice checkpoint (selected on the validation split only)"}
        chosen = policy.get(ckpt, f"the fixed checkpoint {ckpt}")
        grid = {"native": " Scored on the native grid (the original scan's voxels and mm).",
                "model": " Scored on the model's grid (the volume the network ran on)."}
        grids = "".join(grid.get(g, f" Scored on the {g} grid.") for g in self.grids)
        return (f"Split and checkpoint: {where}; checkpoint: {chosen}; read from "
                f"eval/{self.eval_name} of every run.{grids}")


def statistic_note(groups: list[Group]) -> str:
    text = ("Mean ± sample std over seeds: per seed the mean over cases, then mean ± std of the seed "
            "means.")
    reps = [g.replicates for g in groups]
    if any(len(r[0]) > 1 for r in reps):
        text += (" Under cross-validation a seed is one run per fold (the i-th seed of every fold): its "
                 "mean is over the cases of all folds, so the ± is the spread between seeds, not folds.")
    if any(len(r) == 1 for r in reps):
        text += f" {ONE_SEED_MARK} one seed: mean ± std over cases instead."
    if any(len(g.runs) > sum(len(rep) for rep in r) for g, r in zip(groups, reps)):
        text += (" (+k runs): runs of a seed not yet trained on every fold, left out of the mean ± std "
                 "(the paired tests use them).")
    return text + " '–': undefined (no value, or a single one for the std)."


def empty_rule_note(runs: list[RunRecord]) -> str:
    """The empty-prediction rule the runs were scored with, and how often it applied."""
    rules = sorted({r.exp.eval.empty_distance for r in runs})
    counts: dict[str, int] = {}
    for r in runs:
        for row in r.rows:
            counts[row.status] = counts.get(row.status, 0) + 1
    outcome = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    rule = ("distances undefined (NaN), left out of the distance means and counted as '(k n/a)'"
            if rules == ["nan"] else
            "distances set to the image diagonal (the worst possible value)" if rules == ["diagonal"] else
            f"runs disagree on the distance rule ({', '.join(rules)}); compare with care")
    return (f"Empty prediction: Dice = Jaccard = 0 and {rule}; not the lineage's 0 for every metric. "
            f"Case/class outcomes (all seeds): {outcome}.")


UNITS_NOTE = ("Units: Dice and Jaccard in %; 95HD and ASSD* in voxels (vox) and, where the spacing "
              "is known, in mm. 95HD: 95th percentile of both directed surface-distance sets pooled "
              "(medpy binary.hd95). ASSD*: the lineage's 'ASSD' column, medpy binary.asd(pred, ref) "
              "(mean distance from the predicted to the reference surface); the symmetric ASSD is the "
              "assd column of cases.csv.")


# --------------------------------------------------------------------------- Table I


def table_one_columns(with_mm: bool = True) -> list[tuple[str, str]]:
    """(value column, header) of Table I: the metric table's, then the mm twins of its distances."""
    metrics = table_metrics()
    cols = [(m.name, f"{m.label} (%)" if m.unit == "fraction" else f"{m.label} (vox)") for m in metrics]
    return cols + ([(f"{m.name}_mm", f"{m.label} (mm)") for m in metrics if m.unit == "voxels"] if with_mm else [])


def table_one(groups: list[Group], tests: list[PairedTest], ctx: EvalContext, out: Path) -> Table:
    """Table I: overall metrics per group (per case the mean over foreground classes)."""
    cols = table_one_columns(True)
    header = ["Method", "Labeled", "Unlabeled", "Seeds", *(c[1] for c in cols), f"p Dice vs {ctx.reference}"]
    rows, raw = [], []
    for g in groups:
        cells = [group_cell(g, m) for m, _ in cols]
        rows.append([g.label, str(g.labeled), str(g.unlabeled), _seeds_text(g), *(c.text() for c in cells),
                     _p_for(g, tests, ctx.reference, "dice", None)])
        raw += [[g.dataset, g.label, g.labeled, g.unlabeled, len(g.replicates), m, "mean", c.mean, c.std, c.n,
                 c.undefined, c.over] for (m, _), c in zip(cols, cells)]
    write_csv(out / "table1.csv", RAW_HEADER, raw)
    notes = [statistic_note(groups), ctx.split_text(), data_note([r for g in groups for r in g.runs]),
             empty_rule_note([r for g in groups for r in g.runs]), UNITS_NOTE,
             "p: paired Wilcoxon signed-rank test per case (see the Wilcoxon table)."]
    if len({g.dataset for g in groups}) == 1 and len(groups[0].classes) > 1:
        notes.insert(0, "Several classes: every value is per case the mean over the foreground classes "
                        "whose value is defined; '(k n/a)' then counts the undefined (case, class) values "
                        "left out, summed over seeds.")
    return Table(f"Table I. Segmentation results ({groups[0].dataset})", header, rows, notes)


RAW_HEADER = ["dataset", "group", "labeled", "unlabeled", "seeds", "metric", "cls", "mean", "std", "n",
              "undefined", "over"]


def _p_for(group: Group, tests: list[PairedTest], reference: str, metric: str, cls: int | None) -> str:
    found = [t for t in tests if t.group == group.label and t.labeled == group.labeled
             and t.metric == metric and t.cls == cls]
    if found:
        return format_p(found[0])
    # A group of the reference method without a test is the reference itself (find_reference).
    return "reference" if group.method == reference else "n/a (no reference run)"


# --------------------------------------------------------------------------- Table II


def table_two(groups: list[Group], ctx: EvalContext, out: Path) -> Table:
    """Table II: average Dice and Dice of every class."""
    classes = sorted({c for g in groups for c in g.classes})
    names = [groups[0].class_name(c) for c in classes]
    header = ["Method", "Labeled", "Seeds", "Average Dice (%)", *(f"{n} (%)" for n in names)]
    rows, raw = [], []
    for g in groups:
        cells = [group_cell(g, "dice")] + [group_cell(g, "dice", c) for c in classes]
        rows.append([g.label, str(g.labeled), _seeds_text(g), *(c.text() for c in cells)])
        keys = ["mean", *(str(c) for c in classes)]
        raw += [[g.dataset, g.label, g.labeled, g.unlabeled, len(g.replicates), "dice", k, c.mean, c.std, c.n,
                 c.undefined, c.over] for k, c in zip(keys, cells)]
    write_csv(out / "table2.csv", RAW_HEADER, raw)
    notes = [statistic_note(groups), ctx.split_text(), empty_rule_note([r for g in groups for r in g.runs]),
             "Average: per case the mean Dice over the foreground classes."]
    return Table(f"Table II. Dice per class ({groups[0].dataset})", header, rows, notes)


# --------------------------------------------------------------------------- folds


def fold_table(groups: list[Group], out: Path) -> Table | None:
    """Mean Dice of every run by fold (seeds in order, ``a / b``) and of every seed over all folds;
    ``None`` without cross-validation. Where the ± of Table I comes from, and how folds differ."""
    folds = sorted({r.exp.data.fold for g in groups for r in g.runs if r.exp.data.folds})
    if len(folds) < 2:
        return None
    header = ["Method", "Labeled", *(f"fold {f}" for f in folds), "every fold (per seed)"]
    rows, raw = [], []
    for g in groups:
        cells = []
        for f in folds:
            runs = sorted((r for r in g.runs if r.exp.data.folds and r.exp.data.fold == f), key=lambda r: r.seed)
            means = [_dice_percent(case_values(r, "dice").values()) for r in runs]
            cells.append(" / ".join(f"{m:.2f}" for m in means) or "–")
            raw += [[g.label, g.labeled, f, r.seed, m] for r, m in zip(runs, means)]
        pooled = [_dice_percent([v for r in rep for v in case_values(r, "dice").values()])
                  for rep in g.replicates if len(rep) > 1]
        rows.append([g.label, str(g.labeled), *cells, " / ".join(f"{m:.2f}" for m in pooled) or "–"])
    write_csv(out / "folds.csv", ["group", "labeled", "fold", "seed", "dice_percent"], raw)
    notes = ["Dice (%) per run: the mean over its fold's cases (per case the mean over classes), seeds in "
             "increasing order. Every fold: per seed (one run per fold, Table I's rule) the mean over "
             "the cases of all folds; a seed not trained on every fold yet is not shown there."]
    return Table("Dice per fold and seed", header, rows, notes)


def _dice_percent(values: Iterable[float]) -> float:
    """Mean Dice (%) over case values, reduced as Table I reduces them."""
    return 100.0 * metric_of("dice").reduce(list(values)).mean


# --------------------------------------------------------------------------- Wilcoxon and runs


def wilcoxon_table(groups: list[Group], tests: list[PairedTest], ctx: EvalContext, out: Path,
                   min_pairs: int = MIN_PAIRS) -> Table:
    """p-values of every method against the reference, per metric (and per class for Dice)."""
    classes = sorted({c for g in groups for c in g.classes})
    multi = len(classes) > 1
    header = ["Method", "Labeled", "Reference", "median ΔDice (pp)", "mean ΔDice [95% CI] (pp)",
              *(f"p {n}" for _, n in tested_metrics())]
    header += [f"p Dice {groups[0].class_name(c)}" for c in classes] if multi else []
    rows = []
    for g in groups:
        mine = [t for t in tests if t.group == g.label and t.labeled == g.labeled]
        if g.method == ctx.reference and not mine:
            continue
        dice = [t for t in mine if t.metric == "dice" and t.cls is None]
        delta = f"{dice[0].median_diff * 100:+.2f}" if dice and not math.isnan(dice[0].median_diff) else "n/a"
        ref = mine[0].reference if mine else "none"
        cells = [_p_for(g, tests, ctx.reference, m, None) for m, _ in tested_metrics()]
        cells += [_p_for(g, tests, ctx.reference, "dice", c) for c in classes] if multi else []
        rows.append([g.label, str(g.labeled), ref, delta, _mean_ci(dice[0] if dice else None), *cells])
    write_csv(out / "wilcoxon.csv", ["group", "labeled", "reference", "metric", "cls", "n_pairs", "n_untied",
                                     "median_diff", "mean_diff", "ci_low", "ci_high", "p", "reason"],
              [[t.group, t.labeled, t.reference, t.metric, "mean" if t.cls is None else t.cls, t.n_pairs,
                t.n_untied, t.median_diff, t.mean_diff, t.ci_low, t.ci_high, t.p, t.reason] for t in tests])
    notes = [f"Paired two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero differences dropped) "
             f"of each method against {ctx.reference} with the same labeled count, pairing cases by id; a "
             f"case's value is its mean over the seeds of a group; pairs with an undefined value are "
             f"dropped; n = pairs used. n/a when there are no pairs, all pairs are tied, or fewer untied "
             f"pairs than the minimum, {min_pairs} ('k untied'; below 6 a two-sided p < 0.05 is unattainable). ΔDice: median per-case difference "
             f"(method − reference) in percentage points; mean ΔDice with its 95% percentile-bootstrap "
             f"interval over the paired cases (10 000 resamples).", ctx.split_text(),
             data_note([r for g in groups for r in g.runs])]
    return Table(f"Wilcoxon signed-rank tests against {ctx.reference}", header, rows, notes)


def _mean_ci(test: PairedTest | None) -> str:
    if test is None or math.isnan(test.mean_diff):
        return "n/a"
    if math.isnan(test.ci_low):
        return f"{test.mean_diff * 100:+.2f}"
    return f"{test.mean_diff * 100:+.2f} [{test.ci_low * 100:+.2f}, {test.ci_high * 100:+.2f}]"


INTENSITY_TEXT = {"file": "as the files hold them (data.intensity: file)",
                  "zscore": "each volume re-z-scored over itself (data.intensity: zscore)"}


def data_note(runs: list[RunRecord]) -> str:
    """Which intensity normalisation and validation scheme the runs used."""
    modes = sorted({r.exp.data.intensity for r in runs})
    text = "Intensities: " + "; ".join(INTENSITY_TEXT.get(m, m) for m in modes) + "."
    if len(modes) > 1:
        text += " The runs differ in this; methods are split by it."
    folds = sorted({(r.exp.data.folds, r.exp.data.fold) for r in runs if r.exp.data.folds})
    if folds:
        text += (f" Validation: {folds[0][0]}-fold cross-validation over the non-labeled training ids "
                 f"(folds used: {', '.join(str(f) for _, f in folds)}); each run is scored on its own "
                 f"fold, so a method's cases are pooled over folds.")
    return text


def runs_table(records: list[RunRecord]) -> Table:
    """Which run folders the report read, and what each contributed."""
    rows = []
    for r in records:
        rows.append([r.run_dir.name, r.method, str(r.labeled), str(r.seed), str(r.exp.train.iterations),
                     r.eval_dir.name if r.eval_dir else "missing",
                     str(len({row.case for row in r.rows}))])
    missing = sum(r.eval_dir is None for r in records)
    # Said only when it is true: a note about absent evaluations under a table of complete runs misleads.
    notes = [f"{missing} run(s) without the requested evaluation folder: in the training curves only, "
             "not in the tables or tests."] if missing else []
    return Table("Runs read", ["Run folder", "Method", "Labeled", "Seed", "Iterations", "Evaluation", "Cases"],
                 rows, notes)
