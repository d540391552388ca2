"""Tests of vasseg.metrics and vasseg.surface: analytic shapes, medpy parity, empty rule, errors."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import pytest
from scipy.ndimage import binary_erosion, gaussian_filter, generate_binary_structure

from vasseg import metrics as M
from vasseg.surface import crop_to_union, surface_distances, surface_voxels

logger = logging.getLogger(__name__)

ANISO = (0.625, 0.625, 2.5)


# --------------------------------------------------------------------------- helpers


def cube(shape: tuple[int, ...], start: tuple[int, ...], size: int) -> np.ndarray:
    """Boolean array of ``shape`` with a hyper-cube of side ``size`` at ``start``."""
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def blob_pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random reference blob and a perturbed prediction of it, both non-empty.

    Thresholded gaussian-filtered noise: several components, holes, and voxels on the array edge.
    """
    rng = np.random.default_rng(seed)
    while True:
        field = gaussian_filter(rng.standard_normal(shape), sigma=max(1.0, min(shape) / 8))
        noise = gaussian_filter(rng.standard_normal(shape), sigma=1.5)
        scale = field.std() + 1e-12
        ref = field > 0.3 * scale
        pred = field + 0.4 * scale * noise / (noise.std() + 1e-12) > 0.3 * scale
        if ref.any() and pred.any():
            return pred, ref


def medpy_all(medpy_binary, pred, ref, spacing):
    """medpy's numbers for one pair, connectivity 1 as the lineage calls it."""
    kw = {"voxelspacing": spacing, "connectivity": 1}
    return {
        "dice": medpy_binary.dc(pred, ref),
        "jaccard": medpy_binary.jc(pred, ref),
        "hd": medpy_binary.hd(pred, ref, **kw),
        "hd95": medpy_binary.hd95(pred, ref, **kw),
        "asd": medpy_binary.asd(pred, ref, **kw),
        "assd": medpy_binary.assd(pred, ref, **kw),
    }


def ours_all(pred, ref, spacing):
    """Our numbers for one pair, both via the single functions and via binary_metrics."""
    case = M.binary_metrics(pred, ref, spacing)
    assert case.status == "ok"
    single = {
        "dice": M.dice(pred, ref),
        "jaccard": M.jaccard(pred, ref),
        "hd": M.hd(pred, ref, spacing),
        "hd95": M.hd95(pred, ref, spacing),
        "asd": M.asd(pred, ref, spacing),
        "assd": M.assd(pred, ref, spacing),
    }
    for name in ("dice", "jaccard", "hd95", "asd", "assd"):
        assert getattr(case, name) == pytest.approx(single[name], abs=1e-12), name
    return single


def assert_matches_medpy(pred, ref, spacing):
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    expected = medpy_all(medpy_binary, pred, ref, spacing)
    got = ours_all(pred, ref, spacing)
    for name, value in expected.items():
        assert got[name] == pytest.approx(float(value), abs=1e-6), (name, pred.shape, spacing)


# --------------------------------------------------------------------------- analytic shapes


def test_dice_jaccard_of_half_overlapping_cubes():
    # Two 4^3 cubes overlapping in a 2x4x4 slab: |A∩B| = 32, |A| = |B| = 64, |A∪B| = 96.
    a = cube((12, 12, 12), (2, 2, 2), 4)
    b = cube((12, 12, 12), (4, 2, 2), 4)
    assert M.dice(a, b) == pytest.approx(0.5)
    assert M.jaccard(a, b) == pytest.approx(1 / 3)
    assert M.dice(a, a) == 1.0 and M.jaccard(a, a) == 1.0


def test_dice_of_nested_cubes():
    inner = cube((16, 16, 16), (3, 3, 3), 10)
    outer = cube((16, 16, 16), (1, 1, 1), 14)
    assert M.dice(inner, outer) == pytest.approx(2 * 1000 / (1000 + 14**3))
    assert M.jaccard(inner, outer) == pytest.approx(1000 / 14**3)


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_shifted_cube_hausdorff_equals_shift(axis: int, k: int):
    start = [4, 4, 4]
    moved = list(start)
    moved[axis] += k
    a = cube((20, 20, 20), tuple(start), 6)
    b = cube((20, 20, 20), tuple(moved), 6)
    assert M.hd(a, b) == pytest.approx(k)
    assert M.hd(a, b, ANISO) == pytest.approx(k * ANISO[axis])


