"""``admt``: alternate diverse teaching (Zhao et al., ECCV 2024) as its public code trains LA.

From ZhenZHAO/AD-MT ``code/train_post_3d_aut.py`` with ``cfgs/config_3d_la_aut.yml``,
``code/train_utils.py``, ``code/dataloaders/mixaugs.py`` and ``dataset_3d.py``:

* one VNet student, two EMA teachers (each its own random initialisation), batch 2 labeled +
  2 unlabeled, SGD lr 0.01 with poly decay (power 0.9) over 15000 iterations;
* random periodic alternation: one teacher is *active* (training mode, and the only one updated
  after the step) while the other runs in eval mode; the active one switches after a period
  drawn uniformly from 1..19 steps, redrawn at every switch;
* both teachers predict the weak unlabeled patches; their softmaxes are ensembled with weights
  ``exp(-H_i) / (exp(-H_1) + exp(-H_2))`` (``H``: entropy in bits), sharpened by ``T = 1`` (none);
  pseudo label and confidence are the ensemble's argmax and max; voxels where the teachers'
  argmaxes differ are the *conflicts*;
* when teacher 2 is active the strong view is a 3-D cut-mix of the weak unlabeled patches
  (pseudo labels, confidences and conflicts mixed alike); when teacher 1 is active it is the
  strong augmentation (per patch, p = 0.8: brightness/contrast +-0.5 on the min-max normalised
  patch, clipped to [0, 1]; p = 0.2: Gaussian noise, sigma ~ U(0.1, 1), clipped to +-2 sigma);
* one student forward of labeled, weak and strong patches; supervised ``(CE + Dice) / 2`` (Dice
  with squared sums over every class, background included); where the teachers conflict and
  the student (on the weak view) disagrees with more confidence, its label and confidence win
  (``pixel_confidence``); unsupervised CE on the strong view over the voxels whose confidence is
  >= 0.8, weight ``2.0 ramp(t)`` over 6000 of 15000 iterations (their ``iter // 150`` over 40);
* EMA 0.99 of parameters AND buffers for the active teacher, decay 0 while ``step // 2 < 40``,
  then ``min(1 - 1 / (step // 2 - 39), 0.99)``.

Their quirks kept: the student's compromise labels come from the un-mixed weak view even when the
teacher targets were cut-mixed. Differences: a step where no voxel reaches the threshold gives
an unsupervised loss of 0 (their mean over no voxel is NaN); their poly lr is set after the step
(step ``k`` uses ``(1 - (k-1)/T)^0.9``), here at it; their script keeps the student with the best
Dice on the test list (test leakage): here the last iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.base import Method, make_teacher
from vasseg.methods.losses import soft_dice_loss
from vasseg.methods.mixing import cutmix, cutmix_boxes
from vasseg.typed import ConfigError

if TYPE_CHECKING:
    from vasseg.config import Experiment


@dataclass(frozen=True)
class ADMTParams:
    consistency: float = 2.0  # w_max of the unsupervised CE
    rampup: float = 0.4  # ramp length, fraction of train.iterations (40 x 150 = 6000 of 15000)
    conf_threshold: float = 0.8  # pseudo labels used where the (compromise) confidence >= this
    ensemble_temperature: float = 1.0  # sharpening of the teachers' ensemble (1: none)
    period_max: int = 19  # alternation period drawn from 1..period_max steps
    ema_hold: int = 40  # teacher decay 0 while step // 2 < ema_hold
    cutmix_prob: float = 1.0
    color_prob: float = 0.8  # strong view: brightness/contrast probability
    brightness: float = 0.5
    contrast: float = 0.5
    noise_prob: float = 0.2  # strong view: Gaussian noise probability
    noise_sigma: tuple[float, float] = (0.1, 1.0)


def strong_view(x: Tensor, p: ADMTParams) -> Tensor:
    """AD-MT's strong augmentation of each patch of ``x`` ``(B, C, X, Y, Z)`` (see the module doc)."""
    b, dev = x.shape[0], x.device
    per = (b,) + (1,) * (x.ndim - 1)
    alpha = 1.0 + (2 * torch.rand(b) - 1) * p.contrast
    beta = (2 * torch.rand(b) - 1) * p.brightness
    colour = torch.rand(b) < p.color_prob
    sigma = p.noise_sigma[0] + torch.rand(b) * (p.noise_sigma[1] - p.noise_sigma[0])
    noisy = torch.rand(b) < p.noise_prob
    alpha, beta, sigma = (v.to(dev).view(per) for v in (alpha, beta, sigma))
    dims = tuple(range(1, x.ndim))
    lo, hi = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
    span = (hi - lo).clamp_min(1e-12)
    y = alpha * (x - lo) / span
    y = (y + beta * y.mean(dim=dims, keepdim=True)).clamp(0.0, 1.0)  # beta x mean AFTER the alpha
    out = torch.where(colour.to(dev).view(per), y * span + lo, x)
    noise = torch.maximum(torch.minimum(sigma * torch.randn_like(x), 2 * sigma), -2 * sigma)
    return torch.where(noisy.to(dev).view(per), out + noise, out)


