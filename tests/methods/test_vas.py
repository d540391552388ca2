"""VAS on the engine: player separation, BYOL teacher, ablation configs, multi-class, inference."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_raw
from vasseg.config import ConfigError, Experiment, build_experiment, load_config, merge
from vasseg.data.synthetic import write_phantom_la_layout
from vasseg.engine.run import train_experiment
from vasseg.inference.evaluate import evaluate_run
from vasseg.engine.setup import build_data, build_method, prepare_run_dir, seed_everything
from vasseg.engine.trainer import Trainer
from vasseg.methods import get_method
from vasseg.methods.players import HANDOFF

REPO = Path(__file__).resolve().parents[2]
ABLATIONS = sorted((REPO / "configs").glob("la*/ablation/*.yaml"))
SMALL = {"voxels_per_class": 32}


def _vas_experiment(root: Path, out: Path, params: dict | None = None, **sections) -> Experiment:
    """A tiny VAS experiment (the ``method`` section cannot pass through ``tiny``'s keywords)."""
    raw = merge(tiny_raw(root, out, "vas", **sections), {"method": {**SMALL, **(params or {})}})
    return build_experiment(raw)


@pytest.fixture
def vas(phantom_root: Path, tmp_path: Path):
    """``vas(params, **sections) -> Experiment`` on the two-class phantoms."""

    def make(params: dict | None = None, **sections) -> Experiment:
        return _vas_experiment(phantom_root, tmp_path / "runs", params, **sections)

    return make


@pytest.fixture(scope="module")
def four_class_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms4")
    return write_phantom_la_layout(root, n_train=10, n_test=2, shape=(32, 32, 32), seed=0, num_classes=4)


def _trainer(exp: Experiment) -> Trainer:
    seed_everything(exp.train.seed)
    data = build_data(exp, get_method(exp.method.name), progress=False)
    run_dir = prepare_run_dir(exp, data.split, resume=False)
    return Trainer(exp, build_method(exp), data, run_dir, torch.device("cpu"))


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _finite(out: dict) -> bool:
    return all(math.isfinite(float(v.detach()) if isinstance(v, torch.Tensor) else v) for v in out.values())


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_generator_step_leaves_d_and_d_step_leaves_the_student(vas) -> None:
    trainer = _trainer(vas())
    method, step = trainer.method, 3
    d_params = [*method.discriminator.parameters(), *method.adv_fusion.parameters()]
    d0 = {id(p): p.detach().clone() for p in d_params}
    batch = trainer._next_batch()
    out = method(batch, step, "main")
    trainer._optimize("main", out["loss"], trainer.main_params)
    assert all(p.grad is None for p in d_params), "the generator step gave D gradients"
    assert all(torch.equal(p, d0[id(p)]) for p in d_params), "the generator step moved D"
    student = _state(method.student)  # parameters and batch-norm buffers
    grads = {k: p.grad.clone() for k, p in method.student.named_parameters()}
    d_out = trainer._discriminator_step(batch, step, out[HANDOFF])
    assert _equal(student, _state(method.student)), "the D step changed the student"
    assert all(torch.equal(p.grad, grads[k]) for k, p in method.student.named_parameters()), \
        "the D step sent gradients into the student"
    assert any(not torch.equal(p, d0[id(p)]) for p in d_params), "the D step did not move D"
    assert {"loss_d", "d_acc_real", "d_acc_fake"} <= d_out.keys()


def test_no_gradient_reaches_the_teacher_and_it_moves_only_by_ema(vas) -> None:
    trainer = _trainer(vas())
    method = trainer.method
    pairs = method.ema_pairs()
    assert [s for _, s in pairs] == [method.student, method.feature_fusion, method.projector]
    trainer.step = 5
    t0 = [_params(t) for t, _ in pairs]
    trainer.train_step()
    decay = min(1 - 1 / 6, trainer.exp.train.ema_decay)
    for (teacher, student), before in zip(pairs, t0):
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
        s1, t1 = _params(student), _params(teacher)
        for key in before:
            torch.testing.assert_close(t1[key], decay * before[key] + (1 - decay) * s1[key], rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None for p in method.predictor.parameters())


def test_teacher_copies_are_separate_modules(vas) -> None:
    method = build_method(vas())
    for teacher, student in method.ema_pairs():
        assert teacher is not student
        assert not _ids(teacher.parameters()) & _ids(student.parameters())
    assert method.inference_network() is method.student


def test_every_table_iv_row_has_a_config() -> None:
    names = {p.stem for p in ABLATIONS}
    rows = ("vnet", "adv", "feature", "adv_feature", "full")
    assert names == {f"{r}_16" for r in rows} | {f"{r}_8" for r in rows}


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_ablation_configs_run_two_steps_and_own_only_their_parameters(path: Path, phantom_root: Path,
                                                                       tmp_path: Path) -> None:
    exp = load_config(path, [f"data.root={phantom_root}", f"run.out_dir={tmp_path}", "data.labeled=4",
                             "data.num_val=2", "data.patch_size=[16,16,16]", "data.scale=1.0",
                             "model.filters=4", "train.iterations=2", "train.device=cpu",
                             "train.progress=false", "train.channels_last=\"off\"", "run.tensorboard=false",
                             "method.voxels_per_class=32"])
    p = exp.method.params
    trainer = _trainer(exp)
    method = trainer.method
    for _ in range(2):
        out = trainer.train_step()
        trainer.step += 1
        assert _finite(out)
    expected = set(_ids(method.student.parameters()))
    if p.use_feature:
        for module in (method.feature_fusion, method.projector, method.predictor):
            expected |= _ids(module.parameters())
    assert _ids(trainer.optimizers["main"].param_groups[0]["params"]) == expected
    assert ("disc" in trainer.optimizers) == p.use_adv
    if p.use_adv:
        d_expected = _ids(method.discriminator.parameters()) | _ids(method.adv_fusion.parameters())
        assert _ids(trainer.optimizers["disc"].param_groups[0]["params"]) == d_expected
        assert {"loss_adv", "loss_d", "pseudo_coverage", "d_acc_real"} <= out.keys()
    switches = ((p.use_adv, "discriminator", "loss_adv"), (p.use_feature, "projector", "loss_feature"),
                (p.use_consistency, None, "loss_cons"))
    for flag, module, key in switches:
        assert (key in out) == flag
        if module:
            assert hasattr(method, module) == flag
    assert (method.teacher is None) == (not (p.use_adv or p.use_feature or p.use_consistency))


def test_four_classes_with_absent_classes(four_class_root: Path, tmp_path: Path) -> None:
    exp = _vas_experiment(four_class_root, tmp_path, data={"num_classes": 4})
    trainer = _trainer(exp)
    for _ in range(2):
        out = trainer.train_step()
        trainer.step += 1
    assert _finite(out)
    counts = [float(out[f"vox_l_c{c}"]) for c in range(4)]
    assert all(n % 32 == 0 and 0 <= n <= 2 * 32 for n in counts) and counts[0] == 64
    assert len(trainer.method.discriminator.heads) == 4


def test_threshold_one_samples_no_unlabeled_voxel(vas) -> None:
    trainer = _trainer(vas({"threshold": 1.0}))
    batch = trainer._next_batch()
    out = {k: v.detach() if torch.is_tensor(v) else v for k, v in trainer.method(batch, 0, "main").items()}
    assert float(out["pseudo_coverage"]) == 0.0 and float(out["loss_adv"]) == 0.0
    assert all(float(out[f"vox_u_c{c}"]) == 0 for c in range(2))


@pytest.mark.parametrize("options", [
    {"fusion_mode": "dense", "fusion_kernel": 3},
    {"adv_fusion": "student", "byol_fusion": "shared", "byol_pairs": "same_class"},
    {"gen_loss": "minimax", "consistency_on": "unlabeled", "supervised_loss": "ce_dice", "noise_std": 0.0},
])
def test_open_choices_run(vas, options: dict) -> None:
    trainer = _trainer(vas(options))
    out = trainer.train_step()
    assert _finite(out)
    method = trainer.method
    if options.get("adv_fusion") == "student":
        assert method.feature_fusion is method.adv_fusion
        assert _ids(method.adv_fusion.parameters()) <= _ids(trainer.optimizers["main"].param_groups[0]["params"])


@pytest.mark.parametrize("options, message", [
    ({"gen_loss": "wgan"}, "method.gen_loss"),
    ({"fusion_levels": [0, 5]}, "method.fusion_levels"),
    ({"byol_fusion": "shared"}, "adv_fusion: student"),
])
def test_bad_options_fail_with_the_key(vas, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_method(vas(options))
    with pytest.raises(ConfigError, match="unlabeled_bs"):
        build_method(vas(data={"unlabeled_bs": 0}))


def test_consistency_ramp(vas) -> None:
    method = build_method(vas(train={"iterations": 100}))
    assert method.consistency_weight(0) == pytest.approx(0.001 * math.exp(-5))
    assert method.consistency_weight(50) == pytest.approx(0.001 * math.exp(-5 * 0.25))
    assert method.consistency_weight(100) == pytest.approx(0.001)


def test_discriminator_step_without_a_generator_step_fails(vas) -> None:
    trainer = _trainer(vas())
    with pytest.raises(RuntimeError, match="training_step of the same step"):
        trainer.method(trainer._next_batch(), 0, "disc")


def test_a_vas_run_evaluates_through_the_common_path(vas) -> None:
    run_dir = train_experiment(vas(train={"iterations": 2, "ckpt_every": 2}),
                               evaluate_val=False)
    out_dir, table = evaluate_run(run_dir, split="val", device="cpu", progress=False)
    assert "vas" in table and any(out_dir.iterdir())


def test_byol_target_comes_from_the_teacher_projector(vas) -> None:
    trainer = _trainer(vas({"use_adv": False, "use_consistency": False}))
    method, batch = trainer.method, trainer._next_batch()

    def feature_loss() -> float:
        torch.manual_seed(0)  # same voxels, same noise
        return float(method(batch, 0, "main")["loss_feature"].detach())

    before = feature_loss()
    assert feature_loss() == before
    with torch.no_grad():
        method.teacher_projector[-1].weight.add_(torch.randn_like(method.teacher_projector[-1].weight))
    assert feature_loss() != before


def test_vnet_row_feeds_only_labeled_patches_to_the_student(vas) -> None:
    trainer = _trainer(vas({"use_adv": False, "use_feature": False, "use_consistency": False}))
    sizes: list[int] = []
    trainer.method.student.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    out = trainer.train_step()
    assert sizes == [2] and set(out) >= {"loss", "loss_sup"} and trainer.method.ema_pairs() == []


def test_voxel_and_map_reductions_scale_as_eq_2_and_eq_5() -> None:
    from vasseg.methods.losses import softmax_mse
    from vasseg.models.heads import reduce_voxels, sample_voxels

    labels = torch.zeros(3, 6, 6, 4, dtype=torch.long)
    labels[:2, :3] = 1  # image 2 has no foreground: its class-1 slots are invalid
    index = sample_voxels(labels, 2, 8)
    values = torch.rand(index.mask.numel())
    mean = reduce_voxels(values, index, "mean")
    total = reduce_voxels(values, index, "sum")
    assert float(total) == pytest.approx(float((values * index.mask).sum()) / 3)
    assert float(total) == pytest.approx(float(mean) * 5 * 8 / 3)  # 5 valid (image, class) blocks
    with pytest.raises(ValueError, match="voxel reduction"):
        reduce_voxels(values, index, "max")
    s, t = torch.randn(2, 2, 4, 4, 4), torch.randn(2, 2, 4, 4, 4)
    assert float(softmax_mse(s, t, "sum")) == pytest.approx(float(softmax_mse(s, t)) * 2 * 64, rel=1e-5)


def test_adv_reduction_sets_the_generator_and_discriminator_scale(vas) -> None:
    outs = {}
    for reduction in ("mean", "sum"):
        seed_everything(0)
        trainer = _trainer(vas({"adv_reduction": reduction}))
        outs[reduction] = trainer.train_step()
    n = SMALL["voxels_per_class"]
    # Labeled patches hold both classes: the sum is 2 n times the mean.
    assert float(outs["sum"]["loss_d_real"]) == pytest.approx(float(outs["mean"]["loss_d_real"]) * 2 * n, rel=1e-4)
    # Unlabeled: n voxels per (image, pseudo-class) block present, summed per image (B_u images).
    b_u = trainer.exp.data.unlabeled_bs
    for key in ("loss_adv", "loss_d_fake"):
        blocks = float(outs["sum"][key]) / float(outs["mean"][key]) * b_u / n
        assert blocks == pytest.approx(round(blocks), abs=1e-3) and 1 <= round(blocks) <= 2 * b_u, key


def test_eval_mode_teacher_runs_without_dropout_and_tracks_the_student_statistics(vas) -> None:
    from vasseg.methods.base import teacher_in_mode

    trainer = _trainer(vas({"teacher_mode": "eval"}))
    method = trainer.method
    assert method.ema_buffers and not build_method(vas()).ema_buffers
    with teacher_in_mode(method.teacher, "eval"):
        assert not any(m.training for m in method.teacher.modules())
    assert method.teacher.training  # restored
    before = _state(method.teacher)
    trainer.train_step()
    after = {k: v for k, v in method.teacher.state_dict().items()}
    stats = [k for k in before if k.endswith("running_mean")]
    assert stats and all(not torch.equal(before[k], after[k]) for k in stats)
    student = method.student.state_dict()
    # Step 0's EMA decay is 0: the teacher's statistics are the student's, exactly.
    assert all(torch.equal(after[k], student[k]) for k in stats)


def test_ema_of_buffers_averages_floats_and_keeps_counters() -> None:
    from vasseg.engine.optim import ema_update

    student, teacher = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    student.running_mean.fill_(1.0)
    student.num_batches_tracked.fill_(7)
    ema_update(teacher, student, 0.75)
    assert torch.equal(teacher.running_mean, torch.zeros(3))  # the lineage: buffers untouched
    ema_update(teacher, student, 0.75, buffers=True)
    assert torch.allclose(teacher.running_mean, torch.full((3,), 0.25))
    assert int(teacher.num_batches_tracked) == 0


def test_the_student_runs_once_per_step_so_its_batch_statistics_see_one_pass(vas) -> None:
    trainer = _trainer(vas())
    calls = []
    trainer.method.student.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    trainer.train_step()  # generator step, discriminator step and EMA
    assert calls == [4]  # one pass over the 2 labeled + 2 unlabeled patches


def test_byol_target_decay_moves_only_the_byol_target_heads_at_its_own_rate(vas) -> None:
    trainer = _trainer(vas({"byol_target_decay": 0.996}))
    method = trainer.method
    plan = {id(t): d for t, _, d in trainer.ema_plan(5)}
    assert plan[id(method.teacher_fusion)] == plan[id(method.teacher_projector)] == 0.996
    assert plan[id(method.teacher)] == pytest.approx(min(1 - 1 / 6, trainer.exp.train.ema_decay))
    default = _trainer(vas())
    assert {d for _, _, d in default.ema_plan(5)} == {plan[id(method.teacher)]}
    # One step: the target projector moves 0.4 % of the way to the stepped student projector.
    before = _params(method.teacher_projector)
    trainer.train_step()
    after, student = _params(method.teacher_projector), _params(method.projector)
    for k in before:
        assert torch.allclose(after[k], 0.996 * before[k] + 0.004 * student[k], atol=1e-6), k
    with pytest.raises(ConfigError, match="byol_target_decay"):
        build_method(vas({"byol_target_decay": 1.0}))


def test_disc_lr_schedule_main_follows_the_student_policy(vas) -> None:
    sections = {"train": {"lr_policy": "poly", "iterations": 4}}
    follows, constant = _trainer(vas({"disc_lr_schedule": "main"}, **sections)), _trainer(vas(**sections))
    lrs = {"main": [], "constant": []}
    for step in range(3):
        for trainer in (follows, constant):
            trainer.step = step
            trainer.train_step()
        lrs["main"].append(follows.optimizers["disc"].param_groups[0]["lr"])
        lrs["constant"].append(constant.optimizers["disc"].param_groups[0]["lr"])
    base = follows.method.params.disc_lr
    power = follows.exp.train.poly_power
    assert lrs["constant"] == [base] * 3
    assert lrs["main"] == pytest.approx([base * (1 - k / 4) ** power for k in range(3)])
