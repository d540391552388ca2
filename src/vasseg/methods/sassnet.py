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

:class:`SDMHeadMethod` (the dual-head student and its supervised terms) is shared with DTC.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vasseg.config import ConfigError, Experiment
from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.base import Method, OptimizerSpec
from vasseg.methods.losses import sigmoid_rampup, soft_dice_loss
from vasseg.models.discriminator import SDMDiscriminator
from vasseg.models.multihead import SDMOutput, SDMVNet
from vasseg.sdm import signed_distance_map


def require_binary(exp: Experiment, name: str) -> None:
    """The SDM-head methods' public code is binary (one sigmoid channel)."""
    if exp.data.num_classes != 2:
        raise ConfigError(
            f"{name} supports 2 classes (its public code is binary); data.num_classes is "
            f"{exp.data.num_classes}"
        )


def require_unlabeled(exp: Experiment, name: str) -> None:
    if exp.data.unlabeled_bs < 1:
        raise ConfigError(f"{name} needs unlabeled patches: data.unlabeled_bs must be >= 1")


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
    engine's argmax is the lineage's ``p > 0.5``.
    """

    output_kind = "sigmoid"

    def __init__(self, exp: Experiment) -> None:
        require_binary(exp, self.name)
        super().__init__(exp)

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

    def ramped(self, w_max: float, rampup: float, step: int) -> float:
        """``w_max`` times the Gaussian ramp over ``rampup * train.iterations`` iterations."""
        return w_max * sigmoid_rampup(step, rampup * self.exp.train.iterations)


@dataclass(frozen=True)
class SASSNetParams:
    beta: float = 0.3  # weight of the SDM regression
    adversarial: float = 0.01  # w_max of the adversarial term: 0.01 (16 labeled), 0.015 (8)
    rampup: float = 1.0  # fraction of train.iterations (their iter // 150 over 40 = 6000 of 6000)
    disc_lr: float = 1e-4
    disc_betas: tuple[float, float] = (0.9, 0.99)
    disc_filters: int = 64
    # eval_recompute: D learns on the updated student's SDM in eval mode (their code);
    # cached: on the generator step's detached SDM (one forward pass cheaper).
    disc_input: str = "eval_recompute"


@register("sassnet")
class SASSNet(SDMHeadMethod):
    Params = SASSNetParams

    def __init__(self, exp: Experiment) -> None:
        super().__init__(exp)
        require_unlabeled(exp, self.name)
        if self.params.disc_input not in ("eval_recompute", "cached"):
            raise ConfigError(f"method.disc_input: {self.params.disc_input!r} is not eval_recompute or cached")
        self.discriminator = SDMDiscriminator(1, exp.model.in_channels, self.params.disc_filters)
        self._cached_sdm: Tensor | None = None

    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.discriminator.parameters())

    def discriminator_optimizer(self) -> OptimizerSpec:
        return OptimizerSpec(name="adam", lr=self.params.disc_lr, betas=self.params.disc_betas)

    def adversarial_weight(self, step: int) -> float:
        return self.ramped(self.params.adversarial, self.params.rampup, step)

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
        self._cached_sdm = out.sdm.detach()
        return terms

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        t = self.loss_terms(batch, step)
        sup = t["loss_dice"] + self.params.beta * t["loss_sdm"]
        loss = sup + t["w_adv"] * t["loss_adv"]
        logged = {k: v.detach() if isinstance(v, Tensor) else v for k, v in t.items()}
        return {"loss": loss, "loss_sup": sup.detach(), **logged}

    # -- discriminator ------------------------------------------------------------------------

    @torch.no_grad()
    def discriminator_input(self, batch: Batch) -> Tensor:
        """The SDMs ``(B, 1, X, Y, Z)`` D learns on (no gradient to the student)."""
        if self.params.disc_input == "cached" and self._cached_sdm is not None:
            return self._cached_sdm
        with eval_mode(self.student):
            return self.student(batch.image_all).sdm

    def discriminator_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        self.discriminator.train()
        sdm = self.discriminator_input(batch)
        self._cached_sdm = None
        logits = self.discriminator(sdm, batch.image_all)
        n_l = batch.labeled_bs
        target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        target[:n_l] = 1  # labeled = 1 ("real"), unlabeled = 0
        loss_d = F.cross_entropy(logits.float(), target)
        accuracy = (logits.argmax(dim=1) == target).float().mean()
        return {"loss_d": loss_d, "d_accuracy": accuracy.detach()}
