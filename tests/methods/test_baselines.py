"""The four baselines (uamt, sassnet, dtc, mcnet): their specific terms, schedules and heads."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from vasseg.config import ConfigError, load_config
from vasseg.data.batcher import Batch
from vasseg.inferer.sliding import sliding_window_probs
from vasseg.inference.predict import predict_file
from vasseg.inference.evaluate import evaluate_run
from vasseg.engine.run import train_experiment
from vasseg.engine.setup import build_data, build_method, prepare_run_dir, seed_everything
from vasseg.engine.trainer import Trainer
from vasseg.methods import get_method
from vasseg.methods.mcnet import linear_dice_loss, mutual_consistency, sharpen
from vasseg.methods.uamt import masked_consistency
from vasseg.models.vnet import VNetOutput

from tests.windowtools import labels_from_probs, predict_case

REPO = Path(__file__).resolve().parents[2]
BASELINES = ("uamt", "sassnet", "dtc", "mcnet")
TERMS = {
    "uamt": ("loss_sup", "loss_cons", "w_cons", "threshold", "mask_fraction", "uncertainty"),
    "sassnet": ("loss_dice", "loss_sdm", "loss_adv", "w_adv", "loss_d", "d_accuracy"),
    "dtc": ("loss_dice", "loss_sdm", "loss_cons", "w_cons"),
    "mcnet": ("loss_dice_0", "loss_dice_1", "loss_cons", "w_cons"),
}


def _small(exp):
    """SASSNet's discriminator at 8 base filters instead of 64: same graph, a fraction of the cost."""
    return _with_params(exp, disc_filters=8) if exp.method.name == "sassnet" else exp


def _trainer(tiny, name: str, **sections) -> Trainer:
    exp = _small(tiny(name, **{"train": {"iterations": 2}, **sections}))
    seed_everything(exp.train.seed)
    data = build_data(exp, get_method(name), progress=False)
    return Trainer(exp, build_method(exp), data, prepare_run_dir(exp, data.split, resume=False), torch.device("cpu"))


def _with_params(exp, **params):
    """``exp`` with some method hyper-parameters replaced."""
    method = dataclasses.replace(exp.method, params=dataclasses.replace(exp.method.params, **params))
    return dataclasses.replace(exp, method=method)


def _batch(classes: int = 2, n_l: int = 2, n_u: int = 2, size: int = 16) -> Batch:
    """Random images; labels are a cube of class 1 (and a slab of class 2 when there are 3)."""
    g = torch.Generator().manual_seed(0)
    label = torch.zeros(n_l, size, size, size, dtype=torch.long)
    label[:, 4:12, 4:12, 4:12] = 1
    if classes > 2:
        label[:, :, :, 13:] = 2
    return Batch(image_l=torch.randn(n_l, 1, size, size, size, generator=g), label_l=label,
                 image_u=torch.randn(n_u, 1, size, size, size, generator=g))


def _grad_norms(loss: torch.Tensor, modules: dict[str, nn.Module]) -> dict[str, float]:
    """Gradient norm of ``loss`` on each module's trainable parameters (0 when unreached)."""
    params = {k: [p for p in m.parameters() if p.requires_grad] for k, m in modules.items()}
    flat = [p for ps in params.values() for p in ps]
    grads = dict(zip(map(id, flat), torch.autograd.grad(loss, flat, retain_graph=True, allow_unused=True)))
    return {k: sum(float(grads[id(p)].norm()) for p in ps if grads[id(p)] is not None) for k, ps in params.items()}


# -- every baseline ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
def test_two_steps_log_finite_method_terms(tiny, name: str) -> None:
    trainer = _trainer(tiny, name)
    for _ in range(2):
        out = trainer.train_step()
        trainer.step += 1
        missing = [k for k in TERMS[name] if k not in out]
        assert not missing, f"{name} does not log {missing}"
        for key in TERMS[name]:
            value = out[key].detach() if isinstance(out[key], torch.Tensor) else out[key]
            assert math.isfinite(float(value)), f"{name}: {key} = {value}"


