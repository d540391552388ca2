"""The dual-head student SASSNet and DTC share: a sigmoid segmentation channel and a tanh head
regressing the normalised signed distance map (SDM) of the foreground (:mod:`vasseg.sdm`).

Supervised on the labeled patches with ``Dice(sigmoid) + beta MSE(SDM)`` (both public codes also
compute a BCE term that they log but never add; it is left out here). A subclass adds one
unsupervised term ``loss_<term>`` with its weight ``w_<term>`` (``term`` names it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vasseg.data.batcher import Batch
from vasseg.methods.base import Method
from vasseg.methods.losses import soft_dice_loss
from vasseg.models.multihead import SDMOutput, SDMVNet
from vasseg.sdm import signed_distance_map
from vasseg.typed import ConfigError

if TYPE_CHECKING:
    from vasseg.config import Experiment


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Temporarily put ``module`` in eval mode, restoring its previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class SDMHeadMethod(Method):
    """Base of SASSNet and DTC: dual-head student, Dice + beta * MSE(SDM) on labeled patches.

    The student's ``logits`` are one sigmoid channel: ``predict`` returns ``[1 - p, p]``, so the
    engine's argmax is the lineage's ``p > 0.5``. Subclasses implement :meth:`loss_terms` (live
    terms: ``loss_dice``, ``loss_sdm``, ``loss_<term>``, ``w_<term>``).
    """

    output_kind = "sigmoid"
    term: ClassVar[str] = ""  # the unsupervised term: "adv" (SASSNet), "cons" (DTC)

    @classmethod
    def check_config(cls, exp: Experiment) -> None:
        """Their public code is binary (one sigmoid channel)."""
        super().check_config(exp)
        if exp.data.num_classes != 2:
            raise ConfigError(f"{cls.name} supports 2 classes (its public code is binary); data.num_classes is "
                              f"{exp.data.num_classes}")

    def build_student(self) -> nn.Module:
        m = self.exp.model
        return SDMVNet(m.in_channels, 1, m.filters, m.norm, m.dropout)

    def supervised_terms(self, out: SDMOutput, batch: Batch) -> dict[str, Tensor]:
        """Dice of the sigmoid and MSE of the SDM head on the labeled patches (live tensors)."""
        n_l = batch.labeled_bs
        fg = batch.label_l == 1  # (B_l, X, Y, Z)
        gt_sdm = signed_distance_map(fg)  # once per batch, on the device, no gradient
        loss_sdm = F.mse_loss(out.sdm[:n_l, 0].float(), gt_sdm)
        loss_dice = soft_dice_loss(torch.sigmoid(out.logits[:n_l, 0].float()), fg)
        return {"loss_dice": loss_dice, "loss_sdm": loss_sdm}

    def loss_terms(self, batch: Batch, step: int) -> dict[str, Tensor | float]:
        """The supervised terms, the unsupervised term and its weight for this step (live)."""
        raise NotImplementedError

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        t = self.loss_terms(batch, step)
        sup = t["loss_dice"] + self.params.beta * t["loss_sdm"]
        return {"loss": sup + t[f"w_{self.term}"] * t[f"loss_{self.term}"], "loss_sup": sup, **t}
