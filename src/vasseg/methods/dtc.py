"""``dtc``: dual-task consistency (Luo et al., AAAI 2021) as its public code trains LA.

From HiLab-git/DTC ``code/train_la_dtc.py`` and ``networks/vnet_sdf.py``:

* the same dual-head VNet as SASSNet (one sigmoid segmentation channel + tanh SDM head);
* supervised ``Dice(sigmoid) + 0.3 MSE(SDM)`` on the labeled patches (their BCE term is computed
  and logged but never added; left out here);
* dual-task consistency on all four patches: ``mean((sigmoid(-1500 SDM) - sigmoid(seg))^2)``,
  gradient through both heads, weight ``1.0 ramp(t)`` (their ``iter // 150`` over 40, here in
  iterations).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.sdm_head import SDMHeadMethod


@dataclass(frozen=True)
class DTCParams:
    beta: float = 0.3  # weight of the SDM regression
    consistency: float = 1.0  # w_max of the dual-task consistency
    rampup: float = 1.0  # fraction of train.iterations (6000 of 6000)
    sharpness: float = 1500.0  # k of the SDM -> mask transform sigmoid(-k * SDM)


def sdm_to_mask(sdm: Tensor, sharpness: float = 1500.0) -> Tensor:
    """DTC's smooth approximation of the inverse SDM transform: ``sigmoid(-k * sdm)``.

    ``sdm``: any shape, negative inside; returns foreground probabilities of the same shape.
    """
    return torch.sigmoid(-sharpness * sdm)


def dual_task_consistency(sdm: Tensor, seg_logits: Tensor, sharpness: float = 1500.0) -> Tensor:
    """``mean((sigmoid(-k sdm) - sigmoid(seg_logits))^2)`` over every element ``(B, 1, X, Y, Z)``.

    Both sides carry gradient, as in their code.
    """
    return torch.mean((sdm_to_mask(sdm.float(), sharpness) - torch.sigmoid(seg_logits.float())) ** 2)


@register("dtc")
class DTC(SDMHeadMethod):
    """Dual-head student; consistency between the segmentation and the mask of its SDM."""

    Params = DTCParams
    term = "cons"

    def consistency_weight(self, step: int) -> float:
        return self.ramp(self.params.consistency, self.params.rampup, step)

    def loss_terms(self, batch: Batch, step: int) -> dict[str, Tensor | float]:
        """Live supervised and consistency terms and the step's weight."""
        out = self.student(batch.image_all)
        terms: dict[str, Tensor | float] = dict(self.supervised_terms(out, batch))
        terms["loss_cons"] = dual_task_consistency(out.sdm, out.logits, self.params.sharpness)
        terms["w_cons"] = self.consistency_weight(step)
        return terms
