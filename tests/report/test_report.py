"""`vasseg report` end to end: short phantom runs -> report folder; every table value is checked
against the per-case CSVs it came from, every figure is a valid PNG, the HTML links resolve."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import vasseg
from vasseg.report import features as features_module
from vasseg.report.build import ReportOptions, build_report

from tests.conftest import single_thread, tiny_experiment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = {"boxplot_dice.png", "qualitative_slices.png", "qualitative_3d.png", "features.png",
           "feature_snapshots.png", "training_curves.png"}


@pytest.fixture(scope="module")
def built(phantom_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two methods (mean teacher with two seeds, supervised with one), trained briefly, reported."""
    with single_thread():
        return _train_and_report(phantom_root, tmp_path_factory.mktemp("report_runs"))



def _train_and_report(phantom_root: Path, out: Path) -> dict[str, Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(features_module, "PER_CLASS", 8)  # small snapshots: t-SNE stays instant
        mp.setattr(features_module, "MAX_CASES", 2)
        for method, seed in (("supervised", 7), ("mean_teacher", 7), ("mean_teacher", 8)):
            # 30 steps at a constant rate: some predictions non-empty, some still empty (NaN rule).
            train = {"seed": seed, "iterations": 30, "lr_step": 30, "ckpt_every": 30, "log_every": 5}
            exp = tiny_experiment(phantom_root, out / "runs", method, train=train,
                                  run={"feature_snapshots": [2, 4]})
            vasseg.train(exp)  # the Python API: the config's feature snapshots are saved
    options = ReportOptions(embedding="tsne", feature_voxels=8, feature_cases=2, device="cpu")
    html = build_report([out / "runs"], out / "report", options)
    return {"runs": out / "runs", "report": out / "report", "html": html}


# --------------------------------------------------------------------------- independent recomputation


def read_runs(runs: Path) -> dict[str, list[list[dict[str, str]]]]:
    """``method -> [rows of cases.csv per seed]``, read with the csv module only."""
    out: dict[str, list[list[dict[str, str]]]] = {}
    for run in sorted(p for p in runs.iterdir() if (p / "config.yaml").is_file()):
        method = yaml.safe_load((run / "config.yaml").read_text())["method"]["name"]
        with (run / "eval" / "val_last" / "cases.csv").open() as fh:
            out.setdefault(method, []).append(list(csv.DictReader(fh)))
    return out


def per_case(rows: list[dict[str, str]], metric: str, cls: str | None) -> list[float]:
    cases: dict[str, list[float]] = {}
    for r in rows:
        if cls is None or r["cls"] == cls:
            cases.setdefault(r["case"], []).append(float(r[metric]))
    return [float(np.nanmean(v)) if not np.all(np.isnan(v)) else math.nan for v in cases.values()]


def expected(seeds: list[list[dict[str, str]]], metric: str, cls: str | None = None) -> tuple[float, float, int, int]:
    """(mean, std, n, undefined): over seeds of the per-seed case means; over cases for one seed."""
    scale = 100.0 if metric in ("dice", "jaccard") else 1.0
    values = [per_case(rows, metric, cls) for rows in seeds]
    undefined = sum(int(np.isnan(v).sum()) for v in values)
    pool = values[0] if len(seeds) == 1 else [np.nanmean(v) if not np.all(np.isnan(v)) else math.nan for v in values]
    kept = np.array([v for v in pool if not math.isnan(v)]) * scale
    std = float(kept.std(ddof=1)) if kept.size > 1 else 0.0
    return (float(kept.mean()) if kept.size else math.nan), std, int(kept.size), undefined


def fmt(mean: float, std: float, n: int, undefined: int) -> str:
    if n == 0:
        return f"– ({undefined} n/a)" if undefined else "n/a"
    text = f"{mean:.2f} ± –" if n == 1 else f"{mean:.2f} ± {std:.2f}"
    return text + (f" ({undefined} n/a)" if undefined else "")


def md_table(markdown: str, caption: str) -> list[dict[str, str]]:
    """The rows of the markdown table under the bold caption starting with ``caption``."""
    lines = markdown.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(f"**{caption}"))
    header = [c.strip() for c in lines[start + 2].strip("|").split("|")]
    rows = []
    for ln in lines[start + 4:]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))))
    return rows


