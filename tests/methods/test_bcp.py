"""BCP: the copy-paste cube, which patches and labels the student sees in each phase, its losses,
its pseudo labels, and the shipped configs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vasseg.config import ConfigError, load_config
from vasseg.data.batcher import Batch
from vasseg.engine.setup import build_method
from vasseg.methods import bcp as bcp_module
from vasseg.methods.bcp import largest_component, mix_loss, region_dice_loss
from vasseg.methods.mixing import cube_mask, paste
from vasseg.models.vnet import VNetOutput

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")  # two spinning threads crawl on a busy 2-core host
BATCH = {"data": {"labeled_bs": 4, "unlabeled_bs": 4}}


class Recorder(nn.Module):
    """A network that records its inputs and answers ``scale * one_hot(labels_for(x))``."""

    def __init__(self, labels_for=None, scale: float = 30.0) -> None:  # noqa: ANN001 - a callable
        super().__init__()
        self.inputs: list[torch.Tensor] = []
        self.labels_for, self.scale = labels_for, scale
        self.weight = nn.Parameter(torch.zeros(()))  # something for the loss to reach

    def forward(self, x: torch.Tensor) -> VNetOutput:
        self.inputs.append(x.detach().clone())
        labels = self.labels_for(x) if self.labels_for else torch.zeros(x.shape[0], *x.shape[2:], dtype=torch.long)
        logits = self.scale * (2 * F.one_hot(labels, 2).movedim(-1, 1).float() - 1) + self.weight
        return VNetOutput(logits=logits, encoder=[], decoder=[])


def _batch(n: int = 4, size: int = 16) -> Batch:
    """Each patch a constant (labeled 1..n, unlabeled -1..-n) so every voxel tells its source;
    labels: labeled patch i has foreground exactly where ``x > i`` (a different slab each)."""
    shape = (size, size, size)
    image_l = torch.stack([torch.full((1, *shape), float(i + 1)) for i in range(n)])
    image_u = torch.stack([torch.full((1, *shape), -float(i + 1)) for i in range(n)])
    grid = torch.arange(size).view(size, 1, 1).expand(shape)
    label_l = torch.stack([(grid > 4 + 2 * i).long() for i in range(n)])
    return Batch(image_l=image_l, label_l=label_l, image_u=image_u)


def _fixed_cube(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """Record every cube mask the method draws."""
    drawn: list[torch.Tensor] = []

    def record(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        drawn.append(cube_mask(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(bcp_module, "cube_mask", record)
    return drawn


# -- the cube ---------------------------------------------------------------------------------------


def test_cube_mask_is_one_cube_of_two_thirds_per_axis_off_the_far_faces() -> None:
    torch.manual_seed(0)
    starts = set()
    for _ in range(50):
        keep = cube_mask((112, 112, 80), 2 / 3)
        cube = (~keep).nonzero()
        lo, hi = cube.min(0).values, cube.max(0).values
        assert (hi - lo + 1).tolist() == [74, 74, 53]  # int(2/3 S): their 74 x 74 x 53
        assert int((~keep).sum()) == 74 * 74 * 53  # one solid box, nothing else
        assert (lo >= 0).all() and (hi <= torch.tensor([110, 110, 78])).all()  # start < S - side
        starts.add(tuple(lo.tolist()))
    assert len(starts) > 40  # drawn anew each time


def test_paste_takes_the_cube_from_the_second_and_the_rest_from_the_first() -> None:
    keep = torch.ones(4, 4, 4, dtype=torch.bool)
    keep[1:3, 0:2, 2:4] = False
    a, b = torch.zeros(2, 1, 4, 4, 4), torch.ones(2, 1, 4, 4, 4)
    mixed = paste(a, b, keep)
    assert torch.equal(mixed[:, 0], (~keep).float().expand(2, 4, 4, 4))
    la, lb = torch.zeros(2, 4, 4, 4, dtype=torch.long), torch.full((2, 4, 4, 4), 3)
    assert torch.equal(paste(la, lb, keep), 3 * (~keep).long().expand(2, 4, 4, 4))


# -- what the student sees, and the labels that follow the mix --------------------------------------


def test_pretrain_mixes_labeled_halves_and_their_labels(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    method = build_method(tiny("bcp", **BATCH, train={"iterations": 10}, method={"pretrain": 0.5}))
    drawn = _fixed_cube(monkeypatch)
    batch = _batch()

    def perfect(x: torch.Tensor) -> torch.Tensor:  # the mixed label, read off the mixed image
        keep = drawn[-1]
        return torch.where(keep, batch.label_l[:2], batch.label_l[2:])

    method.student = Recorder(perfect)
    out = method.training_step(batch, step=4)  # pre-train: steps 0..4
    keep = drawn[0]
    (x,) = method.student.inputs
    assert torch.equal(x, torch.where(keep, batch.image_l[:2], batch.image_l[2:]))  # a around b's cube
    assert float(out["loss"].detach()) < 1e-3  # the labels followed the images: a perfect prediction costs ~0
    method.student = Recorder(lambda x: batch.label_l[:2])  # the un-mixed labels of a
    assert float(method.training_step(batch, step=4)["loss"].detach()) > 0.05


def test_selftrain_copy_pastes_both_ways_with_teacher_pseudo_labels(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    method = build_method(tiny("bcp", **BATCH, train={"iterations": 10}, method={"pretrain": 0.5}))
    drawn = _fixed_cube(monkeypatch)
    batch = _batch()
    fg_u = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    fg_u[:, 3:9, 3:9, 3:9] = 1  # the teacher's foreground on every unlabeled patch: one cube
    method.teacher = Recorder(lambda x: fg_u[: x.shape[0]])

    def perfect(x: torch.Tensor) -> torch.Tensor:
        keep = drawn[-1]
        if float(x[0, 0][keep][0]) > 0:  # labeled around the cube: the labeled-first mix
            return torch.where(keep, batch.label_l[:2], fg_u)
        return torch.where(keep, fg_u, batch.label_l[2:])  # unlabeled around the cube

    method.student = Recorder(perfect)
    out = method.training_step(batch, step=5)  # self-train: steps 5..9
    keep = drawn[0]
    assert [x.shape[0] for x in method.teacher.inputs] == [2, 2]  # unlabeled a, then b
    assert torch.equal(method.teacher.inputs[0], batch.image_u[:2])
    mix_l, mix_u = method.student.inputs
    assert torch.equal(mix_l, torch.where(keep, batch.image_l[:2], batch.image_u[:2]))  # labeled a, unlabeled a cube
    assert torch.equal(mix_u, torch.where(keep, batch.image_u[2:], batch.image_l[2:]))  # unlabeled b, labeled b cube
    assert float(out["loss_l"].detach()) < 1e-3 and float(out["loss_u"].detach()) < 1e-3
    assert float(out["pseudo_fg"]) == pytest.approx(216 / 4096)


def test_mix_loss_weights_the_two_regions_as_their_code() -> None:
    torch.manual_seed(0)
    logits, out_lab, in_lab = torch.randn(2, 2, 8, 8, 8), torch.randint(0, 2, (2, 8, 8, 8)), torch.randint(0, 2, (2, 8, 8, 8))
    keep = torch.ones(8, 8, 8, dtype=torch.bool)
    keep[2:6, 2:6, 1:4] = False
    ce = F.cross_entropy(logits, out_lab, reduction="none")
    ce_in = F.cross_entropy(logits, in_lab, reduction="none")
    m = keep.float().expand(2, 8, 8, 8)
    expected = (1.0 * region_dice_loss(logits, out_lab, keep) + 0.5 * region_dice_loss(logits, in_lab, ~keep)
                + 1.0 * (ce * m).sum() / m.sum() + 0.5 * (ce_in * (1 - m)).sum() / (1 - m).sum()) / 2
    torch.testing.assert_close(mix_loss(logits, out_lab, in_lab, keep, 1.0, 0.5), expected)


def test_region_dice_is_per_patch_per_class_linear_and_background_included() -> None:
    torch.manual_seed(1)
    logits, labels = torch.randn(2, 2, 4, 4, 4), torch.randint(0, 2, (2, 4, 4, 4))
    region = torch.rand(4, 4, 4) > 0.3
    p = torch.softmax(logits, 1)
    terms = []
    for b in range(2):
        for c in range(2):
            t = (labels[b] == c).float() * region
            pc = p[b, c] * region
            terms.append((2 * (pc * t).sum() + 1e-5) / (pc.sum() + t.sum() + 1e-5))
    torch.testing.assert_close(region_dice_loss(logits, labels, region), 1 - torch.stack(terms).mean())
    assert float(region_dice_loss(30 * (2 * F.one_hot(labels, 2).movedim(-1, 1).float() - 1), labels)) < 1e-6


def test_pseudo_labels_keep_the_largest_26_connected_component() -> None:
    masks = torch.zeros(3, 8, 8, 8, dtype=torch.long)
    masks[0, 0:3, 0:3, 0:3] = 1  # 27 voxels
    masks[0, 6:8, 6:8, 6:8] = 1  # 8 voxels, apart
    masks[1, 0, 0, 0] = masks[1, 1, 1, 1] = masks[1, 2, 2, 2] = 1  # diagonal: one component in 26-conn
    masks[1, 6:8, 6:8, 0] = 1  # 4 voxels, apart: larger than the diagonal's 3
    out = largest_component(masks)
    assert int(out[0].sum()) == 27 and int(out[0, 6:, 6:, 6:].sum()) == 0
    assert int(out[1].sum()) == 4  # 4 > 3 ...
    masks[1, 3, 3, 3] = masks[1, 4, 4, 4] = 1  # ... until the diagonal grows to 5 voxels
    assert int(largest_component(masks)[1, :5, :5, :5].sum()) == 5
    assert int(out[2].sum()) == 0  # an empty mask stays empty


def test_bcp_refuses_batches_it_cannot_halve(tiny) -> None:
    with pytest.raises(ConfigError, match="even labeled_bs = unlabeled_bs"):
        build_method(tiny("bcp", data={"labeled_bs": 2, "unlabeled_bs": 4}))
    with pytest.raises(ConfigError, match="bcp supports 2 classes"):
        build_method(tiny("bcp", data={"labeled_bs": 4, "unlabeled_bs": 4, "num_classes": 3}))
    with pytest.raises(ConfigError, match=r"method.pretrain: a fraction"):
        build_method(tiny("bcp", **BATCH, method={"pretrain": 1.5}))


# -- shipped configs --------------------------------------------------------------------------------


@pytest.mark.parametrize("labeled", [8, 16])
def test_bcp_configs_carry_their_code_schedule(labeled: int) -> None:
    exp = load_config(REPO / "configs" / "la" / f"bcp_{labeled}.yaml")
    method = build_method(exp)
    assert [(p.name, p.iterations, p.lr_policy, p.fresh_optimizer, p.ema_warmup) for p in method.phases()] == [
        ("pretrain", 2000, "constant", False, True), ("selftrain", 15000, None, True, False)]
    t, d = exp.train, exp.data
    assert (t.lr, t.lr_policy, t.lr_step, t.ema_decay, d.labeled_bs, d.unlabeled_bs, d.labeled) == (
        0.01, "step", 2500, 0.99, 4, 4, labeled)
    assert [int(s * exp.method.params.mask_ratio) for s in d.patch_size] == [74, 74, 53]
    assert exp.method.params.u_weight == 0.5


@pytest.mark.parametrize("name", ["bcp", "admt"])
def test_cpu_configs_keep_the_cpu_protocol_and_the_method_section(name: str) -> None:
    cpu = load_config(REPO / "configs" / "la_cpu" / f"{name}_8.yaml")
    base = load_config(REPO / "configs" / "la_cpu" / "supervised_8.yaml")
    full = load_config(REPO / "configs" / "la" / f"{name}_8.yaml")
    assert (cpu.train.iterations, cpu.data.patch_size, cpu.data.scale, cpu.data.num_val) == (
        base.train.iterations, base.data.patch_size, base.data.scale, base.data.num_val)
    assert cpu.method == full.method and cpu.train.lr_policy == full.train.lr_policy
    assert (cpu.data.labeled_bs, cpu.data.unlabeled_bs) == (full.data.labeled_bs, full.data.unlabeled_bs)


def test_bcp_cpu_config_keeps_the_proportions_of_its_phases() -> None:
    cpu = load_config(REPO / "configs" / "la_cpu" / "bcp_8.yaml")
    pre, self_train = build_method(cpu).phases()
    assert (pre.iterations, self_train.iterations) == (141, 1059)
    drops = [k for k in range(1, self_train.iterations) if k % cpu.train.lr_step == 0]
    assert len(drops) == 5 == len([k for k in range(1, 15000) if k % 2500 == 0])
    assert cpu.train.lr_step == math.ceil(self_train.iterations / 6)
