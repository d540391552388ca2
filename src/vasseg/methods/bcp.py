"""``bcp``: bidirectional copy-paste (Bai et al., CVPR 2023) as its public code trains LA.

From DeepMed-Lab-ECNU/BCP ``code/LA_BCP_train.py`` and ``code/utils/BCP_utils.py`` /
``code/utils/losses.py`` (``mask_DiceLoss``):

* batch 4 labeled + 4 unlabeled patches, each stream split in halves ``a`` and ``b``; one cube
  mask per step (:func:`vasseg.methods.mixing.cube_mask`): a zero cube of ``int(2/3 S)`` voxels
  per axis, 74 x 74 x 53 at 112 x 112 x 80;
* **pre-train** (their 2000 iterations, constant lr 0.01): the labeled ``a`` patches with the
  cube of labeled ``b`` pasted in, labels mixed the same way; loss ``(CE + Dice) / 2``;
* **self-train** (their 15000 iterations): a new student AND teacher loaded from the pre-trained
  student, a new SGD optimizer, lr / 10 every 2500 of its own iterations, EMA 0.99 with no
  warm-up. The teacher (training mode, as theirs) labels the unlabeled halves: foreground
  probability >= 0.5, then the largest 26-connected component per patch. Two mixed inputs:
  labeled ``a`` around an unlabeled ``a`` cube, and unlabeled ``b`` around a labeled ``b`` cube,
  each through the student separately; each loss is ``(Dice + CE) / 2`` over the two regions,
  weight 1 on the labeled region and ``u_weight = 0.5`` on the pseudo-labelled one; the step's
  loss is their sum;
* Dice (``mask_DiceLoss``): per patch and per class (background included), linear sums
  ``1 - (2 sum(m p t) + 1e-5) / (sum(m (p + t)) + 1e-5)``, averaged; the region CE is
  ``sum(m CE) / (sum(m) + 1e-16)``.

Their script hands over the pre-train checkpoint with the best Dice on the test list and keeps
the best self-train Dice on it too (test leakage); here the last pre-train student is handed
over and the run is tested at its last iteration (``eval.checkpoint=best`` selects on a
validation split). Their cube start is drawn in ``[0, 112 - side)`` / ``[0, 80 - side)`` (sizes
hard-coded); here in ``[0, S - side)`` of the actual patch, the same at 112 x 112 x 80.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn

from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.base import Method
from vasseg.methods.mixing import cube_mask, paste
from vasseg.methods.phases import Phase
from vasseg.typed import ConfigError

if TYPE_CHECKING:
    from vasseg.config import Experiment

PRETRAIN, SELFTRAIN = "pretrain", "selftrain"


@dataclass(frozen=True)
class BCPParams:
    # Pre-train length as a fraction of train.iterations: their 2000 of 2000 + 15000 (= 2 / 17).
    pretrain: float = 2 / 17
    mask_ratio: float = 2 / 3  # cube side / patch side, per axis (their int(S * 2/3))
    u_weight: float = 0.5  # weight of the pseudo-labelled region of each mixed patch (labeled: 1)
    pseudo_threshold: float = 0.5  # teacher foreground probability that makes a pseudo label
    largest_component: bool = True  # keep each pseudo label's largest 26-connected component (nms=1)


def region_dice_loss(logits: Tensor, labels: Tensor, region: Tensor | None = None, smooth: float = 1e-5) -> Tensor:
    """BCP's ``mask_DiceLoss``: ``1 - mean over patches and classes of the Dice inside ``region``.

    ``logits``: ``(B, K, X, Y, Z)``; ``labels``: ``(B, X, Y, Z)`` class ids; ``region``: bool or
    {0, 1}, broadcastable to ``(B, X, Y, Z)`` (None: everywhere). Linear sums, background included.
    """
    probs = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(labels, probs.shape[1]).movedim(-1, 1).float()
    weight = torch.ones_like(probs[:, :1]) if region is None else region.float().expand_as(labels).unsqueeze(1)
    dims = tuple(range(2, probs.ndim))
    inter = (probs * onehot * weight).sum(dims)
    union = ((probs + onehot) * weight).sum(dims)
    return 1.0 - ((2.0 * inter + smooth) / (union + smooth)).mean()


def region_ce_loss(logits: Tensor, labels: Tensor, region: Tensor) -> Tensor:
    """Cross-entropy averaged over the voxels of ``region`` (``(X, Y, Z)`` or ``(B, X, Y, Z)``)."""
    weight = region.float().expand_as(labels)
    return (F.cross_entropy(logits.float(), labels, reduction="none") * weight).sum() / (weight.sum() + 1e-16)


def mix_loss(logits: Tensor, outside: Tensor, inside: Tensor, keep: Tensor, w_out: float, w_in: float) -> Tensor:
    """``(Dice + CE) / 2`` of a mixed patch: ``outside`` labels where ``keep``, ``inside`` in the cube."""
    cube = ~keep
    dice = w_out * region_dice_loss(logits, outside, keep) + w_in * region_dice_loss(logits, inside, cube)
    ce = w_out * region_ce_loss(logits, outside, keep) + w_in * region_ce_loss(logits, inside, cube)
    return (dice + ce) / 2


def largest_component(masks: Tensor) -> Tensor:
    """Each ``(X, Y, Z)`` mask of ``(B, X, Y, Z)`` reduced to its largest 26-connected component.

    An empty mask stays empty; ties go to the component met first in scan order (as theirs).
    """
    out = np.zeros(masks.shape, dtype=np.int64)
    for i, mask in enumerate(masks.cpu().numpy()):
        components, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        if count:
            out[i] = components == 1 + np.argmax(np.bincount(components.ravel())[1:])
    return torch.from_numpy(out).to(masks.device)


@register("bcp")
class BCP(Method):
    """Copy-paste of labeled and unlabeled halves: a supervised pre-train, then self-training."""

    Params = BCPParams
    needs_unlabeled = True
    ema_teacher = True

    # -- phases and teacher -------------------------------------------------------------------

    def phases(self) -> list[Phase]:
        total = self.exp.train.iterations
        pre = round(self.params.pretrain * total)
        return [Phase(PRETRAIN, pre, lr_policy="constant"),
                Phase(SELFTRAIN, total - pre, fresh_optimizer=True, ema_warmup=False)]

    def on_phase_start(self, phase: Phase) -> None:
        if phase.name == SELFTRAIN:  # their self-train loads the pre-trained weights into both nets
            self.teacher.load_state_dict(self.student.state_dict())

    def ema_updates(self, step: int, decay: float) -> list[tuple[nn.Module, nn.Module, float]]:
        if self.phase_at(step).phase.name == PRETRAIN:  # no teacher before the hand-over
            return []
        return super().ema_updates(step, decay)

    # -- steps --------------------------------------------------------------------------------

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        if self.phase_at(step).phase.name == PRETRAIN:
            return self.pretrain_step(batch)
        return self.selftrain_step(batch)

    def _cube(self, batch: Batch) -> Tensor:
        return cube_mask(tuple(batch.label_l.shape[1:]), self.params.mask_ratio, batch.label_l.device)

    def pretrain_step(self, batch: Batch) -> dict[str, Tensor]:
        """Labeled ``a`` patches around a cube of labeled ``b`` patches (images and labels)."""
        h = batch.labeled_bs // 2
        keep = self._cube(batch)
        image = paste(batch.image_l[:h], batch.image_l[h:], keep)
        label = paste(batch.label_l[:h], batch.label_l[h:], keep)
        logits = self.student(image).logits
        ce = F.cross_entropy(logits.float(), label)
        dice = region_dice_loss(logits, label)
        return {"loss": (ce + dice) / 2, "loss_ce": ce, "loss_dice": dice}

    @torch.no_grad()
    def pseudo_labels(self, image: Tensor) -> Tensor:
        """Teacher pseudo labels ``(B, X, Y, Z)`` int64 of unlabeled images ``(B, C, X, Y, Z)``."""
        probs = torch.softmax(self.teacher(image).logits.float(), dim=1)
        labels = (probs[:, 1] >= self.params.pseudo_threshold).long()
        return largest_component(labels) if self.params.largest_component else labels

    def selftrain_step(self, batch: Batch) -> dict[str, Tensor]:
        """Bidirectional copy-paste between labeled and unlabeled halves, teacher pseudo labels."""
        p, h = self.params, batch.labeled_bs // 2
        img_a, img_b, lab_a, lab_b = batch.image_l[:h], batch.image_l[h:], batch.label_l[:h], batch.label_l[h:]
        un_a, un_b = batch.image_u[:h], batch.image_u[h:]
        plab_a, plab_b = self.pseudo_labels(un_a), self.pseudo_labels(un_b)  # one forward each, as theirs
        keep = self._cube(batch)
        logits_l = self.student(paste(img_a, un_a, keep)).logits
        logits_u = self.student(paste(un_b, img_b, keep)).logits
        loss_l = mix_loss(logits_l, lab_a, plab_a, keep, 1.0, p.u_weight)
        loss_u = mix_loss(logits_u, plab_b, lab_b, keep, p.u_weight, 1.0)
        return {"loss": loss_l + loss_u, "loss_l": loss_l, "loss_u": loss_u,
                "pseudo_fg": torch.cat([plab_a, plab_b]).float().mean()}


    @classmethod
    def check_config(cls, exp: Experiment) -> None:
        super().check_config(exp)
        check_params(exp.method.params, exp)


def check_params(p: BCPParams, exp: Experiment) -> None:
    """BCP's constraints on the batch, the classes and its own parameters (one-line errors)."""
    d = exp.data
    if exp.data.num_classes != 2:
        raise ConfigError(f"data.num_classes: bcp supports 2 classes (its pseudo labels threshold the "
                          f"foreground), got {exp.data.num_classes}")
    if d.labeled_bs < 2 or d.labeled_bs % 2 or d.unlabeled_bs != d.labeled_bs:
        raise ConfigError(f"data.labeled_bs / unlabeled_bs: bcp mixes halves of equal labeled and unlabeled "
                          f"batches (an even labeled_bs = unlabeled_bs), got {d.labeled_bs} / {d.unlabeled_bs}")
    if not 0.0 <= p.pretrain <= 1.0:
        raise ConfigError(f"method.pretrain: a fraction of train.iterations in [0, 1], got {p.pretrain}")
    if not 0.0 < p.mask_ratio < 1.0:
        raise ConfigError(f"method.mask_ratio: must be in (0, 1), got {p.mask_ratio}")
    if any(not 0 < int(s * p.mask_ratio) < s for s in d.patch_size):
        raise ConfigError(f"method.mask_ratio: {p.mask_ratio} leaves no room for the cube in a "
                          f"{list(d.patch_size)} patch")
