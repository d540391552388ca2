"""Sliding-window inference, as the semi-supervised LA lineage tests a case.

The lineage (UA-MT's ``test_single_case``, reused by SASSNet, DTC and MC-Net) predicts a whole
volume from fixed-size patches:

1. a dimension smaller than the patch is zero-padded symmetrically (``floor(half)`` before, the
   rest after) up to the patch size;
2. along each axis ``n = ceil((dim - patch) / stride) + 1`` windows start at
   ``min(stride * j, dim - patch)``, so the last window is flush with the border;
3. the class probabilities of every window are summed into a score map, divided by the number of
   windows covering each voxel, the padding is cropped away, and the argmax is the label.

This module reproduces that average exactly (same windows, same float32 summation order) while
running one forward pass per *batch* of windows and keeping the accumulation on the device. The
defaults are the lineage's: patch 112x112x80 voxels, strides 18, 18, 4 voxels.

Spatial dimensions follow the array order of the data (for LA: x, y, z).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

logger = logging.getLogger(__name__)

DEFAULT_PATCH: tuple[int, int, int] = (112, 112, 80)
DEFAULT_STRIDE: tuple[int, int, int] = (18, 18, 4)

Predictor = Callable[[Tensor], Tensor]
"""Maps a batch of windows ``(B, C, *patch)`` to class probabilities ``(B, K, *patch)``."""

Triple = Sequence[int]
Window = tuple[int, int, int]


# ---------------------------------------------------------------------------------------------
# Window geometry (pure integer arithmetic)
# ---------------------------------------------------------------------------------------------


def window_starts(dim: int, patch: int, stride: int) -> list[int]:
    """Start indices of the windows along one axis of (already padded) size ``dim``.

    ``ceil((dim - patch) / stride) + 1`` windows at ``min(stride * j, dim - patch)``: the last
    one is flush with the border. Raises ``ValueError`` when ``dim < patch`` (pad first).
    """
    if patch < 1 or stride < 1:
        raise ValueError(f"patch ({patch}) and stride ({stride}) must be positive")
    if dim < patch:
        raise ValueError(f"axis of size {dim} is smaller than the patch {patch}; pad it first")
    count = -(-(dim - patch) // stride) + 1  # integer ceil, no float rounding
    return [min(stride * j, dim - patch) for j in range(count)]


def pad_amounts(shape: Triple, patch: Triple) -> tuple[tuple[int, int], ...]:
    """Zero padding ``((before, after), ...)`` per axis that brings ``shape`` up to ``patch``.

    Only axes smaller than the patch are padded: ``floor(missing / 2)`` before, the rest after.
    """
    _check_triple("patch", patch)
    if len(shape) != len(patch):
        raise ValueError(f"shape {tuple(shape)} and patch {tuple(patch)} differ in length")
    amounts = []
    for size, p in zip(shape, patch):
        missing = max(int(p) - int(size), 0)
        amounts.append((missing // 2, missing - missing // 2))
    return tuple(amounts)


def window_grid(shape: Triple, patch: Triple, stride: Triple) -> list[Window]:
    """All window starts of a padded volume, x outermost and z innermost (the lineage's order)."""
    per_axis = [window_starts(int(d), int(p), int(s)) for d, p, s in zip(shape, patch, stride)]
    return [tuple(start) for start in itertools.product(*per_axis)]  # type: ignore[misc]


def coverage_counts(
    shape: Triple, patch: Triple, stride: Triple, device: torch.device | str | None = None
) -> Tensor:
    """Number of windows covering each voxel, ``(X, Y, Z)`` float32.

    The window grid is a Cartesian product of per-axis starts, so the 3-D count is the outer
    product of three 1-D counts: computed once, exactly (small integers), instead of adding a
    block of ones per window.
    """
    axes = []
    for d, p, s in zip(shape, patch, stride):
        count = torch.zeros(int(d), dtype=torch.float32, device=device)
        for start in window_starts(int(d), int(p), int(s)):
            count[start : start + int(p)] += 1
        axes.append(count)
    cx, cy, cz = axes
    return cx[:, None, None] * cy[None, :, None] * cz[None, None, :]


def _window_slices(start: Window, patch: Triple) -> tuple[slice, ...]:
    """Channel-preserving index of one window: ``(:, x0:x0+px, y0:y0+py, z0:z0+pz)``."""
    return (slice(None),) + tuple(slice(s, s + int(p)) for s, p in zip(start, patch))


def _batches(items: list[Window], size: int) -> Iterator[list[Window]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------------------------------------
# Probabilities
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Sliding window
# ---------------------------------------------------------------------------------------------


def _check_triple(name: str, values: Triple) -> None:
    if len(values) != 3 or any(int(v) < 1 for v in values):
        raise ValueError(f"{name} must be three positive integers, got {tuple(values)}")


def _check_inputs(image: Tensor, patch: Triple, stride: Triple, num_classes: int, batch_size: int) -> None:
    if image.ndim != 4:
        raise ValueError(f"image must be (C, X, Y, Z), got shape {tuple(image.shape)}")
    _check_triple("patch", patch)
    _check_triple("stride", stride)
    if num_classes < 1 or batch_size < 1:
        raise ValueError(f"num_classes ({num_classes}) and batch_size ({batch_size}) must be >= 1")


def _check_probs(probs: Tensor, batch: int, num_classes: int, patch: Triple) -> None:
    # Shapes are host metadata: checking them costs no device synchronisation.
    expected = (batch, num_classes, *(int(p) for p in patch))
    if tuple(probs.shape) != expected:
        raise ValueError(f"predict returned shape {tuple(probs.shape)}, expected {expected}")


def pad_volume(image: Tensor, pads: tuple[tuple[int, int], ...]) -> Tensor:
    """Zero-pad ``(C, X, Y, Z)`` by ``pads`` (per spatial axis, before/after)."""
    if not any(b or a for b, a in pads):
        return image
    # F.pad lists the last axis first.
    flat = [n for before_after in reversed(pads) for n in before_after]
    return F.pad(image, flat, mode="constant", value=0.0)


def crop_volume(volume: Tensor, pads: tuple[tuple[int, int], ...], shape: Triple) -> Tensor:
    """Undo :func:`pad_volume` on a ``(K, X, Y, Z)`` map."""
    index = (slice(None),) + tuple(slice(b, b + int(s)) for (b, _), s in zip(pads, shape))
    return volume[index]


def sliding_window_probs(
    predict: Predictor,
    image: Tensor,
    patch: Triple = DEFAULT_PATCH,
    stride: Triple = DEFAULT_STRIDE,
    num_classes: int = 2,
    batch_size: int = 4,
    device: torch.device | str | None = None,
    out_device: torch.device | str | None = None,
) -> Tensor:
    """Average window probabilities over a whole volume, the lineage's way.

    Args:
        predict: windows ``(B, C, *patch)`` -> probabilities ``(B, num_classes, *patch)``
            (the caller chooses softmax or sigmoid, e.g. with :func:`make_predictor`).
        image: ``(C, X, Y, Z)`` volume, any float dtype (computed in float32).
        patch: window size in voxels ``(px, py, pz)``.
        stride: window step in voxels ``(sx, sy, sz)``.
        num_classes: channels ``predict`` returns.
        batch_size: windows per forward pass (one forward per batch).
        device: where the forward passes and the accumulation run (default: the image's
            device). The case is moved there once.
        out_device: where the result is returned (default: the image's device).

    Returns:
        ``(num_classes, X, Y, Z)`` float32 averaged probabilities, padding removed.
    """
    _check_inputs(image, patch, stride, num_classes, batch_size)
    device = image.device if device is None else torch.device(device)
    out_device = image.device if out_device is None else torch.device(out_device)
    shape = tuple(int(s) for s in image.shape[1:])
    pads = pad_amounts(shape, patch)
    with torch.no_grad():
        volume = pad_volume(image.to(device=device, dtype=torch.float32), pads)
        padded = tuple(int(s) for s in volume.shape[1:])
        starts = window_grid(padded, patch, stride)
        logger.debug("sliding window: %s -> %s padded, %d windows", shape, padded, len(starts))
        score = accumulate_windows(predict, volume, starts, patch, num_classes, batch_size)
        score /= coverage_counts(padded, patch, stride, device)
        return crop_volume(score, pads, shape).contiguous().to(out_device)


def accumulate_windows(predict: Predictor, volume: Tensor, starts: list[Window], patch: Triple, num_classes: int,
                       batch_size: int, weight: Tensor | None = None) -> Tensor:
    """Sum of every window's probabilities (times ``weight`` ``patch``-shaped, when given) over the
    padded ``volume`` ``(C, X, Y, Z)``: ``(num_classes, X, Y, Z)`` float32 on the volume's device."""
    score = torch.zeros((num_classes, *volume.shape[1:]), dtype=torch.float32, device=volume.device)
    for batch in _batches(starts, batch_size):
        windows = torch.stack([volume[_window_slices(s, patch)] for s in batch])
        probs = predict(windows)
        _check_probs(probs, len(batch), num_classes, patch)
        probs = probs.to(dtype=torch.float32)
        if weight is not None:
            probs = probs * weight
        # Added one window at a time in grid order: the same float32 sums as the lineage.
        for start, window_probs in zip(batch, probs):
            score[_window_slices(start, patch)] += window_probs
    return score
