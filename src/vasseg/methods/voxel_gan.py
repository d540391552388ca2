"""A voxel-wise adversarial game on sampled voxel features (VAS's ``L_adv``), as losses.

The generator term scores fake (unlabeled) voxel features with the frozen discriminator and wants
them called real; the discriminator's step, after the generator's update, classifies real
(labeled) voxel features as 1 and fake ones as 0 on the features the generator step cached,
detached (:class:`DiscCache`). Rows are the sampled voxels of a
:class:`~vasseg.models.heads.VoxelIndex`; losses reduce over them with
:func:`~vasseg.models.heads.reduce_voxels` (``"mean"`` over voxels, ``"sum"`` per image).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vasseg.models.heads import VoxelIndex, masked_mean, reduce_voxels

Fusion = Callable[[list[Tensor], VoxelIndex], Tensor]  # level maps -> voxel features (N, C)
Discriminator = Callable[[Tensor, Tensor], Tensor]  # features (N, C), classes (N,) -> logits (N,)

GeneratorLoss = Literal["nonsaturating", "minimax"]
# How the losses reduce over the sampled voxels: "mean" over the valid voxels; "sum" over each
# image's voxels, averaged over the images, as VAS's Eq. 2 is written (1/N sum_n sum_f: at 512
# voxels x 2 classes 1024x the mean; benchmarks/RESULTS.md measures what that does to training).
VoxelReduction = Literal["mean", "sum"]


@dataclass
class DiscCache:
    """Detached feature maps (the levels the discriminator's input is made of) and sampled voxels
    of the real (labeled) and fake (unlabeled) patches of one step."""

    maps_l: list[Tensor]
    index_l: VoxelIndex
    maps_u: list[Tensor]
    index_u: VoxelIndex

    @classmethod
    def of(cls, maps_l: list[Tensor], index_l: VoxelIndex, maps_u: list[Tensor], index_u: VoxelIndex) -> DiscCache:
        return cls([m.detach() for m in maps_l], index_l, [m.detach() for m in maps_u], index_u)


def bce(logits: Tensor, target: float) -> Tensor:
    """Per-voxel BCE-with-logits ``(N,)`` against a constant target (1 real, 0 fake)."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target), reduction="none")


def generator_loss(logits: Tensor, kind: GeneratorLoss) -> Tensor:
    """Per-voxel generator loss on fake logits ``(N,)``.

    ``nonsaturating``: ``-log D`` (BCE with target real); ``minimax``: ``log(1 - D)`` (Eq. 2).
    """
    return bce(logits, 1.0) if kind == "nonsaturating" else -bce(logits, 0.0)


def generator_term(fusion: Fusion, discriminator: Discriminator, maps_u: list[Tensor], index_u: VoxelIndex,
                   kind: GeneratorLoss, reduction: VoxelReduction) -> Tensor:
    """The generator's loss: fake voxel features through the (frozen) discriminator, labelled real."""
    logit_u = discriminator(fusion(maps_u, index_u), index_u.classes)
    return reduce_voxels(generator_loss(logit_u, kind), index_u, reduction)


def discriminator_losses(fusion: Fusion, discriminator: Discriminator, cache: DiscCache, train_fusion: bool,
                         reduction: VoxelReduction) -> dict[str, Tensor]:
    """``loss_d`` (real + fake) on the cached voxels, its two parts and D's accuracy on each side.

    ``train_fusion``: the fusion in front of D is D's own (D's optimiser trains it); otherwise its
    output is detached, so D's loss reaches D only.
    """
    with torch.set_grad_enabled(train_fusion and torch.is_grad_enabled()):
        f_l = fusion(cache.maps_l, cache.index_l)
        f_u = fusion(cache.maps_u, cache.index_u)
    if not train_fusion:
        f_l, f_u = f_l.detach(), f_u.detach()
    logit_l = discriminator(f_l, cache.index_l.classes)
    logit_u = discriminator(f_u, cache.index_u.classes)
    real = reduce_voxels(bce(logit_l, 1.0), cache.index_l, reduction)
    fake = reduce_voxels(bce(logit_u, 0.0), cache.index_u, reduction)
    return {
        "loss_d": real + fake,
        "loss_d_real": real,
        "loss_d_fake": fake,
        "d_acc_real": masked_mean((logit_l > 0).float(), cache.index_l.mask),
        "d_acc_fake": masked_mean((logit_u < 0).float(), cache.index_u.mask),
    }
