"""From network outputs to class probabilities (shared by training methods and inference)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

ProbsKind = Literal["softmax", "sigmoid"]


def probs_from_logits(logits: Tensor, kind: ProbsKind = "softmax", dim: int = 1) -> Tensor:
    """Class probabilities from raw scores ``(B, K, X, Y, Z)``.

    ``softmax`` normalises over the channel axis ``dim``. ``sigmoid`` with one channel returns two
    channels ``[1 - p, p]`` so that ``argmax`` equals ``p > 0.5`` (at exactly 0.5 both channels
    are equal and ``argmax`` picks class 0, as ``p > 0.5`` does); with several channels it is an
    element-wise sigmoid (multi-label heads).
    """
    if kind == "softmax":
        return torch.softmax(logits, dim=dim)
    if kind == "sigmoid":
        p = torch.sigmoid(logits)
        if p.shape[dim] == 1:
            # 1 - p is exact for p >= 0.5 (Sterbenz) and >= 0.5 for p < 0.5, so the
            # channel order can never flip the decision.
            return torch.cat([1.0 - p, p], dim=dim)
        return p
    raise ValueError(f"unknown probability kind {kind!r}; choose softmax or sigmoid")