@pytest.mark.parametrize("name", ["sassnet", "dtc"])
def test_binary_methods_refuse_more_classes(tiny, name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} supports 2 classes"):
        build_method(tiny(name, data={"num_classes": 3}))


@pytest.mark.parametrize("name", ["uamt", "mcnet"])
def test_softmax_methods_generalise_to_three_classes(tiny, name: str) -> None:
    method = build_method(tiny(name, data={"num_classes": 3}, train={"iterations": 10}))
    out = method.training_step(_batch(classes=3), step=10)
    assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
    probs = method.eval().predict(torch.randn(1, 1, 16, 16, 16))
    assert probs.shape == (1, 3, 16, 16, 16)


# -- UA-MT ------------------------------------------------------------------------------------


class ConstantNet(nn.Module):
    """A teacher whose logits ignore the input, dropout and noise; counts its forward passes."""

    def __init__(self, logits: tuple[float, ...], random: bool = False) -> None:
        super().__init__()
        self.logits, self.random, self.batch_sizes = torch.tensor(logits), random, []

    def forward(self, x: torch.Tensor) -> VNetOutput:
        self.batch_sizes.append(x.shape[0])
        shape = (x.shape[0], len(self.logits), *x.shape[2:])
        if self.random:
            return VNetOutput(logits=3 * torch.randn(shape), encoder=[], decoder=[])
        return VNetOutput(logits=self.logits.view(1, -1, 1, 1, 1).expand(shape), encoder=[], decoder=[])


def test_uamt_constant_teacher_gives_zero_uncertainty_and_a_full_mask(tiny) -> None:
    method = build_method(tiny("uamt", train={"iterations": 100}))
    method.teacher = ConstantNet((-10.0, 10.0))
    terms = method.loss_terms(_batch(), step=0)  # step 0: the strictest threshold
    uncertainty = method.teacher_uncertainty(_batch().image_u)
    torch.testing.assert_close(uncertainty, torch.zeros_like(uncertainty), rtol=0, atol=1e-5)
    assert float(terms["mask_fraction"]) == 1.0
    # 1 target pass + passes / copies uncertainty passes of copies * B_u samples
    assert method.teacher.batch_sizes == [2, 4, 4, 4, 4] + [4, 4, 4, 4]


def test_uamt_uncertain_teacher_masks_voxels_out(tiny) -> None:
    method = build_method(tiny("uamt", train={"iterations": 100}))
    method.teacher = ConstantNet((0.0, 0.0), random=True)
    terms = method.loss_terms(_batch(), step=0)
    assert 0.0 <= float(terms["mask_fraction"]) < 0.9
    assert float(terms["uncertainty"]) > 0.1


def test_uamt_threshold_follows_its_ramp(tiny) -> None:
    method = build_method(tiny("uamt", train={"iterations": 100}))
    ln2 = math.log(2)
    assert method.uncertainty_threshold(0) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * ln2)
    assert method.uncertainty_threshold(50) == pytest.approx((0.75 + 0.25 * math.exp(-1.25)) * ln2)
    assert method.uncertainty_threshold(100) == pytest.approx(ln2)
    assert method.uncertainty_threshold(10**6) == pytest.approx(ln2)
    assert method.consistency_weight(50) == pytest.approx(0.1 * math.exp(-1.25))
    three = build_method(tiny("uamt", data={"num_classes": 3}, train={"iterations": 100}))
    assert three.uncertainty_threshold(100) == pytest.approx(math.log(3))


def test_uamt_masked_consistency_is_softmax_mse_under_a_full_mask() -> None:
    s, t = torch.randn(2, 2, 4, 4, 4, requires_grad=True), torch.randn(2, 2, 4, 4, 4, requires_grad=True)
    full = masked_consistency(s, t, torch.ones(2, 1, 4, 4, 4))
    mse = torch.mean((torch.softmax(s, 1) - torch.softmax(t, 1)) ** 2)
    torch.testing.assert_close(full, mse)
    assert float(masked_consistency(s, t, torch.zeros(2, 1, 4, 4, 4)).detach()) == 0.0
    half = torch.zeros(2, 1, 4, 4, 4)
    half[0] = 1
    expected = torch.mean((torch.softmax(s[:1], 1) - torch.softmax(t[:1], 1)) ** 2)
    torch.testing.assert_close(masked_consistency(s, t, half), expected)
    full.backward()
    assert s.grad is not None and t.grad is None  # the teacher side is a target


