"""Training from Python: the config's step-end hooks come with ``vasseg.train``, none are global."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

import vasseg
from vasseg.engine.setup import build_data, build_method, prepare_run_dir
from vasseg.engine.trainer import Trainer
from vasseg.methods import get_method
from vasseg.report import features as features_module
from vasseg.training import default_hooks


def test_feature_snapshots_from_the_python_api(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features_module, "PER_CLASS", 4)  # small snapshots
    monkeypatch.setattr(features_module, "MAX_CASES", 1)
    exp = tiny("supervised", train={"iterations": 3, "ckpt_every": 3}, run={"feature_snapshots": [1, 3]})
    run_dir = vasseg.train(exp, evaluate_val=False)
    assert sorted(p.name for p in (run_dir / "features").glob("step_*.npz")) == ["step_000001.npz",
                                                                                "step_000003.npz"]
    assert [step for step, _ in features_module.load_snapshots(run_dir)] == [1, 3]


def test_hooks_are_passed_not_global(tiny, caplog: pytest.LogCaptureFixture) -> None:
    assert default_hooks(tiny("supervised")) == []
    exp = tiny("supervised", run={"feature_snapshots": [2]})
    assert default_hooks(exp) == [features_module.snapshot_hook]
    data = build_data(exp, get_method("supervised"), progress=False)
    run_dir = prepare_run_dir(exp, data.split, resume=False)
    with caplog.at_level(logging.WARNING, logger="vasseg.engine.trainer"):
        trainer = Trainer(exp, build_method(exp), data, Path(run_dir), torch.device("cpu"))
    # The report's module is imported (above), yet a trainer built without hooks has none and says so.
    assert trainer.step_end_hooks == []
    assert "run.feature_snapshots: no step-end hook was given" in caplog.text
