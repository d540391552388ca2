"""``mean_teacher``: Tarvainen & Valpola's mean teacher as the LA lineage trains it.

Student on labeled + unlabeled patches; EMA teacher on the (noised) unlabeled patches; supervised
0.5 (CE + Dice) on labeled patches plus a softmax-MSE consistency weighted by the Gaussian ramp
``w(t) = w_max exp(-5 (1 - t / T)^2)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.base import Method, make_teacher, teacher_noise
from vasseg.methods.losses import sigmoid_rampup, softmax_mse, supervised_loss


@dataclass(frozen=True)
class MeanTeacherParams:
    consistency: float = 0.1  # w_max (UA-MT's value)
    # Ramp length as a fraction of train.iterations. The lineage counts iter // 150 up to 40,
    # i.e. 6000 of 6000 iterations; expressed in iterations, the ramp ends with training.
    rampup: float = 1.0
    consistency_on: str = "unlabeled"  # unlabeled (lineage) | all
    noise_std: float = 0.1  # teacher input noise clamp(N(0, 0.1), +-0.2)
    noise_clip: float = 0.2
    supervised_loss: str = "ce_dice"  # ce_dice (lineage) | dice


@register("mean_teacher")
class MeanTeacher(Method):
    Params = MeanTeacherParams

    def __init__(self, exp) -> None:
        super().__init__(exp)
        if self.params.consistency_on not in ("unlabeled", "all"):
            raise ValueError(f"method.consistency_on: {self.params.consistency_on!r} is not unlabeled or all")
        self.teacher = make_teacher(self.student)

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.teacher, self.student)]

    def consistency_weight(self, step: int) -> float:
        ramp = self.params.rampup * self.exp.train.iterations
        return self.params.consistency * sigmoid_rampup(step, ramp)

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
        return {
            "loss": sup + w * cons,
            "loss_sup": sup.detach(),
            "loss_cons": cons.detach(),
            "w_cons": w,
        }
