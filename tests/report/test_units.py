"""The report's pieces on hand-made inputs: statistics, grouping, feature sampling, rendering."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from vasseg.config import build_experiment
from vasseg.data.splits import Split
from vasseg.report.build import reference_first
from vasseg.report.collect import (
    CaseRow,
    Group,
    RunRecord,
    group_runs,
    parse_eval_name,
    resolve_eval_dir,
    seed_averaged,
)
from vasseg.report.document import Figure, Heading, Paragraph, Table, render_markdown
from vasseg.report.embedding import feature_scores
from vasseg.report.features import (
    FeatureSample,
    crop_around_foreground,
    features_at,
    parse_layer,
    sample_positions,
    subsample,
)
from vasseg.report.figures import drawn_lines, panel_of, panel_order, panel_title, wide_range
from vasseg.report.html import render_html
from vasseg.report.qualitative import surface
from vasseg.report.sections import default_cases
from vasseg.report.stats import all_tests, find_reference, paired_test, wilcoxon_p
from vasseg.report.tables import group_cell, runs_table

SPLIT = Split(labeled=["a"], unlabeled=["b"])


def record(method: str, seed: int, dice: dict[str, float], **params: float) -> RunRecord:
    exp = build_experiment({"method": {"name": method, **params}, "train": {"seed": seed}})
    rows = [CaseRow(case, 1, {"dice": d, "jaccard": d, "hd95": math.nan if d == 0 else 1.0}, "ok")
            for case, d in dice.items()]
    return RunRecord(Path(f"/runs/{method}_{seed}"), exp, SPLIT, Path("/e/val_last"), rows)


def group(*runs: RunRecord) -> Group:
    return Group("la", runs[0].method, runs[0].labeled, "", list(runs))


# --------------------------------------------------------------------------- statistics


def test_wilcoxon_p_is_scipys_two_sided_test() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0.8, 0.05, 12), rng.normal(0.75, 0.05, 12)
    p, reason = wilcoxon_p(a, b)
    assert reason == "" and p == pytest.approx(stats.wilcoxon(a, b).pvalue)


@pytest.mark.parametrize(("a", "b", "words"), [
    ([], [], "no common cases"),
    ([0.5, 0.6, 0.7], [0.5, 0.6, 0.7], "all pairs tied"),
    ([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], [0.2, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7], "4 untied pairs < 6"),
])
def test_wilcoxon_p_is_na_with_a_reason(a: list[float], b: list[float], words: str) -> None:
    p, reason = wilcoxon_p(np.array(a), np.array(b))
    assert math.isnan(p) and reason == words


def test_pairs_match_case_ids_average_seeds_and_drop_undefined() -> None:
    ids = [f"c{i}" for i in range(8)]
    ref = group(record("supervised", 1, {c: 0.5 for c in ids}))
    # Two seeds, cases listed in another order, one extra case, one case undefined in both seeds.
    s1 = {c: 0.6 + 0.01 * i for i, c in enumerate(reversed(ids))} | {"extra": 0.9, "c0": math.nan}
    s2 = {c: 0.7 + 0.01 * i for i, c in enumerate(reversed(ids))} | {"c0": math.nan}
    mine = group(record("mean_teacher", 1, s1), record("mean_teacher", 2, s2))
    averaged = seed_averaged(mine, "dice", 1)
    assert averaged["c7"] == pytest.approx(0.65) and averaged["extra"] == pytest.approx(0.9)
    test = paired_test(mine, ref, "dice", 1)
    assert test.n_pairs == 7  # c1..c7: "extra" has no partner, c0 is undefined
    a = np.array([averaged[c] for c in sorted(ids[1:])])
    assert test.p == pytest.approx(stats.wilcoxon(a, np.full(7, 0.5)).pvalue)
    assert test.median_diff == pytest.approx(float(np.median(a - 0.5)))


def test_cells_average_cases_per_seed_then_seeds() -> None:
    one = group(record("supervised", 1, {"x": 0.5, "y": 0.7, "z": 0.0}))
    cell = group_cell(one, "dice")
    assert (cell.over, cell.n) == ("cases", 3)
    assert cell.mean == pytest.approx(40.0) and cell.std == pytest.approx(100 * np.std([0.5, 0.7, 0.0], ddof=1))
    hd = group_cell(one, "hd95")
    assert (hd.n, hd.undefined, hd.text()) == (2, 1, "1.00 ± 0.00 (1 n/a)")
    two = group(record("supervised", 1, {"x": 0.5, "y": 0.7}), record("supervised", 2, {"x": 0.9, "y": 0.9}))
    cell = group_cell(two, "dice")
    assert (cell.over, cell.n) == ("seeds", 2)
    assert cell.mean == pytest.approx(75.0) and cell.std == pytest.approx(100 * np.std([0.6, 0.9], ddof=1))


def test_class_mean_cells_count_the_undefined_classes_they_skip() -> None:
    # Two cases, three organs; the method predicts nothing for organ 3 in both cases and for
    # organ 2 in case y: the class means skip those, and the cell says how many were skipped.
    rec = record("supervised", 1, {})
    hd = {("x", 1): 1.0, ("x", 2): 3.0, ("x", 3): math.nan, ("y", 1): 2.0, ("y", 2): math.nan, ("y", 3): math.nan}
    rows = [CaseRow(case, cls, {"dice": 0.0 if math.isnan(v) else 0.8, "jaccard": 0.5, "hd95": v}, "ok")
            for (case, cls), v in hd.items()]
    g = group(RunRecord(rec.run_dir, rec.exp, SPLIT, rec.eval_dir, rows))
    cell = group_cell(g, "hd95")
    assert (cell.n, cell.mean, cell.undefined) == (2, pytest.approx(2.0), 3)  # case means 2.0 and 2.0
    assert cell.text().endswith("(3 n/a)")
    assert group_cell(g, "hd95", 3).text() == "– (2 n/a)"
    assert group_cell(g, "dice").undefined == 0


def test_default_cases_are_the_typical_and_the_hardest_over_all_methods() -> None:
    a = group(record("supervised", 1, {"c1": 0.9, "c2": 0.5, "c3": 0.7, "c4": 0.8, "x": 0.1}))
    b = group(record("mean_teacher", 1, {"c1": 0.9, "c2": 0.1, "c3": 0.7, "c4": 0.6}),
              record("mean_teacher", 2, {"c1": 0.9, "c2": 0.3, "c3": 0.7, "c4": 0.6}))
    # Means over the groups (b's seeds averaged first): c1 0.9, c2 0.35, c3 0.7, c4 0.7; "x" is
    # not in b. Median of four = the 2nd lowest (c3 before c4 by id), hardest = c2.
    assert default_cases([a, b]) == ["c3", "c2"]
    assert default_cases([group(record("supervised", 1, {"only": 0.5}))]) == ["only"]
    assert default_cases([a, group(record("vas", 1, {"other": 0.5}))]) == []


# --------------------------------------------------------------------------- runs and groups


def test_groups_are_seeds_and_ablations_are_separate_groups() -> None:
    runs = [record("mean_teacher", 1, {}), record("mean_teacher", 2, {}),
            record("mean_teacher", 1, {}, consistency=1.0), record("supervised", 1, {})]
    groups = group_runs(runs)
    labels = sorted((g.label, len(g.runs)) for g in groups)
    assert labels == [("mean_teacher (consistency=0.1)", 2), ("mean_teacher (consistency=1.0)", 1),
                      ("supervised", 1)]


def test_runs_table_notes_missing_evaluations_only_when_there_are_some() -> None:
    complete = [record("supervised", 1, {"a": 0.5}), record("mean_teacher", 1, {"a": 0.6})]
    assert runs_table(complete).notes == []
    cut = record("vas", 1, {})
    cut.eval_dir = None
    table = runs_table([*complete, cut])
    assert table.rows[-1][5] == "missing"
    assert table.notes and table.notes[0].startswith("1 run(s) without the requested evaluation folder")


def test_a_batch_size_control_is_its_own_group_and_is_tested_against_the_main_runs() -> None:
    """A supervised run with 2 labeled patches per step is not a third seed of the one with 4."""
    dice = {f"c{i}": 0.5 + 0.03 * i for i in range(8)}
    main = [record("supervised", s, dice) for s in (1, 2)]
    control = record("supervised", 1, {c: d - 0.1 for c, d in dice.items()})
    for run, batch in ((main[0], 4), (main[1], 4), (control, 2)):
        run.exp = build_experiment({"method": {"name": "supervised"}, "train": {"seed": run.seed},
                                    "data": {"labeled_bs": batch}})
    vas = record("vas", 1, {c: d + 0.05 for c, d in dice.items()})
    for run in (*main, control, vas):
        for row in run.rows:
            row.values["asd"] = 1.0
    groups = reference_first(group_runs([control, *main, vas]), "supervised")
    assert [(g.label, len(g.runs)) for g in groups] == [
        ("supervised (data.labeled_bs=4)", 2), ("supervised (data.labeled_bs=2)", 1), ("vas", 1)]
    assert find_reference(groups[1], groups, "supervised") is groups[0]
    tests = {(t.group, t.reference) for t in all_tests(groups, "supervised") if t.metric == "dice"}
    assert tests == {("supervised (data.labeled_bs=2)", "supervised (data.labeled_bs=4)"),
                     ("vas", "supervised (data.labeled_bs=4)")}


def test_eval_names_and_the_last_alias(tmp_path: Path) -> None:
    assert parse_eval_name("val_last") == ("val", "last")
    assert parse_eval_name("test_step_006000") == ("test", "step_006000")
    assert parse_eval_name("my_ids_best") == ("my_ids", "best")
    for name in ("test_step_000002", "test_step_000010", "val_step_000020"):
        (tmp_path / "eval" / name).mkdir(parents=True)
        (tmp_path / "eval" / name / "cases.csv").write_text("case\n")
    assert resolve_eval_dir(tmp_path, "test_last").name == "test_step_000010"
    assert resolve_eval_dir(tmp_path, "test_step_000002").name == "test_step_000002"
    assert resolve_eval_dir(tmp_path, "test_best") is None


# --------------------------------------------------------------------------- features


def test_features_at_reads_the_upsampled_map() -> None:
    fmap = torch.randn(1, 3, 4, 5, 6)
    grid = (16, 20, 12)
    full = F.interpolate(fmap, size=grid, mode="trilinear", align_corners=False)[0]
    positions = np.array([[0, 0, 0], [15, 19, 11], [7, 3, 5], [1, 18, 0]])
    got = features_at(fmap, positions, grid)
    want = torch.stack([full[:, x, y, z] for x, y, z in positions])
    assert torch.allclose(got, want, atol=1e-5)


def test_sampling_is_balanced_and_bounded() -> None:
    label = np.zeros((8, 8, 8), np.uint8)
    label[:2, :2, :2] = 1  # 8 voxels of class 1
    rows = sample_positions(label, 20, np.random.default_rng(0))
    counts = np.bincount(rows[:, 3])
    assert list(counts) == [20, 8]
    assert (label[rows[:, 0], rows[:, 1], rows[:, 2]] == rows[:, 3]).all()
    assert len({tuple(r) for r in rows}) == len(rows)  # without replacement


def test_crop_pads_small_volumes_and_centres_the_structure() -> None:
    image = torch.randn(1, 10, 40, 40)
    label = torch.zeros(10, 40, 40, dtype=torch.uint8)
    label[3:6, 30:36, 30:36] = 1
    crop, lab = crop_around_foreground(image, label, (16, 16, 16))
    assert crop.shape == (1, 16, 16, 16) and lab.shape == (16, 16, 16)
    assert int(lab.sum()) == int(label.sum())


def test_surfaces_of_tiny_and_empty_masks() -> None:
    mask = np.zeros((12, 12, 12), bool)
    assert surface(mask, (1.0, 1.0, 1.0)) is None
    mask[5, 6, 7] = True  # one voxel: smoothing alone would leave nothing above the 0.5 level
    verts, faces = surface(mask, (2.0, 1.0, 1.0))
    assert len(faces) > 0
    assert np.allclose(verts.mean(0), (10.0, 6.0, 7.0), atol=0.5)  # in mm, around the voxel
    big = np.zeros((12, 12, 12), bool)
    big[3:9, 3:9, 3:9] = True
    verts, _ = surface(big, (1.0, 1.0, 1.0))
    assert verts.min() >= 2.0 and verts.max() <= 9.0  # smoothed, still around the cube


def test_subsample_keeps_every_stratum_and_the_bound() -> None:
    n = 1000
    cls = np.repeat([0, 1], n // 2)
    labeled = np.tile([True, False], n // 2)
    sample = FeatureSample(np.random.rand(n, 3).astype(np.float32), cls, labeled, np.array(["c"] * n),
                           np.zeros(n, bool))
    small = subsample(sample, 100)
    assert len(small.cls) == 100
    assert {(c, l) for c, l in zip(small.cls, small.labeled)} == {(0, True), (0, False), (1, True), (1, False)}


def test_snapshot_round_trip_and_layer_names(tmp_path: Path) -> None:
    sample = FeatureSample(np.ones((2, 3), np.float32), np.array([0, 1]), np.array([True, False]),
                           np.array(["a", "b"]), np.array([False, True]), "encoder:1")
    back = FeatureSample.load(sample.save(tmp_path / "step_000005.npz", step=5))
    assert back.layer == "encoder:1" and back.case.tolist() == ["a", "b"] and back.from_prediction[1]
    assert parse_layer("encoder:4") == ("encoder", 4) and parse_layer("decoder:0") == ("decoder", 0)
    for bad in ("decoder:4", "encoder:5", "middle:1", "decoder"):
        with pytest.raises(ValueError, match="encoder:0..4"):
            parse_layer(bad)


def test_feature_scores_see_separation_and_alignment() -> None:
    rng = np.random.default_rng(0)
    cls = np.repeat([0, 1], 200)
    labeled = np.tile([True, False], 200)
    feats = rng.normal(size=(400, 8)) + cls[:, None] * 10.0
    aligned = feature_scores(FeatureSample(feats, cls, labeled, np.array(["c"] * 400), np.zeros(400, bool)))
    assert aligned.silhouette > 0.8 and aligned.centroid_gap < 0.2
    shifted = feats + (~labeled)[:, None] * 3.0
    apart = feature_scores(FeatureSample(shifted, cls, labeled, np.array(["c"] * 400), np.zeros(400, bool)))
    assert apart.centroid_gap > 1.0


# --------------------------------------------------------------------------- curves and rendering


def test_curve_panels_group_related_terms() -> None:
    assert panel_of("d_acc_real") == panel_of("d_acc_fake") == "discriminator accuracy"
    assert panel_of("w_cons") == "loss weights" and panel_of("grad_norm_d") == "gradient norm"
    assert panel_of("step") is None
    order = panel_order(["val_dice", "learning rate", "loss_sup", "loss weights", "loss",
                         "discriminator accuracy"])
    assert order == ["loss", "loss_sup", "loss weights", "learning rate", "discriminator accuracy", "val_dice"]


def test_schedules_are_drawn_exactly_and_noisy_terms_smoothed() -> None:
    lr = np.where(np.arange(300) < 200, 1e-2, 1e-3)  # a step schedule
    assert [k for k, _ in drawn_lines("learning rate", lr)] == ["line"]
    assert np.array_equal(drawn_lines("learning rate", lr)[0][1], lr)  # the drop stays a step
    assert np.array_equal(drawn_lines("loss weights", lr)[0][1], lr)
    noisy = np.random.default_rng(0).normal(size=300)
    kinds = drawn_lines("loss", noisy)
    assert [k for k, _ in kinds] == ["faint", "line"] and np.abs(kinds[1][1]).mean() < np.abs(noisy).mean()
    assert [k for k, _ in drawn_lines("val_dice", noisy[:10])] == ["markers"]


def test_wide_ranges_get_a_log_axis_and_families_a_short_title() -> None:
    vas = np.linspace(200.0, 2.5, 300)  # beta = 100 makes VAS's total loss start at 200
    mt = np.full(300, 0.6)
    assert wide_range([vas, mt]) and not wide_range([mt, mt * 2]) and not wide_range([mt - 0.6])
    assert not wide_range([np.array([np.nan])])
    assert panel_title("vox_l per class", [f"vox_l_c{i}" for i in range(9)]) == "vox_l per class (9 classes)"
    assert panel_title("gradient norm", ["grad_norm", "grad_norm_d"]) == "gradient norm: grad_norm, grad_norm_d"
    assert panel_title("loss", ["loss"]) == "loss"


def test_markdown_and_html_render_the_same_blocks_escaped() -> None:
    blocks = [Heading("A <b>", 1), Paragraph("x | y"), Table("T", ["m", "v"], [["a|b", "1 ± 2"]], ["note & more"]),
              Figure("figures/f.png", "cap")]
    md = render_markdown(blocks)
    assert "| a\\|b | 1 ± 2 |" in md and "![cap](figures/f.png)" in md
    html = render_html(blocks, "t")
    assert "<h1>A &lt;b&gt;</h1>" in html and "note &amp; more" in html and 'src="figures/f.png"' in html


def test_paired_tests_carry_the_mean_difference_and_its_bootstrap_interval() -> None:
    from vasseg.report.stats import bootstrap_ci

    rng = np.random.default_rng(3)
    ids = [f"c{i}" for i in range(40)]
    base = {c: float(v) for c, v in zip(ids, rng.uniform(0.5, 0.9, 40))}
    ref = group(record("mean_teacher", 1, base))
    mine = group(record("vas", 1, {c: v + 0.02 + 0.01 * rng.standard_normal() for c, v in base.items()}))
    test = paired_test(mine, ref, "dice", 1)
    diff = np.array([mine.runs[0].rows[i].values["dice"] - base[c] for i, c in enumerate(ids)])
    assert test.mean_diff == pytest.approx(diff.mean())
    assert test.ci_low < test.mean_diff < test.ci_high
    # The bootstrap interval of a mean is close to the normal one, mean +- 1.96 s / sqrt(n).
    half = 1.96 * diff.std(ddof=1) / math.sqrt(diff.size)
    assert test.ci_low == pytest.approx(diff.mean() - half, abs=half * 0.15)
    assert test.ci_high == pytest.approx(diff.mean() + half, abs=half * 0.15)
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([0.1])))  # one pair has no interval
    assert bootstrap_ci(diff) == bootstrap_ci(diff)  # seeded


def test_folds_pool_into_one_group_and_intensity_modes_split_it() -> None:
    from vasseg.report.tables import data_note

    def run(seed: int, fold: int, intensity: str) -> RunRecord:
        exp = build_experiment({"method": {"name": "supervised"}, "train": {"seed": seed},
                                "data": {"folds": 3, "fold": fold, "intensity": intensity}})
        return RunRecord(Path(f"/runs/s{seed}_{intensity}"), exp, SPLIT, Path("/e/val_last"), [])

    runs = [run(1337 + k, k, "zscore") for k in range(3)] + [run(1339, 2, "file")]
    labels = sorted((g.label, len(g.runs)) for g in group_runs(runs))
    assert labels == [("supervised (data.intensity=file)", 1), ("supervised (data.intensity=zscore)", 3)]
    assert [g.label for g in group_runs(runs[:3])] == ["supervised"]
    note = data_note(runs)
    assert "re-z-scored" in note and "as the files hold them" in note and "3-fold" in note


def cv_run(seed: int, fold: int, dice: float) -> RunRecord:
    """A run on fold ``fold`` of 3 with 4 cases of Dice ``dice`` + 0.01 i."""
    exp = build_experiment({"method": {"name": "vas"}, "train": {"seed": seed}, "data": {"folds": 3, "fold": fold}})
    rows = [CaseRow(f"f{fold}c{i}", 1, {"dice": dice + 0.01 * i}, "ok") for i in range(4)]
    return RunRecord(Path(f"/runs/s{seed}"), exp, SPLIT, Path("/e/val_last"), rows)


def test_under_cross_validation_a_seed_is_one_run_per_fold() -> None:
    from vasseg.report.tables import _seeds_text, statistic_note

    run = cv_run
    # Seed set A (1337 + k) and B (2337 + k); fold 2 differs from the others by far more than the seeds.
    first = [run(1337, 0, 0.70), run(1338, 1, 0.70), run(1339, 2, 0.40)]
    second = [run(2337, 0, 0.72), run(2338, 1, 0.72), run(2339, 2, 0.42)]
    g = group(*first, *second)
    assert [[r.seed for r in rep] for rep in g.replicates] == [[1337, 1338, 1339], [2337, 2338, 2339]]
    cell = group_cell(g, "dice")
    means = [np.mean([0.70 + 0.01 * i for i in range(4)] * 2 + [0.40 + 0.01 * i for i in range(4)]) + d
             for d in (0.0, 0.02)]
    assert cell.over == "seeds" and cell.n == 2
    assert cell.mean == pytest.approx(100 * np.mean(means)) and cell.std == pytest.approx(100 * np.std(means, ddof=1))
    assert _seeds_text(g) == "2 × 3 folds"
    assert "not folds" in statistic_note([g])
    # A second seed on fold 0 only: one complete seed, the extra run left out of the ± (over cases).
    partial = group(*first, second[0])
    assert len(partial.replicates) == 1 and _seeds_text(partial) == "1† × 3 folds (+1 run)"
    assert group_cell(partial, "dice").over == "cases" and group_cell(partial, "dice").n == 12
    assert "left out of the mean ± std" in statistic_note([partial])
    # Seeds of one fold (a search on fold 0): every run its own seed, as without folds.
    same_fold = group(first[0], second[0])
    assert [len(rep) for rep in same_fold.replicates] == [1, 1] and _seeds_text(same_fold) == "2"


def test_the_fold_table_gives_every_run_and_every_seed_over_all_folds(tmp_path: Path) -> None:
    from vasseg.report.tables import fold_table

    runs = [cv_run(1337, 0, 0.70), cv_run(1338, 1, 0.60), cv_run(1339, 2, 0.40), cv_run(2337, 0, 0.80)]
    table = fold_table([group(*runs)], tmp_path)
    assert table is not None and table.header[2:] == ["fold 0", "fold 1", "fold 2", "every fold (per seed)"]
    # fold 0: seeds 1337 / 2337 in order; every fold: only the complete seed (1337..1339), 12 cases
    assert table.rows == [["vas", "8", "71.50 / 81.50", "61.50", "41.50", "58.17"]]
    lines = (tmp_path / "folds.csv").read_text().splitlines()
    assert lines[0] == "group,labeled,fold,seed,dice_percent" and len(lines) == 5
    assert fold_table([group(cv_run(1337, 0, 0.7), cv_run(2337, 0, 0.8))], tmp_path) is None  # one fold
