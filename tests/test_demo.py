"""``vasseg demo``: the whole pipeline end to end (tiny settings here; the real ones under ``-m slow``)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vasseg import demo
from vasseg.cli import main
from vasseg.config import merge

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_DEMO = {"data": {"patch_size": [16, 16, 16]}, "model": {"filters": 4},
             "train": {"iterations": 3, "lr_step": 2, "ckpt_every": 3, "log_every": 1}, "eval": {"stride": [8, 8, 8]}}


def _dice(text: str, method: str) -> float:
    return float(re.search(rf"^\| {method} \| 4 \| ([\d.]+) ±", text, re.MULTILINE)[1])


def test_the_demo_runs_end_to_end_with_a_quick_report(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(demo, "DEMO_CONFIG", merge(demo.DEMO_CONFIG, TINY_DEMO))
    monkeypatch.setattr(demo, "PHANTOMS", {"n_train": 6, "n_test": 2, "shape": (24, 24, 24), "seed": 0})
    assert main(["demo", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert _dice(out, "supervised") >= 0 and _dice(out, "mean_teacher") >= 0
    assert f"report: {tmp_path / 'd' / 'report' / 'report.html'}" in out
    assert re.search(r"^demo finished in \d+ s$", out, re.MULTILINE)
    assert re.search(r"^training \(mean of the first / last 10 steps\): supervised loss [\d.]+ -> [\d.]+; "
                     r"mean_teacher loss [\d.]+ -> [\d.]+, consistency [\d.]+ -> [\d.]+ at weight [\d.]+$",
                     out, re.MULTILINE)
    figures = {p.name for p in (tmp_path / "d" / "report" / "figures").iterdir()}
    assert {"boxplot_dice.png", "training_curves.png"} <= figures and "features.png" not in figures
    report = (tmp_path / "d" / "report" / "report.md").read_text()
    assert "phantom atrium" in report and "Feature" not in report
    assert list((tmp_path / "d" / "runs").glob("la_mean_teacher_*/features/step_*.npz"))  # --full-report can use them


@pytest.mark.slow
def test_the_default_demo_shows_both_methods_learning(tmp_path: Path, capsys) -> None:
    """The shipped settings: both methods well above chance on the held-out phantoms, losses falling."""
    assert main(["demo", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert _dice(out, "supervised") > 80 and _dice(out, "mean_teacher") > 80
    losses = re.findall(r"loss ([\d.]+) -> ([\d.]+)", out)
    assert len(losses) == 2 and all(float(b) < float(a) / 2 for a, b in losses)