def test_uamt_consistency_reaches_the_student_only(tiny) -> None:
    method = build_method(tiny("uamt", train={"iterations": 100}))
    terms = method.loss_terms(_batch(), step=100)  # threshold ln 2: nearly every voxel kept
    assert float(terms["mask_fraction"]) > 0.5
    assert _grad_norms(terms["loss_cons"], {"student": method.student})["student"] > 0
    assert all(not p.requires_grad for p in method.teacher.parameters())


# -- SASSNet ----------------------------------------------------------------------------------


def test_sassnet_discriminator_is_stepped_only_by_its_own_optimizer(tiny) -> None:
    trainer = _trainer(tiny, "sassnet")
    disc = trainer.method.discriminator
    main_ids = {id(p) for g in trainer.optimizers["main"].param_groups for p in g["params"]}
    assert not main_ids & {id(p) for p in disc.parameters()}
    assert isinstance(trainer.optimizers["disc"], torch.optim.Adam)
    assert trainer.optimizers["disc"].param_groups[0]["betas"] == (0.9, 0.99)
    before = {k: v.clone() for k, v in disc.state_dict().items()}
    trainer.optimizers["disc"].step = lambda *a, **k: None  # only D's optimizer may move D
    trainer.train_step()
    assert all(torch.equal(before[k], v) for k, v in disc.state_dict().items())
    del trainer.optimizers["disc"].step
    trainer.train_step()
    assert any(not torch.equal(before[k], v) for k, v in disc.state_dict().items())


def test_sassnet_adversarial_term_reaches_the_student_through_a_frozen_discriminator(tiny) -> None:
    method = build_method(_small(tiny("sassnet")))
    for p in method.discriminator_parameters():
        p.requires_grad_(False)  # as the engine does during the generator step
    terms = method.loss_terms(_batch(), step=0)
    norms = _grad_norms(terms["loss_adv"], {"sdm_head": method.student.sdm_head,
                                            "encoder": method.student.vnet.encoder,
                                            "seg_head": method.student.vnet.decoder.out_conv})
    assert norms["sdm_head"] > 0 and norms["encoder"] > 0 and norms["seg_head"] == 0
    assert not method.discriminator.training  # their generator step runs D in eval mode
    sdm_only = _grad_norms(terms["loss_sdm"], {"sdm_head": method.student.sdm_head,
                                               "seg_head": method.student.vnet.decoder.out_conv})
    assert sdm_only["sdm_head"] > 0 and sdm_only["seg_head"] == 0


def test_sassnet_discriminator_step_targets_and_modes(tiny) -> None:
    method = build_method(_small(tiny("sassnet")))
    batch = _batch(n_l=1, n_u=3)
    method.training_step(batch, step=0)
    out = method.discriminator_step(batch, step=0)
    assert method.discriminator.training and method.student.training  # student mode restored
    assert out["loss_d"].requires_grad and 0 <= float(out["d_accuracy"]) <= 1
    # A discriminator that always answers "labeled" (class 1): right on the one labeled patch
    # only, and the generator, which wants unlabeled patches called labeled, has nothing to gain.
    method.discriminator.classifier.bias.data = torch.tensor([-1e4, 1e4])
    assert float(method.discriminator_step(batch, step=0)["d_accuracy"]) == 0.25
    assert float(method.loss_terms(batch, step=0)["loss_adv"].detach()) == pytest.approx(0.0, abs=1e-6)


def test_sassnet_adversarial_weight_ramps(tiny) -> None:
    method = build_method(_with_params(tiny("sassnet", train={"iterations": 100}), adversarial=0.015))
    assert method.adversarial_weight(0) == pytest.approx(0.015 * math.exp(-5))
    assert method.adversarial_weight(100) == pytest.approx(0.015)


# -- DTC --------------------------------------------------------------------------------------


