"""Voxel-level heads of VAS: voxel sampling, multi-resolution fusion, discriminator, BYOL heads.

Shapes: an image batch is ``(B, C, X, Y, Z)``; encoder maps ``(B, C_i, X_i, Y_i, Z_i)`` lie on
coarser grids of the same field of view (strides 1, 2, 4, 8, 16 in voxels). Voxel features are
rows ``(N, C)`` with ``N = B * K * n``: ``n`` sampled voxels per class (``K`` classes) per image,
ordered image-major, then class, then slot (see :class:`VoxelIndex`).

Sampling before the heads is what keeps VAS cheap (DESIGN.md: voxel heads on every voxel cost
more than the VNet). With 1x1x1 kernels the fusion "conv -> trilinear up-sampling -> sum -> conv"
is affine per voxel, and trilinear interpolation commutes with an affine map whose weights sum to
one, so reading each raw encoder map at the sampled positions and applying the convolutions as
linear layers gives exactly the dense result at a tiny fraction of its cost
(:meth:`MultiResolutionFusion.sampled`). The dense path serves any kernel size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -1  # label of voxels that belong to no class (sub-threshold pseudo-labels)
FUSION_MODES = ("auto", "sampled", "dense")


# ------------------------------------------------------------------------------------ sampling


@dataclass
class VoxelIndex:
    """``n`` sampled voxels per class per image, with a fixed shape (no host synchronisation).

    Attributes:
        flat: ``(B, K, n)`` int64 flat indices into the ``X * Y * Z`` grid of ``size``.
        valid: ``(B, K)`` bool, False where class ``k`` is absent from image ``b``; the slots of
            an absent class hold arbitrary voxels and every loss masks them out.
        size: the grid ``(X, Y, Z)`` the indices refer to (the label resolution).
    """

    flat: Tensor
    valid: Tensor
    size: tuple[int, int, int]

    @property
    def num_classes(self) -> int:
        return int(self.flat.shape[1])

    @property
    def classes(self) -> Tensor:
        """``(N,)`` class id of every row."""
        b, k, n = self.flat.shape
        return torch.arange(k, device=self.flat.device).view(1, k, 1).expand(b, k, n).reshape(-1)

    @property
    def mask(self) -> Tensor:
        """``(N,)`` float, 1 for rows of a class present in its image, else 0."""
        b, k, n = self.flat.shape
        return self.valid.float()[:, :, None].expand(b, k, n).reshape(-1)

    def counts(self) -> Tensor:
        """``(K,)`` number of valid sampled voxels per class over the batch (float, on device)."""
        return self.valid.float().sum(0) * self.flat.shape[2]

    def named_counts(self, prefix: str) -> dict[str, Tensor]:
        """:meth:`counts` as loggable scalars ``{prefix}_c0 .. {prefix}_c{K-1}``."""
        counts = self.counts()
        return {f"{prefix}_c{c}": counts[c] for c in range(self.num_classes)}

    def coords(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(b, x, y, z)``, each ``(N,)`` int64: image index and voxel coordinates of every row."""
        b, k, n = self.flat.shape
        _, sy, sz = self.size
        flat = self.flat.reshape(-1)
        img = torch.arange(b, device=flat.device).repeat_interleave(k * n)
        return img, flat // (sy * sz), (flat // sz) % sy, flat % sz


def sample_voxels(labels: Tensor, num_classes: int, per_class: int) -> VoxelIndex:
    """Draw ``per_class`` voxels uniformly among the voxels of each class of each image.

    Without replacement when the class has enough voxels, with replacement when it has fewer;
    a class absent from an image is marked invalid. Voxels labelled :data:`IGNORE` (or any id
    outside ``[0, num_classes)``) are never drawn. Uses torch's global RNG, on the labels' device,
    without host synchronisation.

    Args:
        labels: ``(B, X, Y, Z)`` integer class ids.
    """
    bsz = labels.shape[0]
    flat_labels = labels.reshape(bsz, -1)
    voxels = flat_labels.shape[1]
    take = min(per_class, voxels)
    # One random key per voxel; class voxels get keys in [0, 1), the others in [2, 3), so the
    # `take` smallest keys start with a uniformly random ordering of the class's voxels.
    keys = torch.rand(flat_labels.shape, device=labels.device)
    slot = torch.arange(per_class, device=labels.device)[None]
    flats, valids = [], []
    for c in range(num_classes):
        member = flat_labels == c
        count = member.sum(1, keepdim=True)  # (B, 1)
        order = torch.where(member, keys, keys + 2.0).topk(take, dim=1, largest=False).indices
        refill = (torch.rand(bsz, per_class, device=labels.device) * count.clamp(min=1)).long()
        rank = torch.where(slot < count, slot, refill).clamp(max=take - 1)
        flats.append(order.gather(1, rank))
        valids.append(count[:, 0] > 0)
    size = tuple(int(s) for s in labels.shape[1:])
    return VoxelIndex(torch.stack(flats, 1), torch.stack(valids, 1), size)  # type: ignore[arg-type]


