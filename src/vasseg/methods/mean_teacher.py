"""``mean_teacher``: Tarvainen & Valpola's mean teacher as the LA lineage trains it.

Student on labeled + unlabeled patches; EMA teacher on the (noised) unlabeled patches; supervised
0.5 (CE + Dice) on labeled patches plus a softmax-MSE consistency weighted by the Gaussian ramp
``w(t) = w_max exp(-5 (1 - t / T)^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor

from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.base import Method, teacher_noise
from vasseg.methods.losses import SupervisedLoss, softmax_mse, supervised_loss

if TYPE_CHECKING:
    from vasseg.config import Experiment


@dataclass(frozen=True)
class MeanTeacherParams:
    consistency: float = 0.1  # w_max (UA-MT's value)
    # Ramp length as a fraction of train.iterations. The lineage counts iter // 150 up to 40,
    # i.e. 6000 of 6000 iterations; expressed in iterations, the ramp ends with training.
    rampup: float = 1.0
    consistency_on: Literal["unlabeled", "all"] = "unlabeled"  # unlabeled: the lineage
    noise_std: float = 0.1  # teacher input noise clamp(N(0, 0.1), +-0.2)
    noise_clip: float = 0.2
    supervised_loss: SupervisedLoss = "ce_dice"  # ce_dice: the lineage


@register("mean_teacher")
class MeanTeacher(Method):
    """Student + EMA teacher; softmax-MSE consistency on the (noised) unlabeled patches, ramped."""

    Params = MeanTeacherParams
    needs_unlabeled = True
    ema_teacher = True

    def consistency_weight(self, step: int) -> float:
        return self.ramp(self.params.consistency, self.params.rampup, step)

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        n_l = batch.image_l.shape[0]
        logits = self.student(batch.image_all).logits
        sup = supervised_loss(logits[:n_l], batch.label_l, self.params.supervised_loss)
        target = batch.image_all if self.params.consistency_on == "all" else batch.image_u
        with torch.no_grad():
            t_logits = self.teacher(teacher_noise(target, self.params.noise_std, self.params.noise_clip)).logits
        s_logits = logits if self.params.consistency_on == "all" else logits[n_l:]
        cons = softmax_mse(s_logits, t_logits)
        w = self.consistency_weight(step)
        return {"loss": sup + w * cons, "loss_sup": sup, "loss_cons": cons, "w_cons": w}