def test_dtc_consistency_reaches_both_heads(tiny) -> None:
    method = build_method(tiny("dtc"))
    terms = method.loss_terms(_batch(), step=0)
    heads = {"sdm_head": method.student.sdm_head, "seg_head": method.student.vnet.decoder.out_conv}
    cons = _grad_norms(terms["loss_cons"], heads)
    assert cons["sdm_head"] > 0 and cons["seg_head"] > 0
    dice = _grad_norms(terms["loss_dice"], heads)
    assert dice["seg_head"] > 0 and dice["sdm_head"] == 0


def test_dtc_consistency_is_the_sigmoid_transform_of_the_sdm(tiny) -> None:
    method = build_method(tiny("dtc")).eval()  # no dropout: the same forward twice
    batch = _batch()
    terms = method.loss_terms(batch, step=0)
    with torch.no_grad():
        out = method.student(batch.image_all)
    expected = torch.mean((torch.sigmoid(-1500 * out.sdm) - torch.sigmoid(out.logits)) ** 2)
    torch.testing.assert_close(terms["loss_cons"].detach(), expected)
    assert method.consistency_weight(method.exp.train.iterations) == pytest.approx(1.0)


# -- MC-Net -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version,modes", [("v1", ["ConvTranspose3d", "trilinear"]),
                                           ("v2", ["ConvTranspose3d", "trilinear", "nearest"])])
def test_mcnet_decoders_differ_in_upsampling(tiny, version: str, modes: list[str]) -> None:
    net = build_method(_with_params(tiny("mcnet"), version=version)).student
    found = []
    for decoder in net.decoders:
        ups = [m for m in decoder.modules() if isinstance(m, (nn.Upsample, nn.ConvTranspose3d))]
        found.append(ups[0].mode if isinstance(ups[0], nn.Upsample) else type(ups[0]).__name__)
        assert all(m.align_corners for m in ups if isinstance(m, nn.Upsample) and m.mode == "trilinear")
    assert found == modes


def test_mcnet_consistency_reaches_every_decoder_and_dice_only_its_own(tiny) -> None:
    method = build_method(_with_params(tiny("mcnet"), version="v2"))
    terms = method.loss_terms(_batch(), step=0)
    parts = {"encoder": method.student.encoder, **{f"d{i}": d for i, d in enumerate(method.student.decoders)}}
    cons = _grad_norms(terms["loss_cons"], parts)
    assert all(v > 0 for v in cons.values()), cons
    dice1 = _grad_norms(terms["loss_dice_1"], parts)
    assert dice1["d1"] > 0 and dice1["encoder"] > 0 and dice1["d0"] == 0 and dice1["d2"] == 0


def test_mcnet_predicts_through_the_first_decoder_only(tiny) -> None:
    method = build_method(tiny("mcnet")).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    before = method.predict(x)
    with torch.no_grad():
        for p in method.student.decoders[1].parameters():
            p.add_(1.0)
    torch.testing.assert_close(method.predict(x), before, rtol=0, atol=0)
    with torch.no_grad():
        method.student.decoders[0].out_conv.bias.add_(torch.tensor([1.0, -1.0]))
    assert not torch.allclose(method.predict(x), before)


def test_mcnet_sharpening_dice_and_ramp_follow_their_code(tiny) -> None:
    logits = torch.randn(2, 2, 4, 4, 4)
    p = torch.softmax(logits, 1)
    theirs = p ** 10 / (p ** 10 + (1 - p) ** 10)  # T = 0.1
    torch.testing.assert_close(sharpen(logits, 0.1), theirs, rtol=1e-4, atol=1e-6)
    labels = (torch.rand(2, 4, 4, 4) > 0.5).long()
    t = (labels == 1).float()
    expected = 1 - (2 * (p[:, 1] * t).sum() + 1e-10) / (p[:, 1].sum() + t.sum() + 1e-10)
    torch.testing.assert_close(linear_dice_loss(p, labels), expected)
    pair = [torch.randn(1, 2, 4, 4, 4, requires_grad=True) for _ in range(2)]
    through, detached = (torch.autograd.grad(mutual_consistency(pair, 0.1, d), pair[1])[0] for d in (False, True))
    assert not torch.allclose(through, detached)  # their targets carry gradient, and so do ours:
    assert get_method("mcnet").Params().detach_target is False
    method = build_method(tiny("mcnet", train={"iterations": 1500}))
    assert method.consistency_weight(0) == pytest.approx(math.exp(-5 * (1 - 1 / 600) ** 2))
    assert method.consistency_weight(599) == pytest.approx(1.0)  # ramp over 0.4 of training


