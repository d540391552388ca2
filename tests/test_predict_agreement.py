"""benchmarks/predict_agreement.py: issue 28's bar for predict's default, and its table from a JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.benchscripts import load_script


agreement = load_script("predict_agreement")


def _summary(agree: float, diff: float, p: float, low: float) -> dict:
    return {"agree_mean": agree, "diff_mean": diff, "p": p, "ci": (low, diff + 0.01)}


@pytest.mark.parametrize("summary, ok, why", [
    (_summary(0.979, 0.01, 0.5, -0.001), False, "agreement 0.979 < 0.98"),
    (_summary(0.99, 0.0, math.nan, 0.0), True, "Dice not lower"),
    (_summary(0.99, -0.001, 0.01, -0.002), False, "Dice lower (p = 0.01)"),
    (_summary(0.99, -0.001, 0.3, -0.006), False, "interval reaches -0.60 pp"),
    (_summary(0.99, -0.0002, 0.69, -0.0006), True, "not detectably lower"),
])
def test_the_bar_needs_agreement_and_no_lower_dice(summary: dict, ok: bool, why: str) -> None:
    passed, reason = agreement.passes(summary)
    assert passed is ok and why in reason


def _case(name: str, dense_gt: float, modes: dict[str, tuple[float, float]]) -> dict:
    rows = {"stride fp32": {"dice_gt": dense_gt, "dice_dense": 1.0, "max_prob_diff_vs_fp32": 0.0, "seconds": 1.0,
                            "model_voxels_differing": 0, "uncertain_share": math.nan}}
    for key, (gt, agree) in modes.items():
        rows[key] = {"dice_gt": gt, "dice_dense": agree, "max_prob_diff_vs_fp32": 0.01, "seconds": 1.0,
                     "model_voxels_differing": 10, "uncertain_share": 0.5}
    return {"case": name, "modes": rows}


def test_summary_table_decides_per_mode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cases = [_case(f"c{i}", 0.80 + 0.01 * i, {"stride bf16": (0.80 + 0.01 * i, 0.999),
                                               "whole bf16": (0.75 + 0.01 * i, 0.90)}) for i in range(8)]
    cases.append(_case("failed", 0.2, {"stride bf16": (0.2, 0.99), "whole bf16": (0.1, 0.5)}))
    doc = {"run": "/runs/la_mt", "step": 1200, "grid": "native", "stride": [9, 9, 2], "cases": cases}
    path = tmp_path / "agree.json"
    path.write_text(json.dumps(doc))
    assert agreement.main(["--summary", str(path)]) == 0
    lines = {line.split(" | ")[0] + " " + line.split(" | ")[1]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("| stride") or line.startswith("| whole")}
    assert "yes: agrees, Dice not lower" in lines["| stride (eval.stride) bf16"]
    whole = lines["| whole bf16"]
    assert "no: agreement 0.856 < 0.98" in whole
    assert "0.9000 (n=8)" in whole  # the mean over the 8 cases the dense model segments (Dice > 0.5)
    assert "-5.56 pp" in whole and "p = 0.0039" in whole  # (8 x -5 - 10) / 9 pp; 9 pairs all lower: exact p = 2 / 2**9


def test_measures_in_resumable_chunks(phantom_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from tests.conftest import tiny_experiment
    from vasseg.engine.run import train_experiment

    # Three of the modes (stride2x built from eval.stride) and one thread: the 16^3 windows are many
    # tiny forward passes, which two threads beside another busy process slow down a hundredfold.
    monkeypatch.setattr(agreement, "MODES", {k: agreement.MODES[k] for k in ("stride", "stride2x", "whole")})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = train_experiment(tiny_experiment(phantom_root, tmp_path / "runs", "supervised",
                                               train={"iterations": 2, "ckpt_every": 2}))  # 2 validation cases
        out = tmp_path / "agree.json"
        assert agreement.main([str(run), "--cases", "1", "--json", str(out)]) == 0
        first = json.loads(out.read_text())["cases"]
        assert len(first) == 1 and set(first[0]["modes"]) == {
            f"{m} {p}" for m in ("stride", "stride2x", "whole") for p in ("fp32", "bf16")}
        dense = first[0]["modes"]["stride fp32"]
        assert dense["model_voxels_differing"] == 0 and dense["max_prob_diff_vs_fp32"] == 0.0
        assert agreement.main([str(run), "--json", str(out), "--resume"]) == 0  # only the case not yet measured
    finally:
        torch.set_num_threads(threads)
    cases = json.loads(out.read_text())["cases"]
    assert [c["case"] for c in cases][:1] == [first[0]["case"]] and len({c["case"] for c in cases}) == 2
    assert "2 validation cases of" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        agreement.main([str(run), "--resume"])  # --resume without --json