def raw_table(path: Path) -> dict[tuple[str, str, str], dict[str, str]]:
    with path.open() as fh:
        return {(r["group"], r["metric"], r["cls"]): r for r in csv.DictReader(fh)}


# --------------------------------------------------------------------------- tables


TABLE_ONE = {"Dice (%)": "dice", "Jaccard (%)": "jaccard", "95HD (vox)": "hd95", "ASSD* (vox)": "asd",
             "95HD (mm)": "hd95_mm", "ASSD* (mm)": "asd_mm"}


def test_table_one_equals_the_per_case_csvs(built: dict[str, Path]) -> None:
    seeds = read_runs(built["runs"])
    md = (built["report"] / "report.md").read_text()
    rows = {r["Method"]: r for r in md_table(md, "Table I.")}
    raw = raw_table(built["report"] / "tables" / "table1.csv")
    assert set(rows) == {"supervised", "mean_teacher"}
    assert list(rows) == ["supervised", "mean_teacher"]  # the reference first
    for method, runs in seeds.items():
        assert rows[method]["Seeds"] == ("1†" if len(runs) == 1 else str(len(runs)))
        for column, metric in TABLE_ONE.items():
            mean, std, n, undefined = expected(runs, metric)
            assert rows[method][column] == fmt(mean, std, n, undefined), (method, column)
            stored = raw[(method, metric, "mean")]
            assert int(stored["n"]) == n and int(stored["undefined"]) == undefined
            if n:
                assert float(stored["mean"]) == pytest.approx(mean, abs=1e-9)
                assert float(stored["std"]) == pytest.approx(std, abs=1e-9)
    assert rows["supervised"]["Unlabeled"] == "0" and rows["mean_teacher"]["Unlabeled"] == "4"
    assert rows["supervised"]["p Dice vs supervised"] == "reference"


def test_table_two_equals_the_per_case_csvs(built: dict[str, Path]) -> None:
    seeds = read_runs(built["runs"])
    rows = {r["Method"]: r for r in md_table((built["report"] / "report.md").read_text(), "Table II.")}
    for method, runs in seeds.items():
        assert rows[method]["Average Dice (%)"] == fmt(*expected(runs, "dice"))
        assert rows[method]["left atrium (%)"] == fmt(*expected(runs, "dice", "1"))  # LA's class name


