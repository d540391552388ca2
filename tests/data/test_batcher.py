"""Two-stream batches: sampling protocol, augmentation consistency, exact resume, sharding."""

import io
from collections import Counter

import pytest
import torch

from vasseg.data.batcher import Batch, TwoStreamBatcher
from vasseg.data.volumes import Case, DataError, VolumeSet

PATCH = (6, 5, 4)


def _coded_set(n, prefix, shape=(9, 8, 6), labeled=True):
    """Volumes whose intensity encodes (case, x, y, z) and whose label is a function of (x, y, z),
    so a patch reveals where it came from and how it was oriented."""
    cases = []
    x, y, z = torch.meshgrid(*(torch.arange(d) for d in shape), indexing="ij")
    for i in range(n):
        image = (1000 * (i + 1) + 100 * x + 10 * y + z).float()[None]
        label = ((x + 2 * y + 3 * z) % 3).to(torch.uint8) if labeled else None
        cases.append(Case(f"{prefix}{i}", image, label, (1.0, 1.0, 1.0)))
    return VolumeSet(cases)


def _decode(patch):
    """(case, x, y, z) integer maps of a coded image patch ``(C, X, Y, Z)``."""
    v = patch[0].round().long()
    return v // 1000 - 1, v // 100 % 10, v // 10 % 10, v % 10


def test_batch_shapes_dtypes_and_order():
    b = TwoStreamBatcher(_coded_set(4, "l"), _coded_set(6, "u", labeled=False), 2, 3, PATCH).next()
    assert isinstance(b, Batch)
    assert b.image_l.shape == (2, 1, *PATCH) and b.image_l.dtype == torch.float32
    assert b.label_l.shape == (2, *PATCH) and b.label_l.dtype == torch.int64
    assert b.image_u.shape == (3, 1, *PATCH)
    assert torch.equal(b.image_all[:2], b.image_l) and torch.equal(b.image_all[2:], b.image_u)
    assert all(i.startswith("l") for i in b.ids_l) and all(i.startswith("u") for i in b.ids_u)
    assert b.to("cpu") is b


@pytest.mark.parametrize("unlabeled, bs", [(None, 2), ("set", 0)])
def test_no_unlabeled_stream(unlabeled, bs):
    unl = _coded_set(3, "u") if unlabeled else None
    b = TwoStreamBatcher(_coded_set(3, "l"), unl, 2, bs, PATCH).next()
    assert b.image_u is None and b.ids_u == [] and b.image_all is b.image_l


def test_labeled_epochs_are_permutations_and_unlabeled_chain_covers_all():
    lab, unl = _coded_set(5, "l"), _coded_set(6, "u")
    batcher = TwoStreamBatcher(lab, unl, labeled_bs=2, unlabeled_bs=2, patch=PATCH, seed=3)
    assert batcher.steps_per_epoch == 2
    batches = [batcher.next() for _ in range(6)]
    for epoch in range(3):  # 2 batches of 2 from each permutation of 5; the 5th is dropped
        ids = [i for b in batches[2 * epoch:2 * epoch + 2] for i in b.ids_l]
        assert len(set(ids)) == 4
    assert batcher.epoch == 3
    unl_ids = [i for b in batches for i in b.ids_u]
    for start in (0, 6):  # 12 draws = two complete permutations of 6
        assert sorted(unl_ids[start:start + 6]) == sorted(unl.ids)
    assert len({tuple(b.ids_l) for b in batches}) > 1  # reshuffled, not a fixed order


def test_patches_are_true_crops_with_matching_labels():
    lab = _coded_set(3, "l")
    batcher = TwoStreamBatcher(lab, None, labeled_bs=3, patch=PATCH, seed=0)
    orientations = set()
    for _ in range(8):
        b = batcher.next()
        for img, label, case_id in zip(b.image_l, b.label_l, b.ids_l):
            case, x, y, z = _decode(img)
            assert (case == lab.ids.index(case_id)).all()
            assert torch.equal(label, (x + 2 * y + 3 * z) % 3)  # label moved with the image
            orientations.add((int(x[1, 0, 0] - x[0, 0, 0]), int(y[0, 1, 0] - y[0, 0, 0])))
    assert len(orientations) > 2  # rotations/flips happen


def test_augment_false_crops_only():
    batcher = TwoStreamBatcher(_coded_set(2, "l"), None, 2, 0, PATCH, augment=False)
    for img in batcher.next().image_l:
        _, x, y, z = _decode(img)
        assert (x[1:] - x[:-1] == 1).all() and (y[:, 1:] - y[:, :-1] == 1).all()
        assert (z[..., 1:] - z[..., :-1] == 1).all()


