"""``mcnet``: mutual consistency network (Wu et al., MICCAI 2021) as its public code trains LA.

From ycwu1997/MC-Net ``mcnet/train_mcnet_3d.py``, ``networks/VNet.py``, ``utils/losses.py`` and
``utils/test_patch.py``:

* one VNet encoder, decoders that differ in up-sampling: v1 transposed conv + trilinear
  (``align_corners=True``), v2 adds nearest; dropout on the shared bottleneck and in each decoder;
* supervised ``0.5 * sum over decoders of Dice(softmax[:, 1], label)`` with MC-Net's *linear* Dice
  ``1 - (2 sum(p t) + 1e-10) / (sum p + sum t + 1e-10)`` (not the lineage's squared one; their
  CE term is computed but never added);
* mutual consistency on all four patches: for every ordered pair ``i != j`` of decoders,
  ``mean((p_i - sharpen(p_j))^2)`` with ``sharpen(p) = p^(1/T) / (p^(1/T) + (1-p)^(1/T))``,
  ``T = 0.1``; the terms are summed and gradient flows through both sides (their targets are
  written into a tensor, not detached); weight ``1.0 ramp((t + 1) // 150, 40)`` (their counter is
  incremented before the weight), i.e. the ramp ends at 6000 of their 15000 iterations;
* SGD lr 0.01 constant (their step decay is commented out), 15000 iterations;
* test through the first decoder only (softmax foreground > 0.5).

For two classes ``sharpen`` equals ``softmax(logits / T)``, which is used here (stable, and the
natural generalisation to ``K`` classes); the Dice is averaged over the foreground classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from vasseg.data.batcher import Batch
from vasseg.methods import register
from vasseg.methods.base import Method
from vasseg.models.multihead import MultiDecoderVNet

VERSIONS: dict[str, tuple[str, ...]] = {
    "v1": ("deconv", "trilinear"),
    "v2": ("deconv", "trilinear", "nearest"),
}


@dataclass(frozen=True)
class MCNetParams:
    version: Literal["v1", "v2"] = "v1"  # v1: two decoders (MICCAI 2021), v2: three (MC-Net+)
    supervised_weight: float = 0.5  # their lamda / beta on the summed Dice
    consistency: float = 1.0  # w_max of the mutual consistency (their code's default)
    rampup: float = 0.4  # fraction of train.iterations: 40 * 150 = 6000 of their 15000
    temperature: float = 0.1  # sharpening temperature T
    detach_target: bool = False  # their code back-propagates through the sharpened targets


def linear_dice_loss(probs: Tensor, labels: Tensor, eps: float = 1e-10) -> Tensor:
    """MC-Net's Dice loss, averaged over the foreground classes.

    ``1 - (2 sum(p t) + eps) / (sum(p) + sum(t) + eps)`` pooled over the batch, per class.
    ``probs``: ``(B, K, X, Y, Z)`` softmax; ``labels``: ``(B, X, Y, Z)`` class ids.
    """
    losses = []
    for c in range(1, probs.shape[1]):
        target = (labels == c).float()
        p = probs[:, c]
        losses.append(1.0 - (2.0 * (p * target).sum() + eps) / (p.sum() + target.sum() + eps))
    return torch.stack(losses).mean()


def sharpen(logits: Tensor, temperature: float) -> Tensor:
    """``p^(1/T) / sum_k p_k^(1/T)`` of ``p = softmax(logits)``, i.e. ``softmax(logits / T)``.

    ``logits``: ``(B, K, X, Y, Z)``; returns probabilities of the same shape.
    """
    return torch.softmax(logits / temperature, dim=1)


def mutual_consistency(logits: list[Tensor], temperature: float, detach_target: bool = False) -> Tensor:
    """Sum over ordered decoder pairs ``i != j`` of ``mean((p_i - sharpen(logits_j))^2)``."""
    probs = [torch.softmax(lg, dim=1) for lg in logits]
    targets = [sharpen(lg, temperature) for lg in logits]
    if detach_target:
        targets = [t.detach() for t in targets]
    terms = [torch.mean((probs[i] - targets[j]) ** 2)
             for i in range(len(logits)) for j in range(len(logits)) if i != j]
    return torch.stack(terms).sum()


@register("mcnet")
class MCNet(Method):
    """One encoder, decoders that up-sample differently; mutual consistency of their sharpened outputs."""

    Params = MCNetParams

    def build_student(self) -> nn.Module:
        m = self.exp.model
        return MultiDecoderVNet(VERSIONS[self.params.version], m.in_channels, self.num_classes,
                                m.filters, m.norm, m.dropout)

    def inference_network(self) -> nn.Module:
        """Encoder + first (transposed-convolution) decoder, as MC-Net tests."""
        return self.student.branch(0)

    def consistency_weight(self, step: int) -> float:
        # Their counter is incremented before the weight is computed: ramp(step + 1).
        return self.ramp(self.params.consistency, self.params.rampup, step + 1)

    def loss_terms(self, batch: Batch, step: int) -> dict[str, Tensor | float]:
        """Live per-decoder Dice terms, the mutual consistency, and the step's weight."""
        n_l = batch.labeled_bs
        logits = [lg.float() for lg in self.student(batch.image_all).branch_logits]
        terms: dict[str, Tensor | float] = {
            f"loss_dice_{i}": linear_dice_loss(torch.softmax(lg[:n_l], dim=1), batch.label_l)
            for i, lg in enumerate(logits)
        }
        terms["loss_cons"] = mutual_consistency(logits, self.params.temperature, self.params.detach_target)
        terms["w_cons"] = self.consistency_weight(step)
        return terms

    def training_step(self, batch: Batch, step: int) -> dict[str, Tensor]:
        t = self.loss_terms(batch, step)
        dice = [v for k, v in t.items() if k.startswith("loss_dice_")]
        sup = self.params.supervised_weight * torch.stack(dice).sum()
        return {"loss": sup + t["w_cons"] * t["loss_cons"], "loss_sup": sup, **t}
