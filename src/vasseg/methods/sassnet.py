"""``sassnet``: shape-aware adversarial training (Li et al., MICCAI 2020) as its public code runs.

From kleinzcy/SASSnet ``code/train_gan_sdfloss.py``, ``networks/vnet_sdf.py``,
``networks/discriminator.py`` and ``README.md``:

* the VNet has one sigmoid segmentation channel and a tanh head regressing the normalised signed
  distance map (SDM) of the foreground (:mod:`vasseg.sdm`);
* supervised ``Dice(sigmoid) + 0.3 MSE(SDM)`` on the labeled patches (their BCE term is computed
  and logged but never added; it is left out here);
* generator: the discriminator, in eval mode, scores the unlabeled patches' (SDM, image);
  ``CE(D, "labeled")`` is added with weight ``w ramp(t)``, ``w`` = 0.01 for 16 labeled and 0.015
  for 8 (README), same ramp as UA-MT;
* discriminator step, after the generator's update: the student is re-run in eval mode without
  gradient on all four patches, the discriminator (training mode) classifies labeled (1) vs
  unlabeled (0) with cross-entropy; Adam lr 1e-4, betas (0.9, 0.99).

The dual-head student and its supervised terms are :class:`~vasseg.methods.sdm_head.SDMHeadMethod`'s
(shared with DTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.base import Adversarial, DiscriminatorParams
from vasseg.methods.players import HANDOFF
from vasseg.methods.sdm_head import SDMHeadMethod, eval_mode
from vasseg.models.discriminator import SDMDiscriminator

if TYPE_CHECKING:
    from vasseg.config import Experiment


@dataclass(frozen=True)
class SASSNetParams(DiscriminatorParams):
    beta: float = 0.3  # weight of the SDM regression
    adversarial: float = 0.01  # w_max of the adversarial term: 0.01 (16 labeled), 0.015 (8)
    rampup: float = 1.0  # fraction of train.iterations (their iter // 150 over 40 = 6000 of 6000)
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.9, 0.99)
    disc_filters: int = 64
    # eval_recompute: D learns on the updated student's SDM in eval mode (their code);
    # cached: on the generator step's detached SDM (one forward pass cheaper).
    disc_input: Literal["eval_recompute", "cached"] = "eval_recompute"


@register("sassnet")
class SASSNet(SDMHeadMethod, Adversarial):
    """Dual-head student; a discriminator on the SDMs makes unlabeled shapes look like labeled ones."""

    Params = SASSNetParams
    needs_unlabeled = True
    term = "adv"

    def __init__(self, exp: Experiment) -> None:
        super().__init__(exp)
        self.discriminator = SDMDiscriminator(1, exp.model.in_channels, self.params.disc_filters)

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def adversarial_weight(self, step: int) -> float:
        return self.ramp(self.params.adversarial, self.params.rampup, step)

    # -- generator ----------------------------------------------------------------------------

    def loss_terms(self, batch: Batch, step: int) -> dict[str, Tensor | float]:
        """Live supervised and adversarial terms (the engine keeps D's parameters frozen here)."""
        n_l = batch.labeled_bs
        self.discriminator.eval()  # their generator step: D.eval() (no dropout)
        out = self.student(batch.image_all)
        terms = self.supervised_terms(out, batch)
        d_logits = self.discriminator(out.sdm[n_l:], batch.image_u)
        real = torch.ones(d_logits.shape[0], dtype=torch.long, device=d_logits.device)
        terms["loss_adv"] = F.cross_entropy(d_logits.float(), real)  # make D call unlabeled "labeled"
        terms["w_adv"] = self.adversarial_weight(step)
        terms[HANDOFF] = out.sdm.detach()  # the "cached" discriminator input
        return terms

    # -- discriminator ------------------------------------------------------------------------

    @torch.no_grad()
    def discriminator_input(self, batch: Batch, handoff: Tensor | None = None) -> Tensor:
        """The SDMs ``(B, 1, X, Y, Z)`` D learns on (no gradient to the student); ``handoff``: the
        generator step's, used under ``disc_input: cached``."""
        if self.params.disc_input == "cached" and handoff is not None:
            return handoff
        with eval_mode(self.student):
            return self.student(batch.image_all).sdm

    def discriminator_step(self, batch: Batch, step: int, handoff: Tensor | None = None) -> dict[str, Tensor]:
        self.discriminator.train()
        sdm = self.discriminator_input(batch, handoff)
        logits = self.discriminator(sdm, batch.image_all)
        n_l = batch.labeled_bs
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        target[:n_l] = 1  # labeled = 1 ("real"), unlabeled = 0
        loss_d = F.cross_entropy(logits.float(), target)
        accuracy = (logits.argmax(dim=1) == target).float().mean()
        return {"loss_d": loss_d, "d_accuracy": accuracy}