# -- evaluation of sigmoid heads ----------------------------------------------------------------


def test_sigmoid_heads_are_evaluated_at_threshold_half(tiny) -> None:
    exp = tiny("dtc")
    method = build_method(exp).eval()
    data = build_data(exp, get_method("dtc"), progress=False)
    case = data.val[0]
    pred, _ = predict_case(method, case, exp, torch.device("cpu"))
    sigmoid = sliding_window_probs(lambda w: torch.sigmoid(method.student(w).logits), case.image,
                                   exp.eval_patch, exp.eval.stride, num_classes=1, batch_size=2)
    assert np.array_equal(pred, labels_from_probs(sigmoid).numpy())


def test_sassnet_run_evaluates_and_predicts_end_to_end(tiny, phantom_root: Path, tmp_path: Path) -> None:
    run_dir = train_experiment(_small(tiny("sassnet", train={"iterations": 2, "ckpt_every": 2})))
    out_dir, table = evaluate_run(run_dir, "test", "last", None, "cpu", None, progress=False)
    assert (out_dir / "cases.csv").is_file() and "dice" in table.lower()
    case = next((phantom_root / "2018LA_Seg_Training Set").iterdir()) / "mri_norm2.h5"
    written = predict_file(run_dir, case, tmp_path / "pred.nii.gz", "last", "cpu", progress=False)
    labels = np.asarray(nib.load(str(written)).dataobj)
    assert labels.shape == (32, 32, 32) and set(np.unique(labels)) <= {0, 1}


# -- shipped configs ----------------------------------------------------------------------------


SCHEDULES = {  # name: (iterations, lr_policy, method params that must hold)
    "uamt": (6000, "step", {"consistency": 0.1, "passes": 8, "threshold_start": 0.75}),
    "sassnet": (6000, "step", {"beta": 0.3, "disc_lr": 1e-4}),
    "dtc": (6000, "step", {"beta": 0.3, "consistency": 1.0, "sharpness": 1500.0}),
    "mcnet": (15000, "constant", {"consistency": 1.0, "temperature": 0.1, "rampup": 0.4}),
}


@pytest.mark.parametrize("name", BASELINES)
@pytest.mark.parametrize("labeled", [8, 16])
def test_configs_carry_each_methods_own_schedule(name: str, labeled: int) -> None:
    iterations, policy, params = SCHEDULES[name]
    exp = load_config(REPO / "configs" / "la" / f"{name}_{labeled}.yaml")
    assert (exp.method.name, exp.data.labeled, exp.train.iterations) == (name, labeled, iterations)
    assert exp.train.lr_policy == policy and exp.train.lr == 0.01 and exp.data.patch_size == (112, 112, 80)
    assert all(getattr(exp.method.params, k) == v for k, v in params.items())
    if name == "sassnet":
        assert exp.method.params.adversarial == {8: 0.015, 16: 0.01}[labeled]


@pytest.mark.parametrize("name", BASELINES)
def test_cpu_configs_keep_the_cpu_protocol_and_the_methods_weights(name: str) -> None:
    cpu = load_config(REPO / "configs" / "la_cpu" / f"{name}_8.yaml")
    base = load_config(REPO / "configs" / "la_cpu" / "supervised_8.yaml")
    full = load_config(REPO / "configs" / "la" / f"{name}_8.yaml")
    assert (cpu.train.iterations, cpu.train.lr_step, cpu.data.patch_size, cpu.data.scale, cpu.data.num_val) == (
        base.train.iterations, base.train.lr_step, base.data.patch_size, base.data.scale, base.data.num_val)
    assert cpu.method == full.method and cpu.train.lr_policy == full.train.lr_policy
