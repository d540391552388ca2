"""The metric table: a metric registered from outside vasseg's sources is scored by evaluate and
tabulated by the report, with no edit of src/ (the registration below is all it takes)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from vasseg.inference.evaluate import evaluate_run
from vasseg.metrics import hd, hd95, table
from vasseg.metrics.table import Metric, register_metric
from vasseg.report.build import ReportOptions, build_report

from tests.conftest import single_thread


def _hausdorff(pair) -> float:  # noqa: ANN001 - a vasseg.metrics.MaskPair
    """The maximum surface distance, both directions (empty masks: the table's empty-mask rule)."""
    return pair.distance(lambda to_ref, to_pred: float(max(to_ref.max(), to_pred.max())))


TOYS = (Metric("hd_max", _hausdorff, "voxels", "lower", "HD"),
        Metric("pred_share", lambda pair: float(np.mean(pair.pred)), "fraction", "higher", "Predicted share"))


@pytest.fixture
def toy_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(table, "METRIC_TABLE", dict(table.METRIC_TABLE))  # the registration ends with the test
    for metric in TOYS:
        register_metric(metric)


def test_a_registered_metric_reaches_cases_csv_and_table_one(toy_metrics, run_copy: Path, tmp_path: Path) -> None:
    with single_thread():
        out_dir, summary_md = evaluate_run(run_copy, split="test", device="cpu", progress=False)
    with (out_dir / "cases.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == ["case", "cls", "dice", "jaccard", "hd95", "asd", "assd", "hd_max", "pred_share",
                                 "hd95_mm", "asd_mm", "assd_mm", "hd_max_mm", "status", "grid"]
    for row in rows:
        hd95, hd_max = float(row["hd95"]), float(row["hd_max"])
        assert math.isnan(hd_max) if math.isnan(hd95) else hd_max >= hd95
        assert 0.0 <= float(row["pred_share"]) <= 1.0 and row["hd_max_mm"] != ""
    assert ("| method | labeled | Dice % | Jaccard % | 95HD (vox) | ASSD* (vox) | HD (vox) | Predicted share % |"
            in summary_md.splitlines())
    html = build_report([run_copy], tmp_path / "report", ReportOptions(
        eval_name="test_last", skip=frozenset({"qualitative", "features", "snapshots"}), device="cpu",
        progress=False))
    markdown = Path(html).with_suffix(".md").read_text()
    header = next(line for line in markdown.splitlines() if line.startswith("| Method | Labeled | Unlabeled"))
    assert "| 95HD (vox) | ASSD* (vox) | HD (vox) | Predicted share (%) | 95HD (mm) | ASSD* (mm) | HD (mm) |" in header


def test_score_pair_computes_a_registered_metric_in_voxels_and_mm(toy_metrics) -> None:
    pred, ref = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    pred[2:6, 2:6, 2:6], ref[3:9, 3:9, 3:9] = True, True
    for spacing in ((0.5, 0.5, 0.5), (1.0, 1.0, 2.5)):
        values, status = table.score_pair(pred, ref, spacing)
        assert status == "ok" and list(values) == table.metric_columns()
        assert values["hd_max"] == pytest.approx(hd(pred, ref)) and values["hd95"] == pytest.approx(hd95(pred, ref))
        assert values["hd_max_mm"] == pytest.approx(hd(pred, ref, spacing))
        assert values["pred_share"] == pytest.approx(64 / 12**3) and "pred_share_mm" not in values
    values, status = table.score_pair(np.zeros_like(pred), ref, (1.0, 1.0, 1.0), "diagonal")
    assert status == "empty_pred" and values["hd_max"] == values["hd95"] == pytest.approx(math.sqrt(3 * 12**2))


def test_a_taken_name_is_refused(toy_metrics) -> None:
    with pytest.raises(ValueError, match="metric 'hd_max': column 'hd_max' is taken"):
        register_metric(TOYS[0])
    with pytest.raises(ValueError, match="column 'grid' is taken"):
        register_metric(Metric("grid", _hausdorff, "voxels", "lower", "Grid"))
