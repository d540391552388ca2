"""Sliding-window inference against a one-window-at-a-time NumPy re-implementation of the lineage."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from vasseg.inferer.sliding import coverage_counts, pad_amounts, sliding_window_probs, window_grid, window_starts
from vasseg.models.outputs import probs_from_logits

from tests.windowtools import labels_from_probs, make_predictor, predict_volume, resize_probs


def tiny_model(in_channels: int = 1, num_classes: int = 3, seed: int = 0) -> nn.Module:
    """A fixed random 3x3x3 convolution: deterministic, cheap, position-dependent output."""
    torch.manual_seed(seed)
    conv = nn.Conv3d(in_channels, num_classes, kernel_size=3, padding=1)
    return conv.eval()


def reference_probs(model: nn.Module, image: np.ndarray, patch, stride_xy: int, stride_z: int, num_classes: int):
    """The lineage's loop, one window at a time, NumPy accumulation (image is (X, Y, Z))."""
    w, h, d = image.shape
    pads = [max(p - s, 0) for s, p in zip(image.shape, patch)]
    lo = [p // 2 for p in pads]
    padded = np.pad(image, [(l, p - l) for l, p in zip(lo, pads)], mode="constant", constant_values=0)
    ww, hh, dd = padded.shape
    sx = math.ceil((ww - patch[0]) / stride_xy) + 1
    sy = math.ceil((hh - patch[1]) / stride_xy) + 1
    sz = math.ceil((dd - patch[2]) / stride_z) + 1
    score = np.zeros((num_classes,) + padded.shape, dtype=np.float32)
    cnt = np.zeros(padded.shape, dtype=np.float32)
    for x in range(sx):
        xs = min(stride_xy * x, ww - patch[0])
        for y in range(sy):
            ys = min(stride_xy * y, hh - patch[1])
            for z in range(sz):
                zs = min(stride_z * z, dd - patch[2])
                win = padded[xs : xs + patch[0], ys : ys + patch[1], zs : zs + patch[2]]
                with torch.no_grad():
                    out = torch.softmax(model(torch.from_numpy(win[None, None].astype(np.float32))), dim=1)
                sl = (slice(xs, xs + patch[0]), slice(ys, ys + patch[1]), slice(zs, zs + patch[2]))
                score[(slice(None),) + sl] += out[0].numpy()
                cnt[sl] += 1
    score = score / cnt[None]
    return score[:, lo[0] : lo[0] + w, lo[1] : lo[1] + h, lo[2] : lo[2] + d]


@pytest.mark.parametrize(
    "shape",
    [(37, 29, 23), (37, 12, 23), (10, 9, 7), (16, 16, 16)],
    ids=["odd", "small-in-one-dim", "small-in-all-dims", "exactly-one-patch"],
)
def test_matches_lineage_reference(shape):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    model = tiny_model()
    ref = reference_probs(model, image, (16, 16, 16), 5, 3, num_classes=3)
    ours = sliding_window_probs(
        make_predictor(model), torch.from_numpy(image)[None], (16, 16, 16), (5, 5, 3), num_classes=3, batch_size=4
    )
    assert ours.shape == (3, *shape)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-6)
    assert np.array_equal(labels_from_probs(ours).numpy(), ref.argmax(0))


@pytest.mark.filterwarnings("ignore:TF32 acceleration")
def test_batch_size_does_not_change_result():
    image = torch.randn(1, 37, 29, 23, generator=torch.Generator().manual_seed(1))
    predict = make_predictor(tiny_model())

    def run(batch_size):
        return sliding_window_probs(predict, image, (16, 16, 16), (5, 5, 3), num_classes=3, batch_size=batch_size)

    # oneDNN picks a different convolution algorithm per batch size (differences ~4e-7), so
    # the bit-exact check of the batching/accumulation runs on the reference CPU kernel.
    with torch.backends.mkldnn.flags(enabled=False):
        assert torch.equal(run(1), run(3))
    torch.testing.assert_close(run(1), run(3), rtol=0, atol=1e-6)


def test_one_forward_per_batch():
    calls = []
    model = tiny_model()

    def predict(windows):
        calls.append(windows.shape[0])
        return torch.softmax(model(windows), dim=1)

    image = torch.randn(1, 37, 29, 23)
    sliding_window_probs(predict, image, (16, 16, 16), (5, 5, 3), num_classes=3, batch_size=4)
    n = len(window_grid((37, 29, 23), (16, 16, 16), (5, 5, 3)))
    assert sum(calls) == n and len(calls) == math.ceil(n / 4)


def test_window_geometry():
    assert window_starts(37, 16, 5) == [0, 5, 10, 15, 20, 21]
    assert window_starts(16, 16, 5) == [0]
    assert window_starts(176, 112, 18) == [0, 18, 36, 54, 64]
    with pytest.raises(ValueError):
        window_starts(10, 16, 5)
    assert pad_amounts((10, 16, 20), (16, 16, 16)) == ((3, 3), (0, 0), (0, 0))
    assert pad_amounts((9, 16, 20), (16, 16, 16)) == ((3, 4), (0, 0), (0, 0))
    counts = coverage_counts((37, 29, 23), (16, 16, 16), (5, 5, 3))
    ones = torch.zeros(37, 29, 23)
    for s in window_grid((37, 29, 23), (16, 16, 16), (5, 5, 3)):
        ones[s[0] : s[0] + 16, s[1] : s[1] + 16, s[2] : s[2] + 16] += 1
    assert torch.equal(counts, ones)


