"""VAS heads: voxel sampling, pseudo-labels, fusion fast path, per-class discriminator, BYOL loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vasseg.models.heads import (
    IGNORE,
    MultiResolutionFusion,
    ProjectionHead,
    VoxelDiscriminator,
    byol_loss,
    masked_mean,
    pseudo_labels,
    read_voxels,
    sample_voxels,
)

SIZE = (16, 16, 8)
STRIDES = (1, 2, 4, 8)
CHANNELS = (4, 8, 16, 32)


def _maps(batch: int = 2, requires_grad: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(batch, c, *(s // st for s in SIZE), generator=g) for c, st in zip(CHANNELS, STRIDES)]
    return [m.requires_grad_(requires_grad) for m in maps]


def _labels() -> torch.Tensor:
    """Image 0: classes 0, 1 (5 voxels), 2 (a block), ignore; image 1: class 0 only."""
    labels = torch.zeros(2, *SIZE, dtype=torch.long)
    labels[0, 0, 0, :5] = 1
    labels[0, 4:12, 4:12, 2:6] = 2
    labels[0, 15, 15, :] = IGNORE
    return labels


def test_sampling_draws_only_voxels_of_the_class_and_marks_absent_classes() -> None:
    labels = _labels()
    torch.manual_seed(0)
    index = sample_voxels(labels, num_classes=4, per_class=64)
    assert index.flat.shape == (2, 4, 64)
    assert index.valid.tolist() == [[True, True, True, False], [True, False, False, False]]
    flat_labels = labels.reshape(2, -1)
    for b in range(2):
        for c in range(4):
            if index.valid[b, c]:
                assert (flat_labels[b, index.flat[b, c]] == c).all()
    # 5 voxels of class 1, 64 slots: every voxel drawn, then with replacement among them only
    assert set(index.flat[0, 1].tolist()) == set(torch.nonzero(flat_labels[0] == 1)[:, 0].tolist())
    # 256 voxels of class 2, 64 slots: without replacement
    assert len(set(index.flat[0, 2].tolist())) == 64
    assert index.counts().tolist() == [128.0, 64.0, 64.0, 0.0]
    assert index.mask.sum() == 4 * 64 and index.classes.shape == (2 * 4 * 64,)


def test_sampling_is_uniform_over_the_class() -> None:
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    torch.manual_seed(1)
    hits = torch.zeros(64)
    for _ in range(200):
        flat = sample_voxels(labels, 1, 16).flat.reshape(-1)
        hits += torch.bincount(flat, minlength=64)
    assert hits.sum() == 200 * 16
    assert hits.min() > 20 and hits.max() < 80  # expectation 50 per voxel


def test_ignored_voxels_are_never_drawn() -> None:
    labels = torch.full((1, 4, 4, 4), IGNORE)
    labels[0, 0, 0, 0] = 0
    torch.manual_seed(0)
    index = sample_voxels(labels, 2, 32)
    assert index.valid.tolist() == [[True, False]]
    assert (index.flat[0, 0] == 0).all()


def test_pseudo_labels_keep_voxels_strictly_above_the_threshold() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.5, 0.5]])  # 4 voxels, 2 classes
    logits = probs.log().T.reshape(1, 2, 4, 1, 1)
    labels, coverage = pseudo_labels(logits, threshold=0.7)
    assert labels.reshape(-1).tolist() == [0, IGNORE, 1, IGNORE]
    assert coverage.item() == pytest.approx(0.5)


@pytest.mark.parametrize("level", range(4))
def test_read_voxels_matches_trilinear_upsampling(level: int) -> None:
    maps = _maps()
    torch.manual_seed(0)
    index = sample_voxels(torch.randint(0, 3, (2, *SIZE)), 3, 40)
    dense = F.interpolate(maps[level], size=SIZE, mode="trilinear", align_corners=False)
    img, x, y, z = index.coords()
    torch.testing.assert_close(read_voxels(maps[level], index), dense[img, :, x, y, z], rtol=1e-5, atol=1e-5)


def test_sampled_fusion_equals_dense_fusion_for_pointwise_kernels() -> None:
    maps = _maps()
    torch.manual_seed(0)
    fusion = MultiResolutionFusion(CHANNELS, channels=12)
    assert fusion.use_sampled
    index = sample_voxels(torch.randint(0, 3, (2, *SIZE)), 3, 40)
    fast = fusion(maps, index)
    dense = fusion.dense_at(maps, index)
    assert fast.shape == (2 * 3 * 40, 12)
    torch.testing.assert_close(fast, dense, rtol=1e-5, atol=1e-5)


def test_dense_fusion_serves_other_kernels_and_sampled_mode_refuses_them() -> None:
    fusion = MultiResolutionFusion(CHANNELS, channels=6, kernel=3, fuse_kernel=3)
    assert not fusion.use_sampled
    torch.manual_seed(0)
    index = sample_voxels(torch.zeros(2, *SIZE, dtype=torch.long), 2, 8)
    assert fusion(_maps(), index).shape == (2 * 2 * 8, 6)
    with pytest.raises(ValueError, match="1x1x1"):
        MultiResolutionFusion(CHANNELS, kernel=3, mode="sampled")


def test_a_voxel_of_class_c_changes_only_head_c() -> None:
    torch.manual_seed(0)
    disc = VoxelDiscriminator(channels=8, hidden=16, num_classes=4)
    features = torch.randn(5, 8)
    logits = disc(features, torch.full((5,), 2))
    F.binary_cross_entropy_with_logits(logits, torch.ones(5)).backward()
    for c, head in enumerate(disc.heads):
        norm = head.weight.grad.abs().sum() + head.bias.grad.abs().sum()
        assert (norm > 0) == (c == 2), f"head {c}"
    assert all(p.grad.abs().sum() > 0 for p in disc.trunk.parameters())


def test_a_sub_threshold_pseudo_labeled_voxel_changes_nothing() -> None:
    """Voxel v's class-1 pseudo-label is the only class-1 voxel: under t it reaches no head."""
    v = (0, 3, 5, 2)

    def grads(top_prob: float) -> tuple[torch.Tensor, torch.Tensor]:
        probs = torch.zeros(1, 2, *SIZE)
        probs[:, 0] = 0.9
        probs[:, 1] = 0.1
        probs[(v[0], 0, *v[1:])], probs[(v[0], 1, *v[1:])] = 1 - top_prob, top_prob
        labels, _ = pseudo_labels(probs.log(), threshold=0.7)
        torch.manual_seed(0)
        index = sample_voxels(labels, 2, 16)
        maps = _maps(batch=1, requires_grad=True)
        fusion, disc = MultiResolutionFusion(CHANNELS, 8), VoxelDiscriminator(8, 8, 2)
        logits = disc(fusion(maps, index), index.classes)
        loss = masked_mean(F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none"),
                           index.mask)
        loss.backward()
        return disc.heads[1].weight.grad.abs().sum(), maps[0].grad[(v[0], slice(None), *v[1:])].abs().sum()

    head_grad, voxel_grad = grads(top_prob=0.65)
    assert head_grad == 0 and voxel_grad == 0
    head_grad, voxel_grad = grads(top_prob=0.75)  # control: above the threshold it counts
    assert head_grad > 0 and voxel_grad > 0


def test_byol_loss_is_two_minus_two_cosine_per_voxel() -> None:
    torch.manual_seed(0)
    p, z = torch.randn(50, 16, requires_grad=True), torch.randn(50, 16, requires_grad=True)
    loss = byol_loss(p * 3.0, z * 0.5)  # scale-invariant
    torch.testing.assert_close(loss, 2 - 2 * F.cosine_similarity(p, z, dim=1))
    loss.sum().backward()
    assert p.grad is not None and z.grad is None


def test_masked_mean_ignores_masked_rows_and_is_zero_when_all_are() -> None:
    values = torch.tensor([1.0, 3.0, 100.0])
    assert masked_mean(values, torch.tensor([1.0, 1.0, 0.0])) == 2.0
    assert masked_mean(values, torch.zeros(3)) == 0.0


def test_projection_head_shapes() -> None:
    assert ProjectionHead(64, 32, 16)(torch.randn(10, 64)).shape == (10, 16)
    assert len(ProjectionHead(64, 32, 16, batchnorm=False)) == 3
