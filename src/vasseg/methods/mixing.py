"""Patch mixing shared by the copy-paste methods: BCP's cube mask and AD-MT's 3-D cut-mix.

Every random draw comes from torch's global CPU generator (saved in checkpoints, so a resumed run
draws the same boxes), and only small index tensors are drawn: nothing waits for the device.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from vasseg.errors import ConfigError

Size3 = tuple[int, int, int]
Box = tuple[slice, slice, slice]


def cube_mask(size: Size3, ratio: float, device: torch.device | str | None = None) -> Tensor:
    """BCP's context mask: ``(X, Y, Z)`` bool, False inside one random cube, True elsewhere.

    The cube spans ``int(S * ratio)`` voxels along an axis of size ``S`` and starts uniformly in
    ``[0, S - side)`` (their ``np.random.randint(0, S - side)``: it never touches the far face).
    """
    sides = [int(s * ratio) for s in size]
    if any(not 0 < c < s for c, s in zip(sides, size)):
        raise ConfigError(f"mask ratio {ratio} gives cube sides {sides} for a patch of {list(size)}")
    starts = [int(torch.randint(0, s - c, ())) for s, c in zip(size, sides)]
    keep = torch.ones(size, dtype=torch.bool)
    keep[tuple(slice(a, a + c) for a, c in zip(starts, sides))] = False
    return keep.to(device)


def paste(outside: Tensor, inside: Tensor, keep: Tensor) -> Tensor:
    """``outside`` where ``keep`` is True, ``inside`` in the cube (``keep``: ``(X, Y, Z)`` bool).

    Images ``(B, C, X, Y, Z)`` and label maps ``(B, X, Y, Z)`` both broadcast against ``keep``.
    """
    return torch.where(keep, outside, inside)


def cutmix_boxes(batch: int, size: Size3, beta: float = 4.0) -> list[Box]:
    """AD-MT's ``rand_bbox_3d``: one box per sample, one ``lam ~ Beta(4, 4)`` for the batch.

    Every side is ``int(S sqrt(1 - lam))`` (their 2-D formula kept in 3-D), centred uniformly in
    ``[int(S / 8), S)`` and clipped to the patch, so a box near the border is smaller.
    """
    lam = float(torch.distributions.Beta(beta, beta).sample())
    cuts = [int(s * math.sqrt(1.0 - lam)) for s in size]
    centres = [torch.randint(int(s / 8), s, (batch,)).tolist() for s in size]
    boxes = []
    for i in range(batch):
        boxes.append(tuple(slice(max(c[i] - k // 2, 0), min(c[i] + k // 2, s))
                           for c, k, s in zip(centres, cuts, size)))
    return boxes


def cutmix(tensors: list[Tensor], boxes: list[Box], source: list[int]) -> list[Tensor]:
    """Paste box ``i`` of sample ``source[i]`` into sample ``i`` of every tensor (new tensors).

    ``tensors`` share the batch and the last three (spatial) dimensions, e.g. images
    ``(B, C, X, Y, Z)``, labels and confidences ``(B, X, Y, Z)``.
    """
    mixed = [t.clone() for t in tensors]
    for i, (box, j) in enumerate(zip(boxes, source)):
        for out, t in zip(mixed, tensors):
            out[(i, Ellipsis, *box)] = t[(j, Ellipsis, *box)]
    return mixed