def test_the_report_shows_a_progress_bar_over_its_sections(built: dict[str, Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    skip = frozenset({"boxplot", "qualitative", "features", "snapshots"})
    build_report([built["runs"]], tmp_path / "bar", ReportOptions(skip=skip, device="cpu"))
    err = capsys.readouterr().err
    assert "report: 100%" in err and "2/2" in err and "curves" in err
    build_report([built["runs"]], tmp_path / "quiet", ReportOptions(skip=skip, device="cpu", progress=False))
    assert "report:" not in capsys.readouterr().err


def test_wilcoxon_rows_say_why_p_is_not_available(built: dict[str, Path]) -> None:
    md = (built["report"] / "report.md").read_text()
    rows = md_table(md, "Wilcoxon")
    assert [r["Method"] for r in rows] == ["mean_teacher"]
    # Two validation cases: fewer untied pairs than a test at 0.05 needs.
    assert all(rows[0][k].startswith("n/a (") for k in ("p Dice", "p Jaccard", "p 95HD", "p ASSD*"))
    with (built["report"] / "tables" / "wilcoxon.csv").open() as fh:
        stored = list(csv.DictReader(fh))
    assert {r["metric"] for r in stored} == {"dice", "jaccard", "hd95", "asd"}
    assert all(r["reason"] and r["p"] == "nan" for r in stored)


def test_tables_state_split_checkpoint_and_empty_rule(built: dict[str, Path]) -> None:
    md = (built["report"] / "report.md").read_text()
    for caption in ("Table I.", "Table II."):
        after = md.split(f"**{caption}", 1)[1].split("\n**", 1)[0]
        assert "validation split" in after and "last training iteration" in after
        assert "Empty prediction" in after and "one seed: mean ± std over cases" in after


# --------------------------------------------------------------------------- figures and pages


def test_every_figure_is_a_valid_png(built: dict[str, Path]) -> None:
    from matplotlib.image import imread
    from PIL import Image

    figures = built["report"] / "figures"
    assert {p.name for p in figures.glob("*.png")} == FIGURES
    for path in figures.glob("*.png"):
        assert path.read_bytes()[:8] == PNG_MAGIC, path
        with Image.open(path) as img:
            img.verify()
        pixels = imread(path)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100
        assert pixels[..., :3].std() > 0.01, f"{path.name} is blank"


def test_html_is_self_contained_and_its_images_exist(built: dict[str, Path]) -> None:
    html = built["html"].read_text()
    assert built["html"] == built["report"] / "report.html"
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert {Path(s).name for s in sources} == FIGURES
    for src in sources:
        assert not src.startswith(("/", "http")) and (built["report"] / src).is_file()
    assert "<style>" in html and "<script" not in html and "<link" not in html
    md_links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", (built["report"] / "report.md").read_text())
    assert sorted(md_links) == sorted(sources)


def test_training_saved_feature_snapshots(built: dict[str, Path]) -> None:
    from vasseg.report.features import load_snapshots

    runs = [p for p in built["runs"].iterdir() if (p / "config.yaml").is_file()]
    assert len(runs) == 3
    for run in runs:  # supervised runs load no unlabeled volumes: the hook reads some itself
        snaps = load_snapshots(run)
        assert [step for step, _ in snaps] == [2, 4]
        sample = snaps[0][1]
        assert sample.features.shape == (len(sample.cls), 4)  # decoder:3 has `filters` channels
        assert sample.labeled.any() and (~sample.labeled).any()
        assert set(np.unique(sample.cls)) == {0, 1} and not sample.from_prediction.any()


def test_cli_report_prints_the_html_path(built: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from vasseg.cli import main

    out = tmp_path / "rep"
    with single_thread():
        code = main(["report", str(built["runs"]), "--out", str(out), "--quiet",
                     "--skip", "qualitative,features,snapshots", "--reference", "mean_teacher"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out / "report.html")
    rows = md_table((out / "report.md").read_text(), "Table I.")
    assert [r["Method"] for r in rows] == ["mean_teacher", "supervised"]
    assert {p.name for p in (out / "figures").glob("*.png")} == {"boxplot_dice.png", "training_curves.png"}


def test_cli_rejects_bad_flags_in_one_line(built: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from vasseg.cli import main

    for flags, words in ((["--layer", "decoder:9"], "encoder:0..4"), (["--skip", "tabels"], "choose from"),
                         (["--reference", "nope"], "no run of that method")):
        assert main(["report", str(built["runs"]), "--out", str(tmp_path / "x"), *flags]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1


def test_qualitative_predictions_are_the_evaluated_ones(built: dict[str, Path]) -> None:
    """The figures' predictions come from the checkpoint the tables scored: same Dice per case."""
    from vasseg.report.collect import group_runs, load_records
    from vasseg.report.qualitative import overall_dice, predict_views

    groups = group_runs(load_records([built["runs"]], "val_last"))
    with single_thread():
        views = predict_views(groups, ["phantom_008", "phantom_009"], torch.device("cpu"))
    for g in groups:
        rows = {row.case: row.values["dice"] for row in g.representative.rows}
        for view in views:
            assert overall_dice(view.preds[g.label], view.ref) == pytest.approx(100 * rows[view.case_id], abs=1e-9)
