"""``uamt``: uncertainty-aware mean teacher (Yu et al., MICCAI 2019) as its public code trains LA.

From yulequan/UA-MT ``code/train_LA_meanteacher_certainty_unlabel.py`` (and ``utils/losses.py``):

* student on 2 labeled + 2 unlabeled patches; supervised ``0.5 (CE + Dice)`` on the labeled ones
  (Dice with squared sums);
* EMA teacher (in training mode: dropout active) on the unlabeled patches plus input noise
  ``clamp(N(0, 0.1), -0.2, 0.2)`` gives the consistency target;
* uncertainty: ``T = 8`` further noisy teacher passes (stacked two noisy copies per forward),
  softmax averaged over the passes, predictive entropy ``-sum_k p_k log(p_k + 1e-6)``;
* mask ``entropy < (0.75 + 0.25 ramp(t / iterations)) ln 2``; consistency
  ``sum(mask * (softmax_s - softmax_t)^2) / (2 sum(mask) + 1e-16)`` (the 2: channels);
* consistency weight ``0.1 ramp(t / 6000)`` (their ``iter // 150`` over 40, here in iterations).

For ``K`` classes the threshold uses ``ln K`` (the largest entropy) and the divisor ``K``; both
are the code's ``ln 2`` and ``2`` for the binary LA task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.base import Method, teacher_noise
from vasseg.methods.losses import SupervisedLoss, supervised_loss
from vasseg.typed import ConfigError

if TYPE_CHECKING:
    from vasseg.config import Experiment

ENTROPY_EPS = 1e-6  # inside the log, as in their entropy


@dataclass(frozen=True)
class UAMTParams:
    consistency: float = 0.1  # w_max of the masked consistency
    rampup: float = 1.0  # consistency ramp length, fraction of train.iterations (6000 of 6000)
    noise_std: float = 0.1  # teacher input noise clamp(N(0, std), -clip, clip)
    noise_clip: float = 0.2
    passes: int = 8  # T stochastic teacher passes for the uncertainty
    copies_per_forward: int = 2  # noisy copies stacked per teacher forward (their code: 2)
    threshold_start: float = 0.75  # threshold = (start + (1 - start) ramp) ln K
    threshold_rampup: float = 1.0  # threshold ramp length, fraction of train.iterations
    supervised_loss: SupervisedLoss = "ce_dice"  # ce_dice: their code


def predictive_entropy(probs: Tensor) -> Tensor:
    """``-sum_k p_k log(p_k + 1e-6)`` over channels: ``(B, K, X, Y, Z)`` -> ``(B, 1, X, Y, Z)`` nats."""
    return -(probs * torch.log(probs + ENTROPY_EPS)).sum(dim=1, keepdim=True)


def masked_consistency(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor) -> Tensor:
    """``sum(mask (softmax_s - softmax_t)^2) / (K sum(mask) + 1e-16)``.

    ``student_logits``, ``teacher_logits``: ``(B, K, X, Y, Z)``; ``mask``: ``(B, 1, X, Y, Z)``
    in {0, 1}. Only the student side carries gradient.
    """
    diff = torch.softmax(student_logits.float(), 1) - torch.softmax(teacher_logits.detach().float(), 1)
    k = student_logits.shape[1]
    return (mask * diff * diff).sum() / (k * mask.sum() + 1e-16)


@register("uamt")
class UAMT(Method):
    """Mean teacher whose consistency keeps the voxels the teacher is certain about (MC dropout)."""

    Params = UAMTParams
    needs_unlabeled = True
    ema_teacher = True

    @classmethod
    def check_config(cls, exp: Experiment) -> None:
        super().check_config(exp)
        p: UAMTParams = exp.method.params
        if p.passes < 1 or p.copies_per_forward < 1 or p.passes % p.copies_per_forward:
            raise ConfigError(
                f"method.passes ({p.passes}) must be a positive multiple of method.copies_per_forward "
                f"({p.copies_per_forward})"
            )

    # -- schedules ----------------------------------------------------------------------------

    def consistency_weight(self, step: int) -> float:
        return self.ramp(self.params.consistency, self.params.rampup, step)

    def uncertainty_threshold(self, step: int) -> float:
        """Entropy threshold in nats: ``(0.75 + 0.25 ramp(step)) ln K`` by default."""
        p = self.params
        ramp = self.ramp(1.0, p.threshold_rampup, step)
        return (p.threshold_start + (1.0 - p.threshold_start) * ramp) * math.log(self.num_classes)

    # -- teacher ------------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_uncertainty(self, image_u: Tensor) -> Tensor:
        """Predictive entropy ``(B_u, 1, X, Y, Z)`` of ``passes`` noisy teacher passes.

        The teacher stays in its current mode (training mode while training: dropout active and
        batch statistics over the stacked copies, as in their code).
        """
        p = self.params
        copies = p.copies_per_forward
        total: Tensor | None = None
        for _ in range(p.passes // copies):
            noisy = teacher_noise(image_u.repeat(copies, 1, 1, 1, 1), p.noise_std, p.noise_clip)
            probs = torch.softmax(self.teacher(noisy).logits.float(), dim=1)
            probs = probs.view(copies, image_u.shape[0], *probs.shape[1:]).sum(0)
            total = probs if total is None else total + probs
        return predictive_entropy(total / p.passes)

    # -- step ---------------------------------------------------------------------------------

    def loss_terms(self, batch: Batch, step: int) -> dict[str, Tensor | float]:
        """Live loss terms (with gradient) and the step's schedule values."""
        p = self.params
        n_l = batch.labeled_bs
        logits = self.student(batch.image_all).logits
        sup = supervised_loss(logits[:n_l], batch.label_l, p.supervised_loss)
        with torch.no_grad():
            t_logits = self.teacher(teacher_noise(batch.image_u, p.noise_std, p.noise_clip)).logits
            uncertainty = self.teacher_uncertainty(batch.image_u)
            threshold = self.uncertainty_threshold(step)
            mask = (uncertainty < threshold).float()
        cons = masked_consistency(logits[n_l:], t_logits, mask)
        return {"loss_sup": sup, "loss_cons": cons, "w_cons": self.consistency_weight(step),
                "threshold": threshold, "mask_fraction": mask.mean(), "uncertainty": uncertainty.mean()}

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        t = self.loss_terms(batch, step)
        return {"loss": t["loss_sup"] + t["w_cons"] * t["loss_cons"], **t}
