"""Test helpers around the sliding window (:mod:`vasseg.inferer.sliding`): wrap a network, label a volume.

They were library functions that only tests (and a benchmark) called; issue 29 moved them here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vasseg.inferer.sliding import DEFAULT_PATCH, DEFAULT_STRIDE, Predictor, Triple, sliding_window_probs
from vasseg.models.outputs import probs_from_logits


def make_predictor(
    model: nn.Module,
    kind: Literal["softmax", "sigmoid"] = "softmax",
    output: Callable[[object], Tensor] | None = None,
) -> Predictor:
    """Wrap a network into a :data:`Predictor` (logits -> probabilities).

    ``output`` picks the logits out of the forward result; by default a ``.logits`` attribute
    (:class:`~vasseg.models.vnet.VNetOutput`) or the tensor itself. The caller puts the model in
    ``eval()`` mode: with batch norm in training mode the result would depend on the batch size.
    """

    def pick(result: object) -> Tensor:
        if output is not None:
            return output(result)
        return result if isinstance(result, Tensor) else result.logits  # type: ignore[attr-defined]

    def predict(windows: Tensor) -> Tensor:
        return probs_from_logits(pick(model(windows)).float(), kind)

    return predict


def resize_probs(probs: Tensor, shape: Triple) -> Tensor:
    """Trilinear resampling (``align_corners=False``) of ``(K, X, Y, Z)`` probabilities to ``shape``.

    Used to score a model that ran on a down-sampled volume at the native resolution. Trilinear
    weights are convex, so per-voxel probabilities still sum to one.
    """
    if probs.ndim != 4:
        raise ValueError(f"probs must be (K, X, Y, Z), got shape {tuple(probs.shape)}")
    target = tuple(int(s) for s in shape)
    if tuple(probs.shape[1:]) == target:
        return probs
    resized = F.interpolate(probs[None].float(), size=target, mode="trilinear", align_corners=False)
    return resized[0]


def labels_from_probs(probs: Tensor) -> Tensor:
    """``(K, X, Y, Z)`` probabilities -> ``(X, Y, Z)`` labels.

    Argmax over classes (uint8 when K <= 256, else int64); a single sigmoid channel is
    thresholded at ``p > 0.5``.
    """
    if probs.shape[0] == 1:
        return (probs[0] > 0.5).to(torch.uint8)
    labels = probs.argmax(dim=0)
    return labels.to(torch.uint8) if probs.shape[0] <= 256 else labels


def predict_volume(
    predict: Predictor,
    image: Tensor,
    patch: Triple = DEFAULT_PATCH,
    stride: Triple = DEFAULT_STRIDE,
    num_classes: int = 2,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    out_device: torch.device | str | None = "cpu",
) -> tuple[Tensor, Tensor]:
    """Labels and probabilities of a whole volume.

    Returns:
        ``labels`` ``(X, Y, Z)`` on the CPU (see :func:`labels_from_probs`) and ``probs``
        ``(num_classes, X, Y, Z)`` float32 on ``out_device`` (CPU by default).
    """
    probs = sliding_window_probs(predict, image, patch, stride, num_classes, batch_size, device, out_device=device)
    labels = labels_from_probs(probs).cpu()
    return labels, probs.to(out_device) if out_device is not None else probs


def predict_case(method, case, exp, device: torch.device):  # noqa: ANN001, ANN201 - Method, Case, Experiment
    """The label map of ``case`` on its primary grid, and the case (what evaluate scores)."""
    from vasseg.inferer.inferer import Inferer

    inferer = Inferer(exp, device)
    return inferer.on_grid(inferer.probs(method, case.image), case)[0], case
