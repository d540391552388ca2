"""AD-MT: the alternation of its two teachers, their EMA schedule, the ensemble and conflict rules,
the cut-mix and strong views the student sees, and the shipped configs."""

from __future__ import annotations

from itertools import groupby
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vasseg.config import load_config
from vasseg.data.batcher import Batch
from vasseg.engine.optim import ema_update
from vasseg.engine.setup import build_method
from vasseg.methods.admt import ADMTParams, compromise, confident_ce, entropy_ensemble, strong_view
from vasseg.methods.mixing import cutmix, cutmix_boxes

from tests.methods.test_bcp import Recorder

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("one_thread")  # two spinning threads crawl on a busy 2-core host


def _batch(size: int = 16) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(image_l=torch.randn(2, 1, size, size, size, generator=g),
                 label_l=(torch.rand(2, size, size, size, generator=g) > 0.5).long(),
                 image_u=torch.randn(2, 1, size, size, size, generator=g))


# -- teachers -------------------------------------------------------------------------------------


def test_teachers_alternate_after_random_periods_and_the_state_is_saved(tiny) -> None:
    torch.manual_seed(0)
    method = build_method(tiny("admt"))
    convs = [[m.weight for m in t.modules() if isinstance(m, torch.nn.Conv3d)] for t in (method.teacher_1, method.teacher_2)]
    assert not any(torch.equal(a, b) for a, b in zip(*convs))  # two random initialisations, as theirs
    actives, periods = [], []
    for step in range(200):
        actives.append(method.active_teacher() is method.teacher_1)
        periods.append(method._alt["period"])
        method.after_step(step)
    runs = [len(list(group)) for _, group in groupby(actives)][:-1]  # the last one may go on
    assert actives[0] and len(runs) > 10  # teacher 1 first, then in turn
    assert all(1 <= r <= 19 for r in runs) and len(set(runs)) > 4  # random periods in 1..19
    assert set(periods) <= set(range(1, 20))
    state = method.state_dict()
    fresh = build_method(tiny("admt"))
    fresh.load_state_dict(state)
    assert fresh._alt == method._alt  # the alternation survives a checkpoint


def test_only_the_active_teacher_is_averaged_with_their_hold_and_decay(tiny) -> None:
    method = build_method(tiny("admt"))
    plan = method.ema_updates(0, decay=0.5)
    assert [(t is method.teacher_1, s is method.student) for t, s, _ in plan] == [(True, True)]
    decays = [method.teacher_decay(s) for s in (0, 79, 80, 81, 82, 84, 10**5)]
    assert decays == pytest.approx([0.0, 0.0, 0.0, 0.0, 0.5, 2 / 3, 0.99])  # step // 2 - 40 = n: 1 - 1/(n+1)
    method._alt["first"] = False
    assert method.ema_updates(0, decay=0.5)[0][0] is method.teacher_2


def test_ema_with_buffers_averages_batchnorm_statistics_but_not_counters(tiny) -> None:
    method = build_method(tiny("admt"))
    t, s = method.teacher_1, method.student
    s(torch.randn(2, 1, 16, 16, 16))  # moves the student's running statistics
    bn_t = next(m for m in t.modules() if isinstance(m, torch.nn.BatchNorm3d))
    bn_s = next(m for m in s.modules() if isinstance(m, torch.nn.BatchNorm3d))
    mean_t, count_t = bn_t.running_mean.clone(), bn_t.num_batches_tracked.clone()
    ema_update(t, s, 0.75, buffers=True)
    torch.testing.assert_close(bn_t.running_mean, 0.75 * mean_t + 0.25 * bn_s.running_mean)
    assert torch.equal(bn_t.num_batches_tracked, count_t)
    before = bn_t.running_mean.clone()
    ema_update(t, s, 0.75)  # the lineage's update leaves buffers alone
    assert torch.equal(bn_t.running_mean, before)


# -- targets --------------------------------------------------------------------------------------


def test_entropy_ensemble_trusts_the_surer_teacher() -> None:
    sure = torch.tensor([0.98, 0.02]).view(1, 2, 1, 1, 1)
    unsure = torch.tensor([0.4, 0.6]).view(1, 2, 1, 1, 1)
    h = lambda p: -(p * torch.log2(p + 1e-10)).sum(1, keepdim=True)  # noqa: E731
    w = torch.exp(-h(sure)) / (torch.exp(-h(sure)) + torch.exp(-h(unsure)))
    torch.testing.assert_close(entropy_ensemble(sure, unsure), w * sure + (1 - w) * unsure)
    assert float(w) > 0.5
    torch.testing.assert_close(entropy_ensemble(unsure, unsure), unsure)
    sharp = entropy_ensemble(unsure, unsure, temperature=0.5)
    torch.testing.assert_close(sharp, unsure**2 / (unsure**2).sum(1, keepdim=True))


def test_student_overrides_only_conflicting_voxels_where_it_is_surer() -> None:
    label, conf = torch.tensor([0, 0, 0, 1]), torch.tensor([0.6, 0.6, 0.9, 0.7])
    label_s, conf_s = torch.tensor([1, 1, 1, 1]), torch.tensor([0.9, 0.9, 0.95, 0.99])
    conflict = torch.tensor([True, False, True, True])
    new_label, new_conf = compromise(label, conf, label_s, conf_s, conflict)
    assert new_label.tolist() == [1, 0, 1, 1]  # voxel 1: no teacher conflict; voxel 3: same label
    assert new_conf.tolist() == pytest.approx([0.9, 0.6, 0.95, 0.7])