def entropy_ensemble(p1: Tensor, p2: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-voxel ``w_1 p_1 + w_2 p_2``, ``w_i ~ exp(-H_i)`` (bits), sharpened by ``1/T``, renormalised.

    ``p1``, ``p2``: ``(B, K, X, Y, Z)`` softmaxes; returns the same shape.
    """
    h1 = -(p1 * torch.log2(p1 + 1e-10)).sum(1, keepdim=True)
    h2 = -(p2 * torch.log2(p2 + 1e-10)).sum(1, keepdim=True)
    w1 = torch.exp(-h1) / (torch.exp(-h1) + torch.exp(-h2))
    mixed = (w1 * p1 + (1 - w1) * p2) ** (1.0 / temperature)
    return mixed / mixed.sum(1, keepdim=True)


def compromise(label: Tensor, conf: Tensor, label_s: Tensor, conf_s: Tensor, conflict: Tensor) -> tuple[Tensor, Tensor]:
    """``pixel_confidence``: the student's label where the teachers conflict and it disagrees more surely."""
    take = conflict & (label_s != label) & (conf_s > conf)
    return torch.where(take, label_s, label), torch.where(take, conf_s, conf)


def confident_ce(logits: Tensor, labels: Tensor, keep: Tensor) -> Tensor:
    """Cross-entropy averaged over the ``keep`` voxels (0 when none is kept)."""
    k = keep.float()
    return (F.cross_entropy(logits.float(), labels, reduction="none") * k).sum() / k.sum().clamp_min(1.0)


def all_class_dice(probs: Tensor, labels: Tensor) -> Tensor:
    """Their ``DiceLoss``: the squared-sum Dice of every class (background too), averaged."""
    return torch.stack([soft_dice_loss(probs[:, c], labels == c) for c in range(probs.shape[1])]).mean()


@register("admt")
class ADMT(Method):
    """One student, two EMA teachers of which one is active at a time (alternating at random periods);
    their entropy-weighted ensemble labels the strong views where it is confident."""

    Params = ADMTParams
    ema_buffers = True
    needs_unlabeled = True

    def __init__(self, exp: Experiment) -> None:
        super().__init__(exp)
        self.teacher_1 = make_teacher(self.build_student())
        self.teacher_2 = make_teacher(self.build_student())
        self._alt = {"first": True, "count": 0, "period": self._draw_period()}

    # -- teachers and their alternation -------------------------------------------------------

    def _draw_period(self) -> int:
        return int(torch.randint(1, self.params.period_max + 1, ()))

    def active_teacher(self) -> nn.Module:
        return self.teacher_1 if self._alt["first"] else self.teacher_2

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.teacher_1, self.student), (self.teacher_2, self.student)]

    def teacher_decay(self, step: int) -> float:
        n = step // 2 - self.params.ema_hold
        return 0.0 if n < 0 else min(1.0 - 1.0 / (n + 1), self.exp.train.ema_decay)

    def ema_updates(self, step: int, decay: float) -> list[tuple[nn.Module, nn.Module, float]]:
        return [(self.active_teacher(), self.student, self.teacher_decay(step))]

    def after_step(self, step: int) -> None:
        alt = self._alt
        alt["count"] += 1
        if alt["count"] >= alt["period"]:
            self._alt = {"first": not alt["first"], "count": 0, "period": self._draw_period()}

    def get_extra_state(self) -> dict[str, Any]:
        return dict(self._alt)

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self._alt = {"first": bool(state["first"]), "count": int(state["count"]), "period": int(state["period"])}

    def consistency_weight(self, step: int) -> float:
        return self.ramp(self.params.consistency, self.params.rampup, step)

    # -- step ---------------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_targets(self, image_u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Ensemble pseudo labels, confidences and teacher conflicts, each ``(B, X, Y, Z)``."""
        other = self.teacher_2 if self._alt["first"] else self.teacher_1
        self.active_teacher().train()
        other.eval()
        p1 = torch.softmax(self.teacher_1(image_u).logits.float(), dim=1)
        p2 = torch.softmax(self.teacher_2(image_u).logits.float(), dim=1)
        conf, label = entropy_ensemble(p1, p2, self.params.ensemble_temperature).max(dim=1)
        return label, conf, p1.argmax(1) != p2.argmax(1)

    def strong_targets(self, image_u: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The strong view and its (label, confidence, conflict) targets for this step."""
        p = self.params
        strong = strong_view(image_u, p)  # drawn every step, as their loader does
        label, conf, conflict = self.teacher_targets(image_u)
        if self._alt["first"]:
            return strong, label, conf, conflict
        if float(torch.rand(())) >= p.cutmix_prob:
            return image_u.clone(), label, conf, conflict
        source = torch.randperm(image_u.shape[0]).tolist()
        boxes = cutmix_boxes(image_u.shape[0], tuple(image_u.shape[2:]))
        mixed = cutmix([image_u, label, conf, conflict], boxes, source)
        return mixed[0], mixed[1], mixed[2], mixed[3]

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        n_l = batch.labeled_bs
        strong, label, conf, conflict = self.strong_targets(batch.image_u)
        logits = self.student(torch.cat([batch.image_l, batch.image_u, strong])).logits
        pred_l, (pred_w, pred_s) = logits[:n_l], logits[n_l:].chunk(2)
        sup = (F.cross_entropy(pred_l.float(), batch.label_l)
               + all_class_dice(torch.softmax(pred_l.float(), 1), batch.label_l)) / 2
        with torch.no_grad():
            conf_s, label_s = torch.softmax(pred_w.float(), dim=1).max(dim=1)
            label, conf = compromise(label, conf, label_s, conf_s, conflict)
            keep = conf >= self.params.conf_threshold
        unsup = confident_ce(pred_s, label, keep)
        w = self.consistency_weight(step)
        return {"loss": sup + w * unsup, "loss_sup": sup, "loss_unsup": unsup, "w_cons": w,
                "confident": keep.float().mean(), "conflict": conflict.float().mean(),
                "teacher": 1.0 if self._alt["first"] else 2.0}


    @classmethod
    def check_config(cls, exp: Experiment) -> None:
        super().check_config(exp)
        check_params(exp.method.params)


def check_params(p: ADMTParams) -> None:
    if p.period_max < 1:
        raise ConfigError(f"method.period_max: must be at least 1, got {p.period_max}")
    if p.ema_hold < 0:
        raise ConfigError(f"method.ema_hold: must not be negative, got {p.ema_hold}")
    if p.ensemble_temperature <= 0:
        raise ConfigError(f"method.ensemble_temperature: must be positive, got {p.ensemble_temperature}")
    if not p.noise_sigma[0] <= p.noise_sigma[1]:
        raise ConfigError(f"method.noise_sigma: expected (low, high), got {list(p.noise_sigma)}")
