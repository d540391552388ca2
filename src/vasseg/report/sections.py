"""The report's sections: each turns the collected runs into blocks and writes its files.

A section gets a :class:`Context` (options, output folders, runs and groups) and returns blocks.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vasseg.report.collect import Group, RunRecord, run_checkpoint, seed_averaged
from vasseg.rundir import RunDir
from vasseg.report.document import Block, Figure, Heading, Paragraph, Table, write_csv
from vasseg.report.features import DEFAULT_LAYER, MAX_CASES, MAX_POINTS, PER_CLASS
from vasseg.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportOptions:
    """What ``vasseg report`` is asked for (see :mod:`vasseg.report.cli` for the flags)."""

    eval_name: str = "val_last"
    grid: str = ""  # scoring grid: "" = cases.csv (the primary one), or native / model
    reference: str | None = None  # default: supervised when present, else the first method
    cases: tuple[str, ...] = ()  # default: default_cases() (a typical and the hardest case)
    layer: str = DEFAULT_LAYER
    device: str = "auto"
    data_root: str | None = None
    skip: frozenset[str] = frozenset()
    embedding: str = "auto"
    feature_run: str | None = None
    feature_baseline: str | None = None
    feature_voxels: int = PER_CLASS
    feature_cases: int = MAX_CASES
    feature_points: int = MAX_POINTS  # per embedding (t-SNE time grows with it)
    min_pairs: int = 6
    slice_axis: int = 2
    title: str = "vasseg report"
    progress: bool = True  # a progress bar over the sections


@dataclass
class Context:
    options: ReportOptions
    out_dir: Path
    records: list[RunRecord]
    groups: list[Group]  # every run (training curves)
    evaluated: list[Group]  # runs with evaluation rows (tables and figures)
    reference: str
    device: torch.device
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def figures(self) -> Path:
        return self.out_dir / "figures"

    @property
    def tables(self) -> Path:
        return self.out_dir / "tables"

    def rel(self, path: Path) -> str:
        return path.relative_to(self.out_dir).as_posix()


def by_dataset(groups: list[Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = {}
    for g in groups:
        out.setdefault(g.dataset, []).append(g)
    return out


def class_names(run: RunRecord) -> list[str]:
    """Names of every class including background (see :func:`vasseg.classes.class_names`)."""
    return [run.class_name(c) for c in range(run.exp.data.num_classes)]


def _suffix(i: int) -> str:
    return "" if i == 0 else f"_{i + 1}"


def no_results(ctx: Context) -> list[Block]:
    return [Paragraph(f"No run has eval/{ctx.options.eval_name}/cases.csv: run `vasseg evaluate RUN "
                      f"--split ...` first, or choose another folder with --eval.")]


def runs_overview(ctx: Context) -> list[Block]:
    """What was read: a sentence and the table of run folders."""
    from vasseg.report.tables import runs_table

    groups = ", ".join(f"{g.label} ({g.labeled} labeled, {len(g.runs)} run{'s' * (len(g.runs) > 1)})"
                       for g in ctx.groups)
    text = (f"{len(ctx.records)} runs in {len(ctx.groups)} groups: {groups}. Tables and figures use "
            f"eval/{ctx.options.eval_name}; reference method for the tests: {ctx.reference}.")
    return [Paragraph(text), runs_table(ctx.records)]


# --------------------------------------------------------------------------- tables and box plots


def tables_section(ctx: Context) -> list[Block]:
    from vasseg.report.stats import all_tests
    from vasseg.report.tables import EvalContext, fold_table, table_one, table_two, wilcoxon_table

    if not ctx.evaluated:
        return no_results(ctx)
    blocks: list[Block] = [Heading("Tables")]
    grids = tuple(sorted({row.grid for g in ctx.evaluated for r in g.runs for row in r.rows} - {""}))
    ectx = EvalContext(ctx.options.eval_name, ctx.reference, grids)
    for i, groups in enumerate(by_dataset(ctx.evaluated).values()):
        out = ctx.tables / f"dataset{_suffix(i)}" if i else ctx.tables
        tests = all_tests(groups, ctx.reference, ctx.options.min_pairs)
        blocks += [table_one(groups, tests, ectx, out), wilcoxon_table(groups, tests, ectx, out, ctx.options.min_pairs),
                   table_two(groups, ectx, out)]
        folds = fold_table(groups, out)
        blocks += [folds] if folds else []
    return blocks


def boxplot_section(ctx: Context) -> list[Block]:
    from vasseg.report.figures import dice_boxplot

    if not ctx.evaluated:
        return []
    blocks: list[Block] = [Heading("Per-case Dice (Fig. 4)")]
    for i, groups in enumerate(by_dataset(ctx.evaluated).values()):
        path = dice_boxplot(groups, ctx.figures / f"boxplot_dice{_suffix(i)}.png")
        blocks.append(Figure(ctx.rel(path), f"Per-case Dice per class and method ({groups[0].dataset}, "
                                            f"eval/{ctx.options.eval_name}); a dot is one case (its mean over "
                                            f"the group's seeds), boxes span the quartiles, whiskers 1.5 IQR."))
    return blocks


# --------------------------------------------------------------------------- qualitative


CASES_RULE = ("a typical and the hardest case: the median and the lowest per-case Dice averaged over "
              "every method shown (no method picks them)")


def default_cases(groups: list[Group]) -> list[str]:
    """The typical and the hardest case every group was evaluated on (see :data:`CASES_RULE`).

    Per case the Dice over classes, averaged over a group's seeds, then over the groups; ties
    go by case id. Alphabetical picks happened to show two easy cases of a split whose failures
    (empty predictions) were the story.
    """
    common = None
    for g in groups:
        ids = {row.case for r in g.runs for row in r.rows}
        common = ids if common is None else common & ids
    if not common:
        return []
    per_group = [seed_averaged(g, "dice") for g in groups]
    defined = {c: [v[c] for v in per_group if not math.isnan(v[c])] for c in common}
    score = {c: sum(vals) / len(vals) if vals else -1.0 for c, vals in defined.items()}
    ordered = sorted(common, key=lambda c: (score[c], c))
    return list(dict.fromkeys([ordered[(len(ordered) - 1) // 2], ordered[0]]))


def qualitative_section(ctx: Context) -> list[Block]:
    from vasseg.report.qualitative import predict_views, render_figure, slices_figure

    if not ctx.evaluated or {"slices", "render3d"} <= ctx.options.skip:
        return []
    groups = list(by_dataset(ctx.evaluated).values())[0]
    ids = list(ctx.options.cases) or default_cases(groups)
    chosen = "" if ctx.options.cases else f" ({CASES_RULE}; --cases chooses others)"
    views = predict_views(groups, ids, ctx.device, ctx.options.data_root)
    ckpts = ", ".join(f"{g.label}: seed {g.representative.seed}, {run_checkpoint(g.representative)}"
                      for g in groups)
    blocks: list[Block] = [Heading("Qualitative results (Figs. 5-6)")]
    if "slices" not in ctx.options.skip:
        path = slices_figure(views, ctx.figures / "qualitative_slices.png", ctx.options.slice_axis,
                             class_names(groups[0].representative))
        blocks.append(Figure(ctx.rel(path), (
            f"Cases {', '.join(ids)}{chosen}: the slice (axis {ctx.options.slice_axis}) with the most ground-truth "
            f"foreground, zoomed to the structure. Ground truth dashed (filled in the first column), "
            f"prediction solid, one colour per class; Dice over the whole volume. Predictions by each "
            f"group's representative seed (the median of its seeds' mean Dice; the upper one of two) with "
            f"the evaluated checkpoint ({ckpts}).")))
    if "render3d" not in ctx.options.skip:
        path = render_figure(views, ctx.figures / "qualitative_3d.png")
        blocks.append(Figure(ctx.rel(path), (
            f"Cases {', '.join(ids)}: marching-cubes surfaces of the ground truth and each prediction "
            f"(same runs), in mm, cropped to the union of all masks; one colour per class (translucent where "
            f"a panel shows several, so no structure hides another); masks lightly smoothed for display "
            f"(Gaussian, sigma 0.7 voxel; structures of a few voxels unsmoothed).")))
    return blocks


# --------------------------------------------------------------------------- feature space


def pick_feature_groups(ctx: Context) -> list[Group]:
    """``[baseline, run]`` (or one group): by flag, else the reference and VAS / the next method."""
    groups = ctx.evaluated or ctx.groups
    base_name = ctx.options.feature_baseline or ctx.reference
    base = next((g for g in groups if g.method == base_name), groups[0])
    wanted = [ctx.options.feature_run] if ctx.options.feature_run else ["vas"]
    run = next((g for g in groups if g.method in wanted and g is not base), None)
    if run is None and ctx.options.feature_run:
        raise ConfigError(f"--feature-run {ctx.options.feature_run!r}: no such method among the runs")
    run = run or next((g for g in groups if g is not base and g.labeled == base.labeled), None)
    run = run or next((g for g in groups if g is not base), None)
    return [base] if run is None else [base, run]


def sample_group(ctx: Context, group: Group) -> tuple[Any, int]:
    """A feature sample of the group's representative seed, and the step of its checkpoint."""
    from vasseg.data.setup import load_cases
    from vasseg.report.features import collect_features, network_of
    from vasseg.report.qualitative import load_trained

    run, opts = group.representative, ctx.options
    loaded = load_trained(run, ctx.device, opts.data_root)
    ids = run.split.labeled[:opts.feature_cases] + run.split.unlabeled[:opts.feature_cases]
    key = f"cases:{run.exp.data.root}:{','.join(ids)}"
    if key not in ctx.cache:
        ctx.cache[key] = load_cases(loaded.exp, ids, progress=False)
    cases = ctx.cache[key]
    n_lab = min(len(run.split.labeled), opts.feature_cases)
    sample = collect_features(network_of(loaded.method), list(cases)[:n_lab], list(cases)[n_lab:],
                              tuple(loaded.exp.data.patch_size), opts.layer, opts.feature_voxels,
                              opts.feature_cases, ctx.device, max_points=opts.feature_points)
    return sample, loaded.step