def test_volume_smaller_than_patch_is_zero_padded():
    small = _coded_set(2, "l", shape=(4, 3, 2))
    b = TwoStreamBatcher(small, None, 2, 0, PATCH).next()
    assert b.image_l.shape == (2, 1, *PATCH)
    assert ((b.image_l[:, 0] == 0) | (b.image_l[:, 0] >= 1000)).all()
    assert (b.image_l == 0).any()


def _plain(obj):
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_plain(v) for v in obj)
    return isinstance(obj, (int, float, str, bool)) or obj is None


def test_resume_yields_identical_batches():
    lab, unl = _coded_set(5, "l"), _coded_set(7, "u")
    ref = TwoStreamBatcher(lab, unl, 2, 2, PATCH, seed=11)
    expected = [ref.next() for _ in range(9)]
    first = TwoStreamBatcher(lab, unl, 2, 2, PATCH, seed=11)
    for _ in range(4):
        first.next()
    state = first.state_dict()
    assert _plain(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    resumed = TwoStreamBatcher(lab, unl, 2, 2, PATCH, seed=999)  # the seed comes from the state
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.step == 4
    for want in expected[4:]:
        got = resumed.next()
        assert got.ids_l == want.ids_l and got.ids_u == want.ids_u
        assert torch.equal(got.image_all, want.image_all) and torch.equal(got.label_l, want.label_l)


def test_state_from_a_different_setup_is_rejected():
    state = TwoStreamBatcher(_coded_set(4, "l"), None, 2, 0, PATCH).state_dict()
    other = TwoStreamBatcher(_coded_set(4, "l"), None, 1, 0, PATCH)
    with pytest.raises(DataError, match="batcher state: saved with different labeled_bs"):
        other.load_state_dict(state)


def test_ranks_draw_distinct_slices_of_the_global_batch():
    lab, unl = _coded_set(8, "l"), _coded_set(6, "u")
    single = TwoStreamBatcher(lab, unl, 4, 2, PATCH, seed=5)
    ranks = [TwoStreamBatcher(lab, unl, 2, 1, PATCH, seed=5, rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0].steps_per_epoch == single.steps_per_epoch == 2
    for _ in range(5):
        whole = single.next()
        parts = [r.next() for r in ranks]
        assert not set(parts[0].ids_l) & set(parts[1].ids_l)
        assert parts[0].ids_l + parts[1].ids_l == whole.ids_l
        assert parts[0].ids_u + parts[1].ids_u == whole.ids_u
        assert torch.equal(torch.cat([p.image_l for p in parts]), whole.image_l)
        assert torch.equal(torch.cat([p.image_u for p in parts]), whole.image_u)
    assert ranks[0].state_dict() == ranks[1].state_dict()  # generators in lock-step


def test_constructor_errors():
    with pytest.raises(DataError, match="3 labeled cases < global labeled batch 4"):
        TwoStreamBatcher(_coded_set(3, "l"), None, 2, 0, PATCH, world_size=2)
    with pytest.raises(DataError, match="labeled cases without a label: u0"):
        TwoStreamBatcher(_coded_set(2, "u", labeled=False), None, 1, 0, PATCH)
    with pytest.raises(DataError, match="rank 2 outside 0..1"):
        TwoStreamBatcher(_coded_set(4, "l"), None, 1, 0, PATCH, rank=2, world_size=2)


def test_cases_are_sampled_uniformly():
    lab = _coded_set(4, "l")
    batcher = TwoStreamBatcher(lab, None, 2, 0, PATCH, seed=2)
    counts = Counter(i for _ in range(40) for i in batcher.next().ids_l)
    assert set(counts.values()) == {20}  # 4 divisible by 2: every epoch uses every case once


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches_without_host_sync():
    def sets():
        return _coded_set(4, "l"), _coded_set(3, "u", shape=(4, 3, 9))  # the second needs padding

    cpu = TwoStreamBatcher(*sets(), 2, 2, PATCH, seed=1)
    lab, unl = sets()
    gpu = TwoStreamBatcher(lab.to("cuda"), unl.to("cuda"), 2, 2, PATCH, seed=1)
    torch.cuda.set_sync_debug_mode("error")  # any device->host synchronisation raises
    try:
        got = [gpu.next() for _ in range(5)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    for g in got:
        want = cpu.next()
        assert g.image_l.is_cuda and g.label_l.is_cuda and g.image_u.is_cuda
        assert torch.equal(g.image_all.cpu(), want.image_all)
        assert torch.equal(g.label_l.cpu(), want.label_l)
