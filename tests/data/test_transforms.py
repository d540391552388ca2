"""The lineage's augmentation and its crop-first equivalent."""

import numpy as np
import pytest
import torch

from vasseg.data.transforms import (
    _crop_zero_padded,
    augment_patch,
    crop_rot_flip,
    lineage_pad_width,
    lineage_random_crop,
    lineage_rot_flip,
    rotated_shape,
    sample_params,
)

PATCH = (10, 8, 6)
# Larger than the patch, smaller in x, in y, in z, in all, and near the padding threshold.
SHAPES = [(17, 13, 9), (7, 13, 9), (17, 5, 9), (17, 13, 4), (3, 4, 2), (11, 9, 7), (12, 8, 20)]


def _volume(shape, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.standard_normal(shape).astype(np.float32) + 5.0  # no zeros except padding
    label = rng.integers(1, 4, size=shape).astype(np.uint8)
    return image, label


def _lineage_fixed(image, label, k, axis, start, patch):
    """The lineage's rotate -> flip -> pad -> crop with a given start (padded frame)."""
    image, label = np.rot90(image, k), np.rot90(label, k)
    image, label = np.flip(image, axis), np.flip(label, axis)
    pad = lineage_pad_width(label.shape, patch)
    widths = [(p, p) for p in pad]
    image, label = np.pad(image, widths), np.pad(label, widths)
    box = tuple(slice(s, s + p) for s, p in zip(start, patch))
    return image[box], label[box], pad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("axis", [0, 1])
def test_crop_then_rotate_equals_rotate_then_crop(shape, k, axis):
    image, label = _volume(shape)
    rshape = rotated_shape(shape, k)
    pad = lineage_pad_width(rshape, PATCH)
    highs = [d + 2 * pw - p for d, pw, p in zip(rshape, pad, PATCH)]
    # Both extremes of the start range and the middle, per axis.
    for start in [(0, 0, 0), tuple(highs), tuple(h // 2 for h in highs)]:
        ref_img, ref_lab, ref_pad = _lineage_fixed(image, label, k, axis, start, PATCH)
        assert ref_pad == pad
        img, lab = crop_rot_flip(torch.from_numpy(image)[None], torch.from_numpy(label),
                                 PATCH, k, axis, start, pad)
        assert img.shape == (1, *PATCH) and lab.shape == PATCH
        np.testing.assert_array_equal(img[0].numpy(), ref_img)
        np.testing.assert_array_equal(lab.numpy(), ref_lab)


@pytest.mark.parametrize("shape", SHAPES)
def test_sampled_fast_path_reproduces_lineage_draw_for_draw(shape):
    image, label = _volume(shape, seed=1)
    for seed in range(12):
        rng_ref, rng_fast = np.random.default_rng(seed), np.random.default_rng(seed)
        ref_img, ref_lab = lineage_rot_flip(image, label, rng_ref)
        ref_img, ref_lab = lineage_random_crop(ref_img, ref_lab, PATCH, rng_ref)
        img, lab = augment_patch(torch.from_numpy(image)[None], torch.from_numpy(label), PATCH,
                                 rng_fast)
        np.testing.assert_array_equal(img[0].numpy(), ref_img)
        np.testing.assert_array_equal(lab.numpy(), ref_lab)
        assert rng_ref.bit_generator.state == rng_fast.bit_generator.state


def test_lineage_padding_rule():
    assert lineage_pad_width((183, 140, 88), (112, 112, 80)) == (0, 0, 0)  # typical LA case
    assert lineage_pad_width((100, 150, 88), (112, 112, 80)) == (9, 0, 0)
    # Their code pads every axis once any axis is small, even one 1 voxel larger than the patch.
    assert lineage_pad_width((110, 113, 88), (112, 112, 80)) == (4, 2, 0)
    assert lineage_pad_width((112, 200, 200), (112, 112, 80)) == (3, 0, 0)


def test_start_range_excludes_upper_bound_like_randint():
    rng = np.random.default_rng(0)
    starts = np.array([sample_params((14, 14, 10), PATCH, rng, augment=False).start
                       for _ in range(400)])
    assert starts.min(0).tolist() == [0, 0, 0]
    assert starts.max(0).tolist() == [14 - 10 - 1, 14 - 8 - 1, 10 - 6 - 1]


def test_no_augment_draws_crop_only():
    p = sample_params((20, 12, 9), PATCH, np.random.default_rng(3), augment=False)
    assert p.k == 0 and p.flip_axis is None and p.pad == (0, 0, 0)
    image = torch.arange(20 * 12 * 9, dtype=torch.float32).reshape(1, 20, 12, 9)
    img, lab = crop_rot_flip(image, None, PATCH, *p)
    x, y, z = p.start
    assert lab is None
    assert torch.equal(img, image[:, x:x + 10, y:y + 8, z:z + 6])


def test_crop_without_padding_is_a_view_and_padding_fills_zeros():
    t = torch.arange(6 * 5 * 4).reshape(6, 5, 4)
    view = _crop_zero_padded(t, [(1, 4), (0, 5), (2, 4)])
    assert view.untyped_storage().data_ptr() == t.untyped_storage().data_ptr()
    padded = _crop_zero_padded(t, [(-2, 3), (3, 7), (0, 4)])
    assert padded.shape == (5, 4, 4)
    assert (padded[:2] == 0).all() and (padded[:, 2:] == 0).all()
    assert torch.equal(padded[2:, :2], t[:3, 3:5])


def test_label_pads_with_zero_and_dtype_kept():
    image, label = _volume((3, 4, 2))
    img, lab = crop_rot_flip(torch.from_numpy(image)[None], torch.from_numpy(label), PATCH,
                             1, 0, (0, 0, 0), lineage_pad_width((4, 3, 2), PATCH))
    assert lab.dtype == torch.uint8 and img.dtype == torch.float32
    assert (lab == 0).any() and ((img[0] == 0) == (lab == 0)).all()


def test_bad_parameters_raise():
    image = torch.zeros(1, 12, 12, 8)
    with pytest.raises(ValueError, match="crop start 5 on axis 0 outside 0..2"):
        crop_rot_flip(image, None, PATCH, 0, None, (5, 0, 0))
    with pytest.raises(ValueError, match="k must be in 0..3"):
        crop_rot_flip(image, None, PATCH, 4, None, (0, 0, 0))
