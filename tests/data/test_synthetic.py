"""Phantoms: deterministic, realistic but not trivial, multi-class, and in the LA layout."""

import time

import numpy as np
import pytest
import torch

from vasseg.data.la import list_ids
from vasseg.data.synthetic import make_phantom, make_phantom_set, write_phantom_la_layout

from tests.loading import load_cases

SMALL = (32, 32, 24)


def _best_threshold_dice(image, fg):
    best = 0.0
    for t in np.quantile(image, np.linspace(0.5, 0.999, 120)):
        pred = image > t
        best = max(best, 2 * (pred & fg).sum() / (pred.sum() + fg.sum()))
    return best


def test_deterministic_in_seed():
    a, b, c = make_phantom(SMALL, seed=3), make_phantom(SMALL, seed=3), make_phantom(SMALL, seed=4)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_types_and_zscore():
    image, label = make_phantom(SMALL, seed=0)
    assert image.shape == label.shape == SMALL
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert abs(image.mean()) < 1e-3 and abs(image.std() - 1) < 1e-3
    assert len(np.unique(image)) <= 256  # 8-bit like the LA MRIs


@pytest.mark.parametrize("seed", range(4))
def test_structure_has_contrast_but_threshold_is_not_enough(seed):
    image, label = make_phantom((48, 48, 32), seed=seed)
    fg = label == 1
    assert 0.01 < fg.mean() < 0.3  # non-empty, not the whole volume
    assert image[fg].mean() - image[~fg].mean() > 1.0  # visible contrast (in background stds)
    assert _best_threshold_dice(image, fg) < 0.95  # overlapping intensity distributions


@pytest.mark.parametrize("num_classes", [3, 4])
def test_multiclass_gives_every_class_with_its_own_contrast(num_classes):
    for seed in range(3):
        image, label = make_phantom(SMALL, num_classes=num_classes, seed=seed)
        assert set(np.unique(label).tolist()) == set(range(num_classes))
        means = [image[label == c].mean() for c in range(num_classes)]
        assert len({round(float(m), 1) for m in means}) == num_classes


def test_fast_enough():
    make_phantom(seed=0)  # warm-up (imports, allocator)
    t0 = time.perf_counter()
    make_phantom((64, 64, 48), seed=1)
    assert time.perf_counter() - t0 < 0.5  # ~0.05 s alone; slack for a shared CPU


def test_phantom_set():
    vs = make_phantom_set(3, SMALL, num_classes=3, seed=2, spacing=(1.0, 1.0, 2.0))
    assert vs.ids == ["phantom_000", "phantom_001", "phantom_002"]
    vs.validate(3)
    assert vs[0].image.shape == (1, *SMALL) and vs[0].spacing == (1.0, 1.0, 2.0)
    # A case does not depend on the set's size.
    assert torch.equal(make_phantom_set(1, SMALL, 3, seed=2)[0].label, vs[0].label)


def test_la_layout_round_trip(tmp_path):
    root = write_phantom_la_layout(tmp_path / "LA", n_train=2, n_test=1, shape=SMALL, seed=7)
    assert list_ids(root, "train") == ["phantom_000", "phantom_001"]
    assert list_ids(root, "test") == ["phantom_002"]
    loaded = load_cases("la", root, list_ids(root, "test"))
    image, label = make_phantom(SMALL, seed=(7, 2))
    assert np.array_equal(loaded[0].image[0].numpy(), image)
    assert np.array_equal(loaded[0].label.numpy(), label)