def features_section(ctx: Context) -> list[Block]:
    from vasseg.report.embedding import embed, embedding_name, side_by_side

    groups = pick_feature_groups(ctx)
    kind = embedding_name(ctx.options.embedding)
    panels, steps = [], []
    for g in groups:
        sample, step = sample_group(ctx, g)
        panels.append((f"{g.label} · {g.labeled} labeled", sample, embed(sample.features, kind)))
        steps.append(step)
    names = class_names(groups[0].representative)
    path = side_by_side(panels, names, ctx.figures / "features.png", kind)
    seeds = ", ".join(f"{g.label}: seed {g.representative.seed}, {run_checkpoint(g.representative)}" for g in groups)
    caption = (f"Voxel features of layer {ctx.options.layer} (up-sampled to the label grid), {kind} per "
               f"run; up to {ctx.options.feature_voxels} voxels per class from each of up to "
               f"{ctx.options.feature_cases} labeled (triangles) and unlabeled (circles) training volumes "
               f"of the run's split, coloured by class. Unlabeled voxels are coloured by their ground "
               f"truth (the training cases all have labels; the method never used them). Representative "
               f"seed of each group with its evaluated checkpoint ({seeds}).")
    return [Heading("Feature space (Fig. 7)"), Figure(ctx.rel(path), caption),
            scores_table(ctx, [(p[0], step, p[1]) for p, step in zip(panels, steps)], "features.csv")]


