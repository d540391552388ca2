"""Training phases on the one engine: declaration checks, the hand-over, per-phase schedules, and
exact resume when a run is interrupted before, at or after a phase boundary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from vasseg.config import ConfigError, build_experiment, merge
from vasseg.engine.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
from vasseg.engine.optim import phase_lr_factor
from vasseg.engine.run import train_experiment
from vasseg.engine.setup import build_data, build_method, prepare_run_dir, seed_everything
from vasseg.engine.trainer import Trainer
from vasseg.methods import get_method
from vasseg.methods.bcp import BCP
from vasseg.methods.phases import Phase, check_phases, locate

from tests.engine.test_reliability import _same, _tensors, _training_rows

pytestmark = pytest.mark.usefixtures("one_thread")  # two spinning threads crawl on a busy 2-core host

# BCP on the tiny phantoms: 2 pre-train + 2 self-train steps; lr / 10 every step of a phase
# (train.lr_step 1) so that a phase-local schedule and a global one give different numbers.
BCP_TINY: dict[str, Any] = {
    "data": {"labeled_bs": 4, "unlabeled_bs": 4, "num_val": 0},
    "train": {"iterations": 4, "lr_step": 1, "log_every": 1},
    "method": {"pretrain": 0.5},
}


def _bcp(tiny, **sections: Any):
    return tiny("bcp", **merge(BCP_TINY, sections))


def _trainer(exp) -> Trainer:
    seed_everything(exp.train.seed)
    data = build_data(exp, get_method(exp.method.name), progress=False)
    return Trainer(exp, build_method(exp), data, prepare_run_dir(exp, data.split, resume=False), torch.device("cpu"))


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


# -- the declaration ------------------------------------------------------------------------------


def test_locate_skips_empty_phases_and_keeps_late_steps_in_the_last() -> None:
    phases = [Phase("a", 0), Phase("b", 3), Phase("c", 2), Phase("d", 0)]
    assert [(locate(phases, s).phase.name, locate(phases, s).local(s)) for s in range(6)] == [
        ("b", 0), ("b", 1), ("b", 2), ("c", 0), ("c", 1), ("c", 2)]  # step 5: one past the end
    assert locate(phases, 3).start == 3 and locate(phases, 3).index == 2


@pytest.mark.parametrize("phases,message", [
    ([Phase("a", 2), Phase("b", 3)], r"train.iterations: 4, but method 'm' phases sum to 5 \(a 2 \+ b 3\)"),
    ([Phase("a", 2), Phase("a", 2)], "phase names repeat"),
    ([Phase("a", -1), Phase("b", 5)], "phase 'a' has -1 iterations"),
    ([Phase("a", 4, lr_policy="cosine")], "lr_policy 'cosine' is not one of"),
    ([], "declares no training phase"),
])
def test_bad_phase_declarations_fail_with_one_line(phases: list[Phase], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_phases(phases, 4, "m")


def test_a_phase_schedule_counts_its_own_steps() -> None:
    t = build_experiment({"train": {"lr_policy": "poly", "iterations": 100}}).train
    assert phase_lr_factor(t, Phase("b", 40), 20) == pytest.approx(0.5**0.9)  # poly over the phase
    assert phase_lr_factor(t, Phase("a", 60, lr_policy="constant"), 59) == 1.0
    assert phase_lr_factor(t, Phase("train", 100), 50) == pytest.approx(0.5**0.9)  # one phase: as before


# -- the hand-over --------------------------------------------------------------------------------


def test_bcp_hands_over_at_the_stated_step(tiny) -> None:
    trainer = _trainer(_bcp(tiny))
    method: BCP = trainer.method
    assert [(p.name, p.iterations) for p in trainer.phases] == [("pretrain", 2), ("selftrain", 2)]
    teacher0 = _params(method.teacher)
    outs = []
    for _ in range(2):
        outs.append(trainer.train_step())
        trainer.step += 1
    assert all(torch.equal(a, b) for a, b in zip(teacher0, _params(method.teacher)))  # no EMA before
    pre_opt, student = trainer.optimizers["main"], _params(method.student)
    assert not any(torch.equal(a, b) for a, b in zip(teacher0, student))
    trainer.best = {"val_dice": 0.9, "step": 2}  # as if validated at the end of the pre-train
    outs.append(trainer.train_step())  # step 2: the hand-over, then the first self-train step
    trainer.step += 1
    assert trainer.optimizers["main"] is not pre_opt  # a new optimizer, as their self-train builds
    assert trainer.best == {"val_dice": float("-inf"), "step": -1}  # best.pt: chosen in the last phase
    after = _params(method.student)
    for t, s0, s1 in zip(_params(method.teacher), student, after):  # teacher := student, then EMA 0.99
        torch.testing.assert_close(t, 0.99 * s0 + 0.01 * s1, rtol=1e-5, atol=1e-7)
    outs.append(trainer.train_step())
    assert [o["phase"] for o in outs] == [0, 0, 1, 1]
    # pre-train: constant lr; self-train: lr / 10 every lr_step = 1 step of its own
    assert [o["lr"] for o in outs] == pytest.approx([0.01, 0.01, 0.01, 0.001])
    assert {"loss_ce", "loss_dice"} <= set(outs[0]) and {"loss_l", "loss_u", "pseudo_fg"} <= set(outs[2])


# -- exact resume across the boundary -------------------------------------------------------------


@pytest.mark.parametrize("method,sections,crashes", [
    # checkpoints every step; crash at 2: resume AT the boundary (the hand-over comes after the
    # resume); crash at 3: resume mid self-train (teacher and fresh optimizer from the checkpoint)
    ("bcp", merge(BCP_TINY, {"train": {"ckpt_every": 1}}), [2, 3]),
    # one phase, but with state outside tensors (the teachers' alternation)
    ("admt", {"data": {"num_val": 0}, "train": {"iterations": 4, "ckpt_every": 2, "log_every": 1}}, [3]),
])
def test_crash_and_resume_around_the_phase_boundary_reproduces_every_step(
        tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, sections: dict, crashes: list[int]) -> None:
    exp = lambda out: tiny(method, **merge(sections, {"run": {"out_dir": str(tmp_path / out)}}))  # noqa: E731
    ref_dir = train_experiment(exp("ref"))
    cls = get_method(method)
    original, pending = cls.training_step, set(crashes)

    def crashing(self, batch, step):  # noqa: ANN001, ANN202 - the method's own signature
        if step in pending:
            pending.discard(step)
            raise RuntimeError(f"simulated crash at step {step}")
        return original(self, batch, step)

    monkeypatch.setattr(cls, "training_step", crashing)
    for i in range(len(crashes)):
        with pytest.raises(RuntimeError, match="simulated crash"):
            train_experiment(exp("cut"), resume=i > 0)
    cut_dir = train_experiment(exp("cut"), resume=True)

    ref_rows, cut_rows = _training_rows(ref_dir), _training_rows(cut_dir)
    assert [r["step"] for r in cut_rows] == list(range(4))
    assert cut_rows == ref_rows  # every logged value of every step, bit for bit
    ref_state = load_checkpoint(latest_checkpoint(ref_dir / "checkpoints"))
    cut_state = load_checkpoint(latest_checkpoint(cut_dir / "checkpoints"))
    a, b = (_tensors({k: v for k, v in s.items() if k != "config"}) for s in (ref_state, cut_state))
    assert a.keys() == b.keys()
    assert not [k for k in a if not _same(a[k], b[k])]


def test_resume_refuses_a_checkpoint_from_other_phases(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    exp = _bcp(tiny, train={"iterations": 2, "ckpt_every": 2})
    run_dir = train_experiment(exp)
    assert load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))["phase"] == {
        "index": 1, "name": "selftrain", "step": 1}
    rows = [json.loads(ln) for ln in (run_dir / "scalars.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows if "loss" in r] == [0, 1]
    monkeypatch.setattr(BCP, "phases", lambda self: [Phase("pretrain", 2)])
    trainer = Trainer(exp, build_method(exp), build_data(exp, BCP, progress=False), run_dir, torch.device("cpu"))
    with pytest.raises(CheckpointError, match="saved in phase 'selftrain' .*now puts step 2 in phase 'pretrain'"):
        trainer.resume()
