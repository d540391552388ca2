"""Every registered method runs two engine steps on a tiny phantom: the DESIGN.md contract."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from vasseg.config import merge
from vasseg.engine.setup import build_data, build_method, prepare_run_dir, seed_everything
from vasseg.engine.trainer import Trainer
from vasseg.methods import available_methods, get_method
from vasseg.methods.base import Method


# Per-method settings the two-step runs need: BCP mixes halves of each stream (one patch of 16^3
# per half would leave BatchNorm a single value per channel at the bottleneck), and its
# pre-train gets the first of the two steps so that both phases and the hand-over run.
CONTRACT_SETTINGS = {"bcp": {"data": {"labeled_bs": 4, "unlabeled_bs": 4}, "method": {"pretrain": 0.5}}}


def _trainer(tiny, method: str) -> Trainer:
    exp = tiny(method, **merge({"train": {"iterations": 2}}, CONTRACT_SETTINGS.get(method, {})))
    seed_everything(exp.train.seed)
    data = build_data(exp, get_method(method), progress=False)
    run_dir = prepare_run_dir(exp, data.split, resume=False)
    return Trainer(exp, build_method(exp), data, run_dir, torch.device("cpu"))


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("name", available_methods())
def test_two_steps_finite_losses_and_student_learns(tiny, name: str) -> None:
    trainer = _trainer(tiny, name)
    method = trainer.method
    before = _snapshot(method.student)
    for _ in range(2):
        out = trainer.train_step()
        trainer.step += 1
        for key, value in out.items():
            v = float(value) if isinstance(value, (int, float)) else float(value.detach().float())
            assert math.isfinite(v), f"{name}: {key} = {v}"
    after = _snapshot(method.student)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(moved) > 0.5 * len(before), f"{name}: most student weights should change"


@pytest.mark.parametrize("name", available_methods())
def test_teacher_moves_only_by_ema(tiny, name: str) -> None:
    trainer = _trainer(tiny, name)
    method = trainer.method
    teachers = [t for t, _ in method.ema_pairs()]
    if not teachers:
        pytest.skip(f"{name} has no EMA teacher")
    assert all(not p.requires_grad for t in teachers for p in t.parameters())
    trainer.step = 5  # past the warm-up: the engine's decay is min(1 - 1/6, 0.99)
    plan = trainer.ema_plan(5)
    assert plan, f"{name}: no teacher is averaged at step 5"
    if type(method).ema_updates is Method.ema_updates and len(method.phases()) == 1:
        assert [d for *_, d in plan] == pytest.approx([min(1 - 1 / 6, trainer.exp.train.ema_decay)] * len(teachers))
    t0, s0 = [_snapshot(t) for t in teachers], _snapshot(method.student)
    trainer.train_step()
    planned = {id(t): (s, d) for t, s, d in plan}
    for teacher, before in zip(teachers, t0):
        after = _snapshot(teacher)
        if id(teacher) not in planned:  # a teacher the method does not average this step stays put
            assert all(torch.equal(before[k], after[k]) for k in before), f"{name}: an idle teacher moved"
            continue
        student, decay = planned[id(teacher)]
        s1 = _snapshot(student)
        for key in before:
            torch.testing.assert_close(after[key], decay * before[key] + (1 - decay) * s1[key], rtol=1e-5, atol=1e-6)
    assert any(not torch.equal(s0[k], v) for k, v in _snapshot(method.student).items())


@pytest.mark.parametrize("name", available_methods())
def test_inference_gives_probabilities(tiny, name: str) -> None:
    exp = tiny(name)
    method = build_method(exp).eval()
    probs = method.predict(torch.randn(1, 1, 16, 16, 16))
    assert probs.shape == (1, exp.data.num_classes, 16, 16, 16)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 16, 16, 16))


def test_supervised_ignores_unlabeled_data(tiny) -> None:
    exp = tiny("supervised")
    data = build_data(exp, get_method("supervised"), progress=False)
    assert data.unlabeled is None and len(data.labeled) == 4 and len(data.val) == 2


def test_registry_rejects_unknown_names() -> None:
    with pytest.raises(KeyError, match="unknown method 'nope'"):
        get_method("nope")
    assert {"supervised", "mean_teacher"} <= set(available_methods())


def test_mean_teacher_ramp_and_consistency_target(tiny) -> None:
    exp = tiny("mean_teacher", train={"iterations": 100})
    method = build_method(exp)
    assert method.consistency_weight(0) == pytest.approx(0.1 * math.exp(-5))
    assert method.consistency_weight(50) == pytest.approx(0.1 * math.exp(-5 * 0.25))
    assert method.consistency_weight(100) == pytest.approx(0.1)
    assert method.consistency_weight(1000) == pytest.approx(0.1)


def test_two_steps_keep_run_dir_clean(tiny, tmp_path: Path) -> None:
    trainer = _trainer(tiny, "supervised")
    assert (trainer.run_dir / "config.yaml").is_file()
    assert (trainer.run_dir / "split.yaml").is_file()
