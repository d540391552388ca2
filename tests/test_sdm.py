"""Signed distance maps: the batched torch EDT and SDM against scipy + skimage references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries

from vasseg.sdm import edt, inner_boundary, signed_distance_map


def reference_sdm(masks: np.ndarray) -> np.ndarray:
    """The lineage's ``compute_sdf`` (SASSNet / DTC ``utils/util.py``), written from its definition."""
    out = np.zeros(masks.shape, dtype=np.float64)
    for b, mask in enumerate(masks.astype(bool)):
        if not mask.any():
            continue
        posdis = ndimage.distance_transform_edt(mask)
        negdis = ndimage.distance_transform_edt(~mask)
        boundary = find_boundaries(mask, mode="inner")
        with np.errstate(invalid="ignore", divide="ignore"):
            sdf = (negdis - negdis.min()) / (negdis.max() - negdis.min()) - (posdis - posdis.min()) / (
                posdis.max() - posdis.min())
        sdf[boundary] = 0
        out[b] = sdf
    return out


def random_masks(rng: np.random.Generator, shape: tuple[int, ...], density: float, grow: int = 0) -> np.ndarray:
    masks = rng.random(shape) < density
    if grow:  # blobs rather than salt: boundaries, interiors and long distances
        masks = np.stack([ndimage.binary_dilation(m, iterations=grow) for m in masks])
    return masks


@pytest.mark.parametrize("shape", [(3, 20, 17, 9), (2, 31, 8), (2, 1, 5, 6), (1, 7, 7, 7)])
@pytest.mark.parametrize("density", [0.02, 0.3, 0.9])
def test_edt_matches_scipy(shape: tuple[int, ...], density: float) -> None:
    rng = np.random.default_rng(hash((shape, density)) % 2**32)
    masks = random_masks(rng, shape, density)
    masks[0].flat[0] = False  # at least one zero voxel (see the full-mask test)
    got = edt(torch.from_numpy(masks)).numpy()
    for b, mask in enumerate(masks):
        if (~mask).any():
            np.testing.assert_allclose(got[b], ndimage.distance_transform_edt(mask), rtol=0, atol=1e-5)


def test_edt_of_empty_and_full_masks() -> None:
    masks = torch.zeros(2, 6, 5, 4, dtype=torch.bool)
    masks[1] = True
    got = edt(masks)
    assert torch.equal(got[0], torch.zeros(6, 5, 4))
    assert torch.isinf(got[1]).all()  # no zero voxel to be near (scipy returns an artefact)


def test_edt_chunk_size_does_not_change_the_result() -> None:
    masks = torch.from_numpy(random_masks(np.random.default_rng(1), (2, 12, 10, 8), 0.2))
    torch.testing.assert_close(edt(masks, chunk=1), edt(masks), rtol=0, atol=0)


def test_inner_boundary_matches_skimage() -> None:
    masks = random_masks(np.random.default_rng(2), (4, 15, 13, 11), 0.05, grow=2)
    got = inner_boundary(torch.from_numpy(masks)).numpy()
    expected = np.stack([find_boundaries(m, mode="inner") for m in masks])
    assert got.any() and np.array_equal(got, expected)


@pytest.mark.parametrize("density,grow", [(0.01, 3), (0.2, 0), (0.6, 1)])
def test_sdm_matches_the_lineage_compute_sdf(density: float, grow: int) -> None:
    masks = random_masks(np.random.default_rng(3), (3, 24, 20, 16), density, grow)
    masks[2] = False  # an empty sample: all zeros
    got = signed_distance_map(torch.from_numpy(masks)).numpy()
    np.testing.assert_allclose(got, reference_sdm(masks), rtol=0, atol=1e-6)
    assert got.dtype == np.float32 and not got[2].any() and got[0].any()


def test_sdm_sign_convention_on_a_cube() -> None:
    mask = torch.zeros(1, 16, 16, 16, dtype=torch.bool)
    mask[0, 4:12, 4:12, 4:12] = True
    sdm = signed_distance_map(mask)[0]
    assert sdm[8, 8, 8] < 0 < sdm[0, 0, 0]  # negative inside, positive outside
    assert sdm[4, 8, 8] == 0  # inner boundary
    assert sdm[8, 8, 8] == -1 and sdm[0, 0, 0] == 1  # the extremes reach -1 and 1


def test_sdm_of_a_full_mask_is_zero_where_the_lineage_gives_nan() -> None:
    masks = np.ones((1, 8, 8, 8), dtype=bool)
    assert np.isnan(reference_sdm(masks)).all()  # their code divides 0 by 0
    assert not signed_distance_map(torch.from_numpy(masks)).any()


@pytest.mark.slow
def test_sdm_matches_at_the_lineage_patch_size() -> None:
    masks = random_masks(np.random.default_rng(4), (2, 112, 112, 80), 2e-4, grow=6)
    got = signed_distance_map(torch.from_numpy(masks)).numpy()
    np.testing.assert_allclose(got, reference_sdm(masks), rtol=0, atol=1e-6)
