"""benchmarks/volume_check.py: foreground volumes, the under-segmentation summary, resumable runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.benchscripts import load_script


volume_check = load_script("volume_check")


def test_case_volumes_counts_and_ratios() -> None:
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[:2] = 1  # 32 voxels
    pred = np.zeros_like(ref)
    pred[:1] = 1  # 16 voxels, all inside the reference: under-segmented by half
    pred[3, 0, 0] = 1  # one false positive
    got = volume_check.case_volumes(pred, ref)
    assert (got["pred"], got["ref"], got["tp"]) == (17, 32, 16)
    assert got["sensitivity"] == 0.5 and got["precision"] == pytest.approx(16 / 17)
    assert got["ratio"] == pytest.approx(17 / 32)
    empty = volume_check.case_volumes(np.zeros_like(ref), ref)
    assert empty["ratio"] == 0 and math.isnan(empty["precision"])


def test_summary_pairs_the_log_ratio_against_the_first_run() -> None:
    base = {f"c{i}": {"ratio": 1.0, "sensitivity": 0.8, "precision": 0.8} for i in range(8)}
    under = {f"c{i}": {"ratio": 0.8, "sensitivity": 0.7, "precision": 0.9} for i in range(8)}
    text = volume_check.summary({"runs": {"/r/base": base, "/r/under": under}})
    assert "| base | 8 | 1.000, 1.000 | 0.800 | 0.800 | 0 |" in text
    assert "| under | 8 | 0.800, 0.800 | 0.700 | 0.900 | 8 |" in text
    assert "under vs base: volume ratio x0.800" in text and "8 cases" in text


def test_summary_pools_a_methods_folds_and_averages_its_seeds_per_case() -> None:
    def rows(ids: range, ratio: float) -> dict:
        return {f"c{i}": {"ratio": ratio, "sensitivity": 0.8, "precision": 0.8} for i in ids}
    runs = {"r/la_mt_4l_s1337_0000000a": rows(range(0, 5), 1.0),  # fold 0
            "r/la_mt_4l_s1338_0000000b": rows(range(5, 10), 1.0),  # fold 1
            "r/la_vas_4l_s1337_0000000c": rows(range(0, 5), 0.5),  # fold 0, two seeds: x0.5 and x0.8
            "r/la_vas_4l_s2337_0000000d": rows(range(0, 5), 0.8),
            "r/la_vas_4l_s1338_0000000e": {**rows(range(5, 10), 0.8), "c9": {"ratio": 0.0, "sensitivity": 0.0,
                                                                            "precision": math.nan}}}
    groups = volume_check.method_groups({"runs": runs})
    assert list(groups) == ["la_mt_4l", "la_vas_4l"]
    assert groups["la_vas_4l"]["c0"] == pytest.approx(math.sqrt(0.5 * 0.8)) and "c9" not in groups["la_vas_4l"]
    text = volume_check.summary({"runs": runs})
    assert "la_vas_4l vs la_mt_4l:" in text and "9 cases" in text  # 10 cases pooled, the empty one left out
    want = math.exp((5 * math.log(math.sqrt(0.4)) + 4 * math.log(0.8)) / 9)
    assert f"la_vas_4l vs la_mt_4l: volume ratio x{want:.3f} " in text
    assert f"la_vas_4l: predicted / true volume x{want:.3f} (geometric mean" in text  # mean teacher's ratios are 1
    assert "la_mt_4l: predicted / true volume x1.000" in text and "all pairs tied" in text.split("la_mt_4l: ")[1]


def test_measures_a_run_and_resumes(phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import torch

    from tests.conftest import tiny_experiment
    from vasseg.engine.run import train_experiment

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 16^3 windows are many tiny passes: one thread is faster beside other work
    try:
        run = train_experiment(tiny_experiment(phantom_root, tmp_path / "runs", "supervised",
                                               train={"iterations": 2, "ckpt_every": 2}))  # 2 validation cases
        out = tmp_path / "volumes.json"
        assert volume_check.main([str(run), "--json", str(out)]) == 0
        rows = json.loads(out.read_text())["runs"][str(run)]
        assert len(rows) == 2 and all(r["ref"] > 0 and r["pred"] >= r["tp"] >= 0 for r in rows.values())
        assert volume_check.main([str(run), "--json", str(out), "--resume"]) == 0  # nothing left to measure
    finally:
        torch.set_num_threads(threads)
    assert json.loads(out.read_text())["runs"][str(run)] == rows
    assert volume_check.main(["--summary", str(out)]) == 0
    assert f"| {run.name} | 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        volume_check.main([str(run)])  # no --json