def scores_table(ctx: Context, samples: list[tuple[str, str, Any]], csv_name: str) -> Table:
    from vasseg.report.embedding import feature_scores, format_score

    rows, raw = [], []
    for name, step, sample in samples:
        s = feature_scores(sample)
        rows.append([name, str(step), sample.layer, str(s.points), format_score(s.silhouette),
                     format_score(s.centroid_gap)])
        raw.append([name, step, sample.layer, s.points, s.silhouette, s.centroid_gap])
    header = ["Run", "Step", "Layer", "Voxels", "Silhouette (class)", "L-U centroid gap"]
    write_csv(ctx.tables / csv_name, ["run", "step", "layer", "voxels", "silhouette", "centroid_gap"], raw)
    notes = ["Silhouette of the classes in the standardised feature space (higher: classes better "
             "separated). L-U centroid gap: per class, the distance between the centroids of its labeled "
             "and its unlabeled voxels divided by the class's RMS spread, averaged over classes (lower: "
             "unlabeled features follow the labeled ones)."]
    return Table("Feature-space numbers (Table III-like)", header, rows, notes)


def snapshots_section(ctx: Context) -> list[Block]:
    from vasseg.report.embedding import embed, embedding_name, over_steps
    from vasseg.report.features import load_snapshots, subsample

    kind = embedding_name(ctx.options.embedding)
    rows, samples = [], []
    for g in ctx.groups:
        with_snaps = [r for r in g.runs if any(RunDir(r.run_dir).features.glob("step_*.npz"))]
        run = g.representative if g.representative in with_snaps else (with_snaps or [None])[0]
        snaps = load_snapshots(run.run_dir) if run is not None else []
        if snaps:
            name = f"{g.label} · {g.labeled} labeled"
            snaps = [(step, subsample(s, ctx.options.feature_points, step)) for step, s in snaps]
            rows.append((name, [(step, s, embed(s.features, kind)) for step, s in snaps]))
            samples += [(name, step, s) for step, s in snaps]
    if not rows:
        return [Heading("Feature alignment over training"), Paragraph(
            "No run saved feature snapshots (set run.feature_snapshots=[...] steps when training).", note=True)]
    path = over_steps(rows, class_names(ctx.groups[0].runs[0]), ctx.figures / "feature_snapshots.png", kind)
    caption = (f"Student features during training (run.feature_snapshots) of one seed per group (the "
               f"representative one when it saved snapshots): per step a {kind} of its sample, labeled voxels (triangles) and unlabeled voxels "
               f"(circles) in separate panels with the same coordinates, coloured by ground-truth class.")
    return [Heading("Feature alignment over training (Table III)"), Figure(ctx.rel(path), caption),
            scores_table(ctx, samples, "feature_snapshots.csv")]


# --------------------------------------------------------------------------- curves


def curves_section(ctx: Context) -> list[Block]:
    from vasseg.report.figures import training_curves

    path = training_curves(ctx.groups, ctx.figures / "training_curves.png")
    if path is None:
        return []
    return [Heading("Training curves"), Figure(ctx.rel(path), (
        "From each run's scalars.jsonl: every loss term, the loss weights, learning rate, gradient norm, "
        "discriminator accuracy and validation scores where logged. One colour per group, one line per "
        "seed (faint: raw, solid: moving average over 2 % of the steps; learning rate and loss weights "
        "exact, never averaged); series with ≤ 30 points as markers."))]


SECTIONS = {
    "tables": tables_section,
    "boxplot": boxplot_section,
    "qualitative": qualitative_section,
    "features": features_section,
    "snapshots": snapshots_section,
    "curves": curves_section,
}
# Names accepted by --skip: the sections, plus the two halves of the qualitative section.
SKIPPABLE = (*SECTIONS, "slices", "render3d")