def test_nested_cubes_surface_distances():
    # Every face of the 10^3 cube lies 2 voxels inside the 14^3 cube: asd(inner->outer) = 2;
    # the farthest outer voxel (a corner) is 2 voxels from the inner corner along each axis.
    inner = cube((16, 16, 16), (3, 3, 3), 10)
    outer = cube((16, 16, 16), (1, 1, 1), 14)
    assert M.asd(inner, outer) == pytest.approx(2.0)
    assert M.hd(inner, outer) == pytest.approx(2 * math.sqrt(3))
    assert M.asd(outer, inner) > 2.0  # edges and corners of the outer cube are farther


def test_isotropic_spacing_scales_distances_and_anisotropic_does_not_uniformly():
    pred, ref = blob_pair((24, 24, 24), seed=3)
    base = M.binary_metrics(pred, ref)
    doubled = M.binary_metrics(pred, ref, (2.0, 2.0, 2.0))
    for name in ("hd95", "asd", "assd"):
        assert getattr(doubled, name) == pytest.approx(2 * getattr(base, name))
    aniso = M.binary_metrics(pred, ref, ANISO)
    assert aniso.dice == base.dice  # overlap does not depend on spacing
    assert aniso.asd != pytest.approx(base.asd * ANISO[0])


# --------------------------------------------------------------------------- surface and crop


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_surface_voxels_equal_scipy_erosion_definition(ndim: int):
    rng = np.random.default_rng(ndim)
    shape = (40,) if ndim == 1 else (13,) * ndim
    for _ in range(5):
        mask = gaussian_filter(rng.standard_normal(shape), 1.0) > 0
        mask[(0,) * ndim] = True  # make sure the array edge is involved
        structure = generate_binary_structure(ndim, 1)
        expected = mask ^ binary_erosion(mask, structure=structure, iterations=1)
        np.testing.assert_array_equal(surface_voxels(mask), expected)


def test_crop_keeps_one_voxel_zero_margin_and_pads_at_array_edge():
    pred = np.zeros((10, 12, 8), dtype=bool)
    ref = np.zeros_like(pred)
    pred[0:3, 5:7, 2:4] = True  # touches the low edge of axis 0
    ref[2:4, 6:12, 3:5] = True  # touches the high edge of axis 1
    pc, rc = crop_to_union(pred, ref)
    assert pc.shape == (4 + 2, 7 + 2, 3 + 2)
    assert pc.sum() == pred.sum() and rc.sum() == ref.sum()
    for arr in (pc, rc):
        for axis in range(arr.ndim):
            assert not np.take(arr, 0, axis=axis).any()
            assert not np.take(arr, -1, axis=axis).any()


def test_surface_distances_returns_both_directions_in_voxel_order():
    a = cube((12, 12, 12), (2, 2, 2), 4)
    b = cube((12, 12, 12), (4, 2, 2), 4)
    to_b, to_a = surface_distances(a, b)
    assert to_b.shape == (np.count_nonzero(surface_voxels(a)),)
    assert to_a.shape == (np.count_nonzero(surface_voxels(b)),)
    assert to_b.max() == pytest.approx(2.0) and to_a.max() == pytest.approx(2.0)


# --------------------------------------------------------------------------- medpy parity


@pytest.mark.parametrize("spacing", [None, ANISO], ids=["voxels", "aniso"])
def test_matches_medpy_on_random_3d_blobs(spacing):
    rng = np.random.default_rng(0 if spacing is None else 1)
    for seed in range(10):
        shape = tuple(int(n) for n in rng.integers(8, 65, size=3))
        pred, ref = blob_pair(shape, seed)
        assert_matches_medpy(pred, ref, spacing)


@pytest.mark.parametrize("spacing", [None, (0.7, 1.9)], ids=["voxels", "aniso"])
def test_matches_medpy_on_random_2d_blobs(spacing):
    rng = np.random.default_rng(2)
    for seed in range(10):
        shape = tuple(int(n) for n in rng.integers(8, 97, size=2))
        pred, ref = blob_pair(shape, 100 + seed)
        assert_matches_medpy(pred, ref, spacing)


