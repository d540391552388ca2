"""``supervised``: the VNet trained on the labeled patches only (the paper's "VNet" rows)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.base import Method
from vasseg.methods.losses import SupervisedLoss, supervised_loss


@dataclass(frozen=True)
class SupervisedParams:
    # The lineage's fully supervised script (UA-MT train_LA.py) minimises 0.5 (CE + Dice).
    supervised_loss: SupervisedLoss = "ce_dice"


@register("supervised")
class Supervised(Method):
    """The student on the labeled patches only."""

    Params = SupervisedParams
    uses_unlabeled = False

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        logits = self.student(batch.image_l).logits
        loss = supervised_loss(logits, batch.label_l, self.params.supervised_loss)
        return {"loss": loss, "loss_sup": loss}
