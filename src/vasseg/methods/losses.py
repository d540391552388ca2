"""Losses and ramps shared by the methods (pure functions of tensors)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor


# The supervised terms a method's ``supervised_loss`` option may name (see supervised_loss).
SupervisedLoss = Literal["ce_dice", "dice", "ce"]
ConsistencyReduction = Literal["mean", "sum"]  # see softmax_mse


def soft_dice_loss(probs: Tensor, target: Tensor, smooth: float = 1e-5) -> Tensor:
    """The lineage's Dice loss with squared sums, pooled over the batch, one class.

    ``1 - (2 sum(p t) + s) / (sum(p^2) + sum(t^2) + s)`` with ``probs`` and ``target`` of the
    same shape (any), ``target`` in {0, 1}.
    """
    target = target.float()
    intersect = (probs * target).sum()
    denom = (probs * probs).sum() + (target * target).sum()
    return 1.0 - (2.0 * intersect + smooth) / (denom + smooth)


def multiclass_dice_loss(probs: Tensor, labels: Tensor, smooth: float = 1e-5) -> Tensor:
    """Mean of :func:`soft_dice_loss` over the foreground classes.

    Args:
        probs: ``(B, K, X, Y, Z)`` softmax probabilities.
        labels: ``(B, X, Y, Z)`` integer class ids in ``[0, K)``.
    For K = 2 this is exactly the lineage's ``dice_loss(p[:, 1], label == 1)``.
    """
    losses = [soft_dice_loss(probs[:, c], labels == c, smooth) for c in range(1, probs.shape[1])]
    return torch.stack(losses).mean()


def supervised_loss(logits: Tensor, labels: Tensor, kind: SupervisedLoss = "dice") -> Tensor:
    """Supervised segmentation loss on labeled patches.

    ``kind="dice"`` is the VAS paper's Eq. 4; ``"ce_dice"`` is the lineage's 0.5 (CE + Dice);
    ``"ce"`` is cross-entropy alone (a mean over voxels, so it splits exactly across DDP ranks).
    ``logits``: ``(B, K, X, Y, Z)``; ``labels``: ``(B, X, Y, Z)`` int64.
    """
    if kind == "ce":
        return F.cross_entropy(logits, labels)
    dice = multiclass_dice_loss(torch.softmax(logits, dim=1), labels)
    if kind == "dice":
        return dice
    if kind == "ce_dice":
        return 0.5 * (F.cross_entropy(logits, labels) + dice)
    raise ValueError(f"unknown supervised loss {kind!r}; choose dice, ce_dice or ce")


def softmax_mse(student_logits: Tensor, teacher_logits: Tensor, reduction: ConsistencyReduction = "mean") -> Tensor:
    """Squared difference of the two softmaxes (the lineage's consistency loss).

    ``"mean"`` runs over every element ``(B, K, X, Y, Z)`` (the lineage); ``"sum"`` is the squared
    norm of each image's whole map averaged over the images (a literal reading of VAS's Eq. 5,
    ``E_x ||f_t - f_s||^2``: ``K X Y Z`` times the mean). The teacher side carries no gradient.
    """
    probs_s, probs_t = torch.softmax(student_logits, 1), torch.softmax(teacher_logits.detach(), 1)
    if reduction == "mean":
        return F.mse_loss(probs_s, probs_t)
    if reduction == "sum":
        return F.mse_loss(probs_s, probs_t, reduction="sum") / student_logits.shape[0]
    raise ValueError(f"unknown consistency reduction {reduction!r}; choose mean or sum")


def consistency_term(student_logits: Tensor, teacher_logits: Tensor, n_l: int, on: Literal["all", "unlabeled"],
                     reduction: ConsistencyReduction = "mean") -> Tensor:
    """:func:`softmax_mse` over all ``(B, K, X, Y, Z)`` patches, or (``on="unlabeled"``) over those
    after the first ``n_l`` (the labeled ones)."""
    if on == "unlabeled":
        student_logits, teacher_logits = student_logits[n_l:], teacher_logits[n_l:]
    return softmax_mse(student_logits, teacher_logits, reduction)


def sigmoid_rampup(step: float, length: float) -> float:
    """Gaussian ramp ``exp(-5 (1 - clip(step / length, 0, 1))^2)`` (1 for ``length <= 0``)."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)