def test_confident_ce_is_the_masked_mean_and_zero_when_nothing_is_confident() -> None:
    logits, labels = torch.randn(2, 2, 4, 4, 4), torch.randint(0, 2, (2, 4, 4, 4))
    keep = torch.rand(2, 4, 4, 4) > 0.5
    ignored = torch.where(keep, labels, torch.full_like(labels, -100))
    torch.testing.assert_close(confident_ce(logits, labels, keep), F.cross_entropy(logits, ignored, ignore_index=-100))
    assert float(confident_ce(logits, labels, torch.zeros_like(keep))) == 0.0


def test_cutmix_pastes_one_box_per_sample_and_its_targets_follow() -> None:
    torch.manual_seed(3)
    size = (16, 16, 12)
    for _ in range(20):
        boxes = cutmix_boxes(3, size)
        for box in boxes:
            assert all(0 <= sl.start <= sl.stop <= s for sl, s in zip(box, size))
    image = torch.arange(3.0).view(3, 1, 1, 1, 1).expand(3, 1, *size).clone()
    label = torch.arange(3).view(3, 1, 1, 1).expand(3, *size).clone()
    boxes = [(slice(0, 4), slice(2, 6), slice(1, 3)), (slice(5, 9), slice(0, 16), slice(0, 12)), (slice(0, 0),) * 3]
    mixed_image, mixed_label = cutmix([image, label], boxes, source=[2, 0, 1])
    for i, (box, j) in enumerate(zip(boxes, [2, 0, 1])):
        inside = torch.zeros(size, dtype=torch.bool)
        inside[box] = True
        expected = torch.where(inside, torch.tensor(j), torch.tensor(i))
        assert torch.equal(mixed_label[i], expected) and torch.equal(mixed_image[i, 0], expected.float())
    assert torch.equal(image[0], torch.zeros(1, *size))  # the inputs are left as they were


def test_strong_view_is_brightness_contrast_then_bounded_noise() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 1, 8, 8, 8) * 2 + 1
    same = ADMTParams(color_prob=0.0, noise_prob=0.0)
    assert torch.equal(strong_view(x, same), x)
    colour = strong_view(x, ADMTParams(color_prob=1.0, noise_prob=0.0))
    lo, hi = x.amin(dim=(1, 2, 3, 4), keepdim=True), x.amax(dim=(1, 2, 3, 4), keepdim=True)
    assert ((colour >= lo - 1e-5) & (colour <= hi + 1e-5)).all() and not torch.allclose(colour, x)
    noise = strong_view(x, ADMTParams(color_prob=0.0, noise_prob=1.0)) - x
    assert noise.abs().max() <= 2.0 + 1e-6 and noise.abs().max() > 0.1  # |noise| <= 2 sigma <= 2


# -- the step -------------------------------------------------------------------------------------


def test_teacher_two_active_trains_on_a_cutmix_of_the_weak_view(tiny) -> None:
    method = build_method(tiny("admt", train={"iterations": 100})).train()
    method._alt["first"] = False
    method.student = Recorder()
    batch = _batch()
    method.training_step(batch, step=50)
    (x,) = method.student.inputs
    assert torch.equal(x[:2], batch.image_l) and torch.equal(x[2:4], batch.image_u)
    strong = x[4:]
    from_self = strong == batch.image_u
    from_other = strong == batch.image_u.flip(0)
    assert (from_self | from_other).all()  # every voxel of the mix is one of the two weak patches
    assert not method.teacher_1.training and method.teacher_2.training  # the active one in train mode


def test_teacher_one_active_trains_on_the_strong_view(tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    method = build_method(tiny("admt", train={"iterations": 100})).train()
    method.student = Recorder()
    seen = []
    monkeypatch.setattr("vasseg.methods.admt.strong_view", lambda x, p: seen.append(x) or x + 100.0)
    batch = _batch()
    out = method.training_step(batch, step=50)
    (x,) = method.student.inputs
    assert len(seen) == 1 and torch.equal(x[4:], batch.image_u + 100.0)
    assert method.teacher_1.training and not method.teacher_2.training
    assert out["w_cons"] == pytest.approx(2.0)  # the ramp ends at 0.4 x 100 steps


# -- shipped configs ------------------------------------------------------------------------------


@pytest.mark.parametrize("labeled", [8, 16])
def test_admt_configs_carry_their_code_schedule(labeled: int) -> None:
    exp = load_config(REPO / "configs" / "la" / f"admt_{labeled}.yaml")
    t, d, p = exp.train, exp.data, exp.method.params
    assert (exp.method.name, d.labeled, t.iterations, t.lr, t.lr_policy, t.poly_power, t.ema_decay) == (
        "admt", labeled, 15000, 0.01, "poly", 0.9, 0.99)
    assert (d.labeled_bs, d.unlabeled_bs) == (2, 2)
    assert (p.consistency, p.rampup, p.conf_threshold, p.period_max, p.ema_hold) == (2.0, 0.4, 0.8, 19, 40)