@pytest.mark.parametrize("spacing", [None, ANISO], ids=["voxels", "aniso"])
def test_matches_medpy_when_masks_touch_every_array_edge(spacing):
    # Masks that fill whole faces: the crop box reaches the edge and must be zero-padded.
    pred = np.zeros((20, 18, 16), dtype=np.uint8)
    ref = np.zeros((20, 18, 16), dtype=np.uint8)
    pred[:, :, :9] = 1
    ref[3:, :, 5:] = 1
    ref[:2, :4, :] = 1
    assert_matches_medpy(pred, ref, spacing)
    full = np.ones((20, 18, 16), dtype=bool)
    assert_matches_medpy(full, ref.astype(bool), spacing)


def test_matches_medpy_for_small_and_disjoint_objects():
    pred = np.zeros((30, 30, 30), dtype=bool)
    ref = np.zeros_like(pred)
    pred[5, 5, 5] = True  # a single voxel is all surface
    pred[20:25, 2:4, 10:12] = True
    ref[25:29, 25:29, 25:29] = True
    assert_matches_medpy(pred, ref, ANISO)
    assert_matches_medpy(pred[5], ref[26], None)  # 2-D slices: a lone pixel vs a square


def test_speed_against_medpy_is_logged_not_asserted(caplog):
    medpy_binary = pytest.importorskip("medpy.metric.binary")
    pred, ref = blob_pair((64, 64, 48), seed=7)
    start = time.perf_counter()
    M.binary_metrics(pred, ref, ANISO)
    ours = time.perf_counter() - start
    start = time.perf_counter()
    medpy_binary.hd95(pred, ref, voxelspacing=ANISO)
    medpy_binary.asd(pred, ref, voxelspacing=ANISO)
    theirs = time.perf_counter() - start
    with caplog.at_level(logging.INFO):
        logger.info("binary_metrics %.4f s vs medpy hd95+asd %.4f s", ours, theirs)


# --------------------------------------------------------------------------- empty rule


def _diagonal(shape, spacing):
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing)))


@pytest.mark.parametrize(
    ("pred_full", "ref_full", "status"),
    [(False, True, "empty_pred"), (True, False, "empty_ref")],
)
@pytest.mark.parametrize("rule", ["nan", "diagonal"])
def test_one_empty_mask(pred_full: bool, ref_full: bool, status: str, rule: str):
    shape, spacing = (10, 20, 30), (1.0, 2.0, 0.5)
    some = cube(shape, (2, 2, 2), 5)
    none = np.zeros(shape, dtype=bool)
    pred = some if pred_full else none
    ref = some if ref_full else none
    case = M.binary_metrics(pred, ref, spacing, empty_distance=rule)
    assert case.status == status
    assert case.dice == 0.0 and case.jaccard == 0.0
    assert _diagonal(shape, spacing) == pytest.approx(math.sqrt(1925.0))  # 10, 40 and 15 units
    expected = math.sqrt(1925.0) if rule == "diagonal" else math.nan
    for value in (case.hd95, case.asd, case.assd):
        assert value == pytest.approx(expected, nan_ok=True)
    for fn in (M.hd, M.hd95, M.asd, M.assd):
        assert fn(pred, ref, spacing, empty_distance=rule) == pytest.approx(expected, nan_ok=True)


def test_diagonal_is_in_voxels_without_spacing():
    none, full = np.zeros((3, 4), bool), np.ones((3, 4), bool)
    case = M.binary_metrics(none, full, empty_distance="diagonal")
    assert case.hd95 == pytest.approx(5.0)


@pytest.mark.parametrize("rule", ["nan", "diagonal"])
def test_both_empty_is_all_nan(rule: str):
    none = np.zeros((8, 8, 8), dtype=bool)
    case = M.binary_metrics(none, none, ANISO, empty_distance=rule)
    assert case.status == "both_empty"
    for value in (case.dice, case.jaccard, case.hd95, case.asd, case.assd):
        assert math.isnan(value)
    assert math.isnan(M.dice(none, none)) and math.isnan(M.jaccard(none, none))
    assert math.isnan(M.hd95(none, none, empty_distance=rule))


