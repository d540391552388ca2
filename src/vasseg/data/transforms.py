"""Training augmentation: the lineage's rotate/flip/random-crop, and a fast crop-first equivalent.

The lineage (UA-MT, SASSNet, DTC, MC-Net) augments each labeled/unlabeled sample on the host with
NumPy: rotate the whole volume by k*90 degrees in the x-y plane (``np.rot90``, k in 0..3), flip
axis 0 or 1, zero-pad when any dimension is not larger than the patch, and crop a random patch.
`lineage_rot_flip` and `lineage_random_crop` re-implement that faithfully (draws from a
``numpy.random.Generator`` instead of the global state, in the same order).

The fast path crops FIRST and rotates/flips only the patch: a rotation/flip maps an axis-aligned
box onto an axis-aligned box, and the lineage's zero padding is symmetric, so the crop of the
rotated, flipped, padded volume equals the rotated/flipped crop of the matching box of the
original volume (zeros where the box leaves it). `sample_params` draws the parameters on the host
in the lineage's order and with its bounds, so ``crop_rot_flip(*sample_params(...))`` yields
exactly the lineage's patch for the same generator state, without copying whole volumes and
without any device synchronisation (CPU and CUDA tensors alike).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

Shape3 = tuple[int, int, int]

# The lineage pads (patch - dim) // 2 + 3 voxels per side so that the crop start can move.
PAD_MARGIN = 3

# np.rot90(v, k, axes=(0, 1)) as (perm, rev): output axis o reads input axis perm[o],
# reversed where rev[o].
_ROT90: dict[int, tuple[tuple[int, int, int], tuple[bool, bool, bool]]] = {
    0: ((0, 1, 2), (False, False, False)),
    1: ((1, 0, 2), (True, False, False)),
    2: ((0, 1, 2), (True, True, False)),
    3: ((1, 0, 2), (False, True, False)),
}


class AugParams(NamedTuple):
    """Parameters of one augmented crop.

    k: number of 90-degree rotations in the x-y plane (``np.rot90`` direction).
    flip_axis: axis flipped after the rotation (0 or 1), or None.
    start: crop corner in voxels, in the frame of the rotated, flipped and padded volume
        (exactly the lineage's ``w1, h1, d1``).
    pad: zero padding per side in voxels, per axis of the rotated volume.
    """

    k: int
    flip_axis: int | None
    start: Shape3
    pad: Shape3


# ----------------------------------------------------------------------------------------------
# The lineage, in NumPy (reference and benchmark baseline)


def lineage_pad_width(shape: Sequence[int], patch: Sequence[int]) -> Shape3:
    """The lineage's padding per side: when ANY dimension is <= the patch, EVERY dimension gets
    ``max((patch - dim) // 2 + 3, 0)`` (their code pads all axes together); else none."""
    if not any(d <= p for d, p in zip(shape, patch)):
        return (0, 0, 0)
    x, y, z = (max((p - d) // 2 + PAD_MARGIN, 0) for d, p in zip(shape, patch))
    return (x, y, z)


def lineage_rot_flip(image: np.ndarray, label: np.ndarray,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rotate ``(X, Y, Z)`` arrays by k*90 degrees in the (0, 1) plane, then flip axis 0 or 1."""
    k = int(rng.integers(0, 4))
    image, label = np.rot90(image, k), np.rot90(label, k)
    axis = int(rng.integers(0, 2))
    return np.flip(image, axis=axis).copy(), np.flip(label, axis=axis).copy()


def lineage_random_crop(image: np.ndarray, label: np.ndarray, patch: Sequence[int],
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad by `lineage_pad_width`, then crop ``patch`` voxels at a uniform start.

    Like the lineage's ``np.random.randint(0, dim - patch)``, the start excludes its upper bound
    ``dim - patch`` (the padding rule guarantees the bound is >= 1).
    """
    pad = lineage_pad_width(label.shape, patch)
    if any(pad):
        widths = [(p, p) for p in pad]
        image = np.pad(image, widths, mode="constant", constant_values=0)
        label = np.pad(label, widths, mode="constant", constant_values=0)
    starts = [int(rng.integers(0, d - p)) for d, p in zip(image.shape, patch)]
    box = tuple(slice(s, s + p) for s, p in zip(starts, patch))
    return image[box], label[box]


# ----------------------------------------------------------------------------------------------
# The fast path: crop first, then rotate/flip the crop (torch, any device)


def rotated_shape(shape: Sequence[int], k: int) -> Shape3:
    """Spatial shape after ``k`` quarter turns in the x-y plane."""
    x, y, z = (int(d) for d in shape)
    return (y, x, z) if k % 2 else (x, y, z)


def sample_params(shape: Sequence[int], patch: Sequence[int], rng: np.random.Generator,
                  augment: bool = True) -> AugParams:
    """Draw one crop's parameters on the host for a volume of spatial ``shape`` (voxels).

    Draw order and bounds are the lineage's (k, flip axis, then the start per axis), so a
    generator in the same state gives the same patch as `lineage_rot_flip` followed by
    `lineage_random_crop`. ``augment=False`` draws only the crop (no rotation, no flip).
    """
    if augment:
        k, flip_axis = int(rng.integers(0, 4)), int(rng.integers(0, 2))
    else:
        k, flip_axis = 0, None
    rshape = rotated_shape(shape, k)
    pad = lineage_pad_width(rshape, patch)
    sx, sy, sz = (int(rng.integers(0, d + 2 * pw - p)) for d, pw, p in zip(rshape, pad, patch))
    return AugParams(k, flip_axis, (sx, sy, sz), pad)


def _axis_map(k: int, flip_axis: int | None) -> tuple[tuple[int, int, int], list[bool]]:
    """(perm, rev) of the rotation followed by the flip, in output-axis order."""
    if k not in _ROT90:
        raise ValueError(f"k must be in 0..3, got {k}")
    perm, rev = _ROT90[k]
    rev_out = list(rev)
    if flip_axis is not None:
        if flip_axis not in (0, 1, 2):
            raise ValueError(f"flip_axis must be 0, 1, 2 or None, got {flip_axis}")
        rev_out[flip_axis] = not rev_out[flip_axis]
    return perm, rev_out


def _source_box(shape: Shape3, patch: Sequence[int], perm: Sequence[int], rev: Sequence[bool],
                start: Sequence[int], pad: Sequence[int]) -> list[tuple[int, int]]:
    """Box ``[lo, hi)`` per input axis whose transform is the requested crop.

    Coordinates are in the unpadded input; they may leave it (the padding, filled with zeros).
    """
    box: list[tuple[int, int]] = [(0, 0)] * 3
    for o in range(3):
        i, n, s, p, pw = perm[o], shape[perm[o]], start[o], patch[o], pad[o]
        if not 0 <= s <= n + 2 * pw - p:
            raise ValueError(f"crop start {s} on axis {o} outside 0..{n + 2 * pw - p}")
        lo = n + pw - s - p if rev[o] else s - pw
        box[i] = (lo, lo + p)
    return box


def _crop_zero_padded(t: Tensor, box: Sequence[tuple[int, int]]) -> Tensor:
    """Crop the last three axes of ``t`` to ``box``; parts outside ``t`` are zeros.

    Slices first (a view), then pads only the crop, so a volume is never copied whole.
    """
    lead = t.ndim - 3
    slices: list[slice] = [slice(None)] * lead
    widths: list[tuple[int, int]] = []
    for (lo, hi), n in zip(box, t.shape[lead:]):
        a, b = max(lo, 0), min(hi, n)
        b = max(a, b)  # the box may miss the volume on this axis entirely
        slices.append(slice(a, b))
        widths.append((a - lo, hi - b))
    out = t[tuple(slices)]
    if any(w for pair in widths for w in pair):
        flat = [w for pair in reversed(widths) for w in pair]  # F.pad lists the last axis first
        out = F.pad(out, flat, mode="constant", value=0)
    return out


def _orient(t: Tensor, perm: Sequence[int], rev: Sequence[bool]) -> Tensor:
    """Apply the rotation/flip to a crop: one flip (copy) of the reversed axes and a permute."""
    lead = t.ndim - 3
    dims = [lead + perm[o] for o in range(3) if rev[o]]
    if dims:
        t = torch.flip(t, dims=dims)
    if tuple(perm) != (0, 1, 2):
        t = t.permute(*range(lead), *(lead + p for p in perm))
    return t


def crop_rot_flip(
    image: Tensor,
    label: Tensor | None,
    patch: Sequence[int],
    k: int,
    flip_axis: int | None,
    start: Sequence[int],
    pad: Sequence[int] = (0, 0, 0),
) -> tuple[Tensor, Tensor | None]:
    """One augmented patch, cropped before rotating.

    Args:
        image: ``(C, X, Y, Z)`` tensor (any dtype/device).
        label: ``(X, Y, Z)`` tensor or None.
        patch: output spatial size ``(Px, Py, Pz)`` in voxels.
        k, flip_axis, start, pad: as in `AugParams` (``start`` in the rotated, flipped, padded
            frame, i.e. the lineage's crop corner).

    Returns ``(C, Px, Py, Pz)`` image and ``(Px, Py, Pz)`` label (or None) equal to rotating by
    ``k``, flipping ``flip_axis``, zero-padding by ``pad`` and cropping at ``start``. The tensors
    may be non-contiguous views; stacking them makes a contiguous batch.
    """
    shape = (int(image.shape[-3]), int(image.shape[-2]), int(image.shape[-1]))
    perm, rev = _axis_map(k, flip_axis)
    box = _source_box(shape, patch, perm, rev, start, pad)
    img = _orient(_crop_zero_padded(image, box), perm, rev)
    lab = None if label is None else _orient(_crop_zero_padded(label, box), perm, rev)
    return img, lab


def augment_patch(image: Tensor, label: Tensor | None, patch: Sequence[int],
                  rng: np.random.Generator, augment: bool = True) -> tuple[Tensor, Tensor | None]:
    """`sample_params` + `crop_rot_flip` for one ``(C, X, Y, Z)`` volume."""
    k, flip_axis, start, pad = sample_params(image.shape[-3:], patch, rng, augment)
    return crop_rot_flip(image, label, patch, k, flip_axis, start, pad)