def test_bad_inputs_raise():
    predict = make_predictor(tiny_model())
    with pytest.raises(ValueError, match="C, X, Y, Z"):
        sliding_window_probs(predict, torch.zeros(20, 20, 20), (16, 16, 16), (5, 5, 5), 3)
    with pytest.raises(ValueError, match="predict returned shape"):
        sliding_window_probs(predict, torch.zeros(1, 20, 20, 20), (16, 16, 16), (5, 5, 5), num_classes=2)


def test_sigmoid_two_channels_argmax_is_threshold():
    logits = torch.tensor([-3.0, -1e-7, 0.0, 1e-7, 3.0, -20.0, 20.0]).reshape(1, 1, 7, 1, 1)
    p = torch.sigmoid(logits)
    probs = probs_from_logits(logits, "sigmoid")
    assert probs.shape == (1, 2, 7, 1, 1)
    assert torch.equal(probs.argmax(1), (p > 0.5).long()[:, 0])
    # exact tie at p = 0.5 (logit 0): class 0, like p > 0.5
    assert probs[0, 0, 2, 0, 0] == probs[0, 1, 2, 0, 0] == 0.5
    assert probs.argmax(1)[0, 2, 0, 0] == 0
    # float32 values just around 0.5
    around = torch.tensor([0.5 - 2**-25, 0.5 - 2**-24, 0.5, 0.5 + 2**-24], dtype=torch.float32)
    pair = torch.stack([1.0 - around, around])
    assert torch.equal(pair.argmax(0), (around > 0.5).long())
    with pytest.raises(ValueError):
        probs_from_logits(logits, "relu")  # type: ignore[arg-type]


def test_single_sigmoid_channel_labels():
    probs = torch.tensor([0.2, 0.5, 0.7]).reshape(1, 3, 1, 1)
    assert labels_from_probs(probs).flatten().tolist() == [0, 0, 1]


def test_resize_probs():
    probs = torch.softmax(torch.randn(2, 8, 8, 4), dim=0)
    up = resize_probs(probs, (16, 12, 9))
    assert up.shape == (2, 16, 12, 9)
    torch.testing.assert_close(up.sum(0), torch.ones(16, 12, 9))
    assert resize_probs(probs, (8, 8, 4)) is probs
    const = torch.full((1, 4, 4, 4), 0.3)
    torch.testing.assert_close(resize_probs(const, (7, 5, 3)), torch.full((1, 7, 5, 3), 0.3))


def test_matches_monai_on_la_like_grid():
    """DESIGN.md: MONAI's sliding window reproduces the lineage's with mode='constant' and
    per-axis overlap 1 - stride/patch. Checked on a grid where MONAI's int(patch*(1-overlap))
    gives back the stride exactly."""
    inferers = pytest.importorskip("monai.inferers")
    patch, stride = (112, 112, 80), (18, 18, 4)
    torch.manual_seed(0)
    model = nn.Conv3d(1, 2, kernel_size=1).eval()  # cheap: only the window bookkeeping matters
    predict = make_predictor(model)
    image = torch.randn(1, 144, 128, 88)
    ours = sliding_window_probs(predict, image, patch, stride, num_classes=2, batch_size=4)
    overlap = [1 - s / p for s, p in zip(stride, patch)]
    with torch.no_grad():
        theirs = inferers.sliding_window_inference(
            image[None], roi_size=patch, sw_batch_size=4, predictor=predict, overlap=overlap, mode="constant"
        )[0]
    assert torch.equal(ours, theirs)
    # with a volume smaller than the patch in one axis (both pad symmetrically, floor before)
    small = torch.randn(1, 100, 128, 88)
    ours = sliding_window_probs(predict, small, patch, stride, num_classes=2, batch_size=4)
    with torch.no_grad():
        theirs = inferers.sliding_window_inference(
            small[None], roi_size=patch, sw_batch_size=4, predictor=predict, overlap=overlap, mode="constant"
        )[0]
    assert torch.equal(ours, theirs)


def test_vnet_end_to_end():
    from vasseg.models.vnet import VNet

    torch.manual_seed(0)
    model = VNet(in_channels=1, num_classes=2, filters=4).eval()
    image = torch.randn(1, 40, 36, 14)
    labels, probs = predict_volume(make_predictor(model), image, (32, 32, 16), (16, 16, 8), num_classes=2, batch_size=2)
    assert labels.shape == (40, 36, 14) and labels.dtype == torch.uint8 and labels.device.type == "cpu"
    assert probs.shape == (2, 40, 36, 14)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(0), torch.ones(40, 36, 14))
    assert torch.equal(labels, probs.argmax(0).to(torch.uint8))