def test_surface_distances_refuses_empty_masks():
    with pytest.raises(ValueError, match="empty"):
        surface_distances(np.zeros((4, 4), bool), np.ones((4, 4), bool))


def test_per_class_metrics_on_label_maps():
    ref = np.zeros((16, 16, 16), dtype=np.int64)
    ref[2:8, 2:8, 2:8] = 1
    ref[10:14, 10:14, 10:14] = 2
    pred = np.zeros_like(ref)
    pred[2:8, 2:8, 3:9] = 1  # class 1 shifted by one voxel, class 2 missed, class 3 spurious
    pred[0:2, 0:2, 0:2] = 3
    result = M.per_class_metrics(pred, ref, [1, 2, 3, 4], ANISO)
    assert list(result) == [1, 2, 3, 4]
    assert result[1] == M.binary_metrics(pred == 1, ref == 1, ANISO)
    assert result[1].dice == pytest.approx(2 * 180 / 432)
    assert result[2].status == "empty_pred"
    assert result[3].status == "empty_ref"
    assert result[4].status == "both_empty"


# --------------------------------------------------------------------------- bad inputs


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(4, 6\)"):
        M.binary_metrics(np.ones((4, 5), bool), np.ones((4, 6), bool))
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        M.per_class_metrics(np.ones((4, 5), int), np.ones((5, 4), int), [1])


@pytest.mark.parametrize(
    "bad",
    [
        np.full((4, 4), 0.5),
        np.ones((4, 4), np.float32),
        np.full((4, 4), 2),
        np.full((4, 4), -1),
        np.array(1),
    ],
    ids=["float-half", "float-ones", "int-2", "int-neg", "scalar"],
)
def test_non_binary_masks_are_refused(bad: np.ndarray):
    good = np.ones(bad.shape, dtype=bool)
    for fn in (M.dice, M.jaccard, M.hd95, M.binary_metrics):
        with pytest.raises(ValueError):
            fn(bad, good)
        with pytest.raises(ValueError):
            fn(good, bad)


@pytest.mark.parametrize(
    "spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -2.0, 1.0), 1.0, (1.0, math.nan, 1.0)]
)
def test_bad_spacing_is_refused(spacing):
    mask = cube((6, 6, 6), (1, 1, 1), 3)
    with pytest.raises(ValueError, match="spacing"):
        M.hd95(mask, mask, spacing)


def test_bad_empty_distance_and_label_dtype_are_refused():
    mask = cube((6, 6, 6), (1, 1, 1), 3)
    with pytest.raises(ValueError, match="empty_distance"):
        M.binary_metrics(mask, mask, empty_distance="zero")
    with pytest.raises(ValueError, match="integer"):
        M.per_class_metrics(mask.astype(float), mask.astype(float), [1])


def test_zero_one_integers_equal_booleans():
    pred, ref = blob_pair((20, 20, 20), seed=11)
    as_ints = M.binary_metrics(pred.astype(np.uint8), ref.astype(np.int32), ANISO)
    assert as_ints == M.binary_metrics(pred, ref, ANISO)


# --------------------------------------------------------------------------- summaries


def test_summarize_skips_and_counts_nan_with_sample_std():
    summary = M.summarize([1.0, 2.0, 3.0, math.nan])
    assert summary == M.Summary(mean=2.0, std=1.0, n=3, n_nan=1)  # ddof=1: std of 1,2,3 is 1
    assert M.summarize([4.0]) == M.Summary(4.0, 0.0, 1, 0)
    empty = M.summarize([math.nan, math.nan])
    assert math.isnan(empty.mean) and math.isnan(empty.std) and (empty.n, empty.n_nan) == (0, 2)


def test_format_mean_std():
    assert M.format_mean_std(M.Summary(88.4249, 2.3061, 5, 0)) == "88.42 ± 2.31"
    assert M.format_mean_std(M.Summary(1.0, 0.26, 3, 2), digits=1) == "1.0 ± 0.3 (2 n/a)"
    assert M.format_mean_std(M.summarize([math.nan])) == "n/a"
    assert M.format_mean_std(M.summarize([])) == "n/a"