def pseudo_labels(logits: Tensor, threshold: float) -> tuple[Tensor, Tensor]:
    """Teacher pseudo-labels ``argmax{softmax > t}`` (the paper's Eq. 1).

    Args:
        logits: ``(B, K, X, Y, Z)`` teacher logits.
    Returns:
        ``(B, X, Y, Z)`` int64 class ids, :data:`IGNORE` where the top probability is not above
        ``threshold``; and the coverage (fraction of voxels kept, a 0-d tensor).
    """
    prob, cls = torch.softmax(logits.float(), dim=1).max(dim=1)
    keep = prob > threshold
    return torch.where(keep, cls, torch.full_like(cls, IGNORE)), keep.float().mean()


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` ``(N,)`` over rows where ``mask`` ``(N,)`` is 1 (0 when none is)."""
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


def reduce_voxels(values: Tensor, index: VoxelIndex, reduction: str) -> Tensor:
    """Per-voxel losses ``(N,)`` of the sampled voxels of ``index`` -> one loss.

    ``"mean"``: over the valid voxels; ``"sum"``: summed over each image's valid voxels, averaged
    over the images (the paper's Eq. 2, ``1/N sum_n sum_{f_i in E(x_n)}``), so it is
    ``voxels_per_class x classes`` times the mean.
    """
    if reduction == "mean":
        return masked_mean(values, index.mask)
    if reduction == "sum":
        return (values * index.mask).sum() / index.flat.shape[0]
    raise ValueError(f"unknown voxel reduction {reduction!r}; choose mean or sum")


# ------------------------------------------------------------------------- reading feature maps


def select_levels(maps: Sequence[Tensor], levels: Sequence[int], part: slice) -> list[Tensor]:
    """The encoder maps of ``levels`` (0..4: strides 1..16), restricted to the images ``part``."""
    return [maps[i][part] for i in levels]


def read_voxels(fmap: Tensor, index: VoxelIndex) -> Tensor:
    """Features of ``fmap`` ``(B, C, x, y, z)`` at the sampled voxels of ``index``: ``(N, C)``.

    A map on the index's grid is read exactly; a coarser one is trilinearly interpolated with
    the convention of ``F.interpolate(size=index.size, mode="trilinear", align_corners=False)``
    (voxel centres map to ``(i + 0.5) * x / X - 0.5``, clamped to the border).
    """
    img, x, y, z = index.coords()
    if tuple(fmap.shape[2:]) == index.size:
        return fmap[img, :, x, y, z]
    bsz, k, n = index.flat.shape
    # grid_sample wants (x, y, z) = (last, middle, first) spatial dim, normalised to [-1, 1].
    # In float32 even under autocast: bf16 coordinates would be off by a fraction of a voxel.
    grid = torch.stack([(2 * c.float() + 1) / s - 1 for c, s in zip((z, y, x), index.size[::-1])], -1)
    grid = grid.view(bsz, k * n, 1, 1, 3)
    out = F.grid_sample(fmap.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.reshape(bsz, fmap.shape[1], k * n).transpose(1, 2).reshape(bsz * k * n, fmap.shape[1])


# ----------------------------------------------------------------------------- fusion and heads


class MultiResolutionFusion(nn.Module):
    """Encoder maps -> one ``channels``-dim feature per voxel (the paper's f_fused).

    Per level a convolution to ``channels``, trilinear up-sampling to the label grid, sum, and a
    fusing convolution. The paper gives no kernel sizes, no activation and no normalisation: the
    defaults are 1x1x1 kernels and none, which allows the exact sampled fast path.

    Args:
        in_channels: channels of the encoder maps it receives, in order.
        channels: output feature size C (paper: 64).
        kernel: kernel of the per-level convolutions (odd).
        fuse_kernel: kernel of the fusing convolution (odd).
        mode: ``auto`` (sampled when both kernels are 1, else dense), ``sampled`` or ``dense``.
    """

    def __init__(self, in_channels: Sequence[int], channels: int = 64, kernel: int = 1,
                 fuse_kernel: int = 1, mode: str = "auto") -> None:
        super().__init__()
        if mode not in FUSION_MODES:
            raise ValueError(f"fusion mode {mode!r}: choose one of {', '.join(FUSION_MODES)}")
        if kernel % 2 == 0 or fuse_kernel % 2 == 0:
            raise ValueError(f"fusion kernels must be odd (got {kernel}, {fuse_kernel})")
        pointwise = kernel == 1 and fuse_kernel == 1
        if mode == "sampled" and not pointwise:
            raise ValueError("fusion mode 'sampled' needs 1x1x1 kernels; use 'dense' or 'auto'")
        self.use_sampled = mode == "sampled" or (mode == "auto" and pointwise)
        self.levels = nn.ModuleList(nn.Conv3d(c, channels, kernel, padding=kernel // 2) for c in in_channels)
        self.fuse = nn.Conv3d(channels, channels, fuse_kernel, padding=fuse_kernel // 2)

    def forward(self, maps: Sequence[Tensor], index: VoxelIndex) -> Tensor:
        """Fused features ``(N, channels)`` at the voxels of ``index``."""
        return self.sampled(maps, index) if self.use_sampled else self.dense_at(maps, index)

    def sampled(self, maps: Sequence[Tensor], index: VoxelIndex) -> Tensor:
        """Fast path (1x1x1 kernels): read each raw map at the voxels, then the linear layers."""
        total = sum(_as_linear(conv, read_voxels(m, index)) for conv, m in zip(self.levels, maps))
        return _as_linear(self.fuse, total)

    def dense(self, maps: Sequence[Tensor], size: Sequence[int]) -> Tensor:
        """The full fused map ``(B, channels, X, Y, Z)`` on the grid ``size`` (any kernel)."""
        total = 0
        for conv, m in zip(self.levels, maps):
            y = conv(m)
            if tuple(y.shape[2:]) != tuple(size):
                y = F.interpolate(y, size=tuple(size), mode="trilinear", align_corners=False)
            total = total + y
        return self.fuse(total)

    def dense_at(self, maps: Sequence[Tensor], index: VoxelIndex) -> Tensor:
        return read_voxels(self.dense(maps, index.size), index)


def _as_linear(conv: nn.Conv3d, rows: Tensor) -> Tensor:
    """A 1x1x1 convolution applied to feature rows ``(N, C_in)`` -> ``(N, C_out)``."""
    return F.linear(rows, conv.weight.reshape(conv.out_channels, conv.in_channels), conv.bias)


class VoxelDiscriminator(nn.Module):
    """Two MLP layers shared by all classes, then one linear prediction head per class.

    A voxel feature goes through the head of its own class only, so a voxel of class ``c``
    gives gradients to the shared layers and to head ``c`` alone. The paper does not name the
    activation: LeakyReLU(``slope``) as in the DCGAN recipe it follows for D's optimiser.
    """

    def __init__(self, channels: int, hidden: int, num_classes: int, slope: float = 0.2) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Linear(channels, hidden), nn.LeakyReLU(slope),
            nn.Linear(hidden, hidden), nn.LeakyReLU(slope),
        )
        self.heads = nn.ModuleList(nn.Linear(hidden, 1) for _ in range(num_classes))

    def forward(self, features: Tensor, classes: Tensor) -> Tensor:
        """Real-vs-fake logits ``(N,)`` of features ``(N, C)`` with class ids ``classes`` ``(N,)``."""
        h = self.trunk(features)
        every = torch.cat([head(h) for head in self.heads], dim=1)  # (N, K)
        return every.gather(1, classes[:, None]).squeeze(1)


class ProjectionHead(nn.Sequential):
    """BYOL's MLP ``Linear -> BatchNorm1d -> ReLU -> Linear`` (projector and predictor alike)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, batchnorm: bool = True) -> None:
        norm: list[nn.Module] = [nn.BatchNorm1d(hidden)] if batchnorm else []
        super().__init__(nn.Linear(in_dim, hidden), *norm, nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-row ``|| p / |p| - z / |z| ||^2`` (the paper's Eq. 3), ``(N, D)`` -> ``(N,)``.

    Equals ``2 - 2 cos(p, z)``; the target carries no gradient.
    """
    diff = F.normalize(prediction, dim=1) - F.normalize(target.detach(), dim=1)
    return diff.pow(2).sum(dim=1)


def voxel_byol_loss(prediction: Tensor, target: Tensor, index: VoxelIndex, same_class: bool = False) -> Tensor:
    """:func:`byol_loss` of the sampled voxels' rows ``(N, D)``, averaged over the valid ones.

    ``same_class``: each prediction meets the target of another voxel of its class (the slots of
    every (image, class) block permuted alike) instead of its own voxel's.
    """
    if same_class:
        target = shuffle_within_class(target, index)
    return masked_mean(byol_loss(prediction, target), index.mask)


def shuffle_within_class(rows: Tensor, index: VoxelIndex) -> Tensor:
    """Permute the ``n`` slots of every (image, class) block of ``rows`` ``(N, C)`` alike, so that
    row ``i`` meets another voxel of its class (BYOL's ``same_class`` pairs)."""
    bsz, k, n = index.flat.shape
    perm = torch.randperm(n, device=rows.device)
    return rows.view(bsz, k, n, -1)[:, :, perm].reshape(rows.shape)
