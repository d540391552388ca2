"""Window modes (nnU-Net's Gaussian overlap, whole volume) against the lineage's dense windows."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from torch import nn

from vasseg.data.synthetic import make_phantom
from vasseg.inferer import windows as win
from vasseg.inferer.sliding import sliding_window_probs

from tests.windowtools import make_predictor
from vasseg.inferer.windows import (
    Windows,
    gaussian_1d,
    gaussian_probs,
    gaussian_weight,
    infer_probs,
    overlap_starts,
    whole_pads,
    whole_probs,
    windows_from_options,
)
from vasseg.metrics import dice

PATCH = (32, 32, 24)
CPU = torch.device("cpu")


def nnunet_steps(dim: int, patch: int, step_size: float = 0.5) -> list[int]:
    """nnU-Net v2's ``compute_steps_for_sliding_window`` for one axis, transcribed."""
    target = patch * step_size
    num = int(np.ceil((dim - patch) / target)) + 1
    actual = (dim - patch) / (num - 1) if num > 1 else 99999999999
    return [int(np.round(actual * i)) for i in range(num)]


@pytest.mark.parametrize("dim,patch", [(176, 112, ), (144, 112), (88, 80), (112, 112), (200, 48), (97, 32)])
def test_overlap_starts_are_nnunets(dim, patch):
    starts = overlap_starts(dim, patch, 0.5)
    assert starts == nnunet_steps(dim, patch)
    assert starts[0] == 0 and starts[-1] == dim - patch
    assert all(b - a <= patch // 2 for a, b in zip(starts, starts[1:]))  # at least half the patch shared


def test_gaussian_is_nnunets_importance_map():
    g = gaussian_1d(112)
    assert g.argmax() == 56 and g[56] == 1.0
    sigma = 112 / 8
    assert math.isclose(float(g[56 + 14]), math.exp(-0.5), rel_tol=1e-6)  # one sigma off centre
    assert math.isclose(float(g[56 + 14]), math.exp(-(14**2) / (2 * sigma**2)), rel_tol=1e-6)
    w = gaussian_weight((112, 112, 80))
    assert w.shape == (112, 112, 80) and float(w.max()) == 1.0
    assert float(w.min()) > 0  # every voxel of a window counts (exp(-24) in a corner)


def pointwise_model(seed: int = 0) -> nn.Module:
    """1x1x1 convolution: a window's output does not depend on where the window lies."""
    torch.manual_seed(seed)
    return nn.Conv3d(1, 3, kernel_size=1).eval()


@pytest.mark.parametrize("shape", [(50, 41, 30), (20, 41, 30), (32, 32, 24)])
def test_modes_equal_dense_for_a_pointwise_model(shape):
    """Weights that sum right and windows that cover everything: with no context, every mode gives
    the dense result up to float rounding (bound 1e-6)."""
    image = torch.randn(1, *shape, generator=torch.Generator().manual_seed(1))
    predict = make_predictor(pointwise_model())
    dense = sliding_window_probs(predict, image, PATCH, (8, 8, 4), num_classes=3, batch_size=4)
    overlap = gaussian_probs(predict, image, PATCH, 0.5, num_classes=3, batch_size=3)
    whole = whole_probs(predict, image, 3, CPU)
    for probs in (overlap, whole):
        assert probs.shape == (3, *shape) and probs.dtype == torch.float32
        torch.testing.assert_close(probs, dense, rtol=0, atol=1e-6)


def phantom_segmenter() -> nn.Module:
    """A fixed segmenter of the phantoms: 5x5x5 mean (zero padding, like the VNet's), then
    foreground where it exceeds 0.5. Its receptive field makes window borders matter: a voxel
    near a window's edge is averaged with zeros there (the lineage's border effect)."""
    smooth = nn.Conv3d(1, 1, 5, padding=2, bias=False)
    head = nn.Conv3d(1, 2, 1)
    with torch.no_grad():
        smooth.weight.fill_(1 / 125)
        head.weight.copy_(torch.tensor([-4.0, 4.0]).view(2, 1, 1, 1, 1))
        head.bias.copy_(torch.tensor([2.0, -2.0]))
    return nn.Sequential(smooth, head).eval()


def phantom_maps(seed: int) -> dict[str, np.ndarray]:
    image, _ = make_phantom((48, 44, 40), 2, seed=seed)
    x = torch.from_numpy(np.asarray(image))[None]
    predict = make_predictor(phantom_segmenter())
    with torch.no_grad():
        probs = {
            "dense": sliding_window_probs(predict, x, PATCH, (4, 4, 4), num_classes=2, batch_size=4),
            "overlap": gaussian_probs(predict, x, PATCH, 0.5, num_classes=2, batch_size=4),
            "whole": whole_probs(predict, x, 2, CPU),
        }
    return {k: p.argmax(0).numpy() for k, p in probs.items()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_modes_agree_with_dense_on_phantoms(seed):
    """Label maps of the overlap and whole-volume modes against the dense (stride 4) result.

    Bounds: Dice >= 0.93 against the dense map (measured 0.941, 0.947, 0.967 on these three
    phantoms: the dense average keeps a share of every window's border artefact, the Gaussian
    weights nearly none and the whole volume none) and >= 0.995 between the two fast modes
    (measured 0.9999-1.0). A misplaced window or a wrong normalisation costs far more."""
    maps = phantom_maps(seed)
    assert maps["dense"].sum() > 1000  # the phantoms' structures are found
    for mode in ("overlap", "whole"):
        assert dice(maps[mode], maps["dense"]) >= 0.93
    assert dice(maps["overlap"], maps["whole"]) >= 0.995


def test_whole_pads_to_multiple_of_16():
    assert whole_pads((88, 72, 44)) == ((4, 4), (4, 4), (2, 2))
    assert whole_pads((32, 33, 1)) == ((0, 0), (7, 8), (7, 8))
    calls = []
    model = pointwise_model()

    def predict(x):
        calls.append(tuple(x.shape))
        return torch.softmax(model(x), dim=1)

    probs = whole_probs(predict, torch.randn(1, 30, 33, 17), 3, CPU)
    assert calls == [(1, 1, 32, 48, 32)] and probs.shape == (3, 30, 33, 17)


def test_whole_falls_back_to_windows_when_memory_is_short(monkeypatch, caplog):
    image = torch.randn(1, 50, 41, 30)
    predict = make_predictor(phantom_segmenter())
    monkeypatch.setattr(win, "free_memory", lambda device: 1024)
    with caplog.at_level(logging.WARNING, logger="vasseg.inferer.windows"):
        fallback = infer_probs(predict, image, PATCH, Windows("whole"), (8, 8, 8), num_classes=2)
    assert "using windows" in caplog.text
    assert torch.equal(fallback, gaussian_probs(predict, image, PATCH, 0.5, num_classes=2))
    strided = infer_probs(predict, image, PATCH, Windows("whole", stride=(9, 9, 9)), (8, 8, 8), num_classes=2)
    assert torch.equal(strided, sliding_window_probs(predict, image, PATCH, (9, 9, 9), num_classes=2))


def test_infer_probs_dispatches_each_mode():
    image = torch.randn(1, 40, 36, 26)
    predict = make_predictor(phantom_segmenter())
    dense = infer_probs(predict, image, PATCH, Windows("stride"), (8, 8, 8), num_classes=2)
    assert torch.equal(dense, sliding_window_probs(predict, image, PATCH, (8, 8, 8), num_classes=2))
    explicit = infer_probs(predict, image, PATCH, Windows("stride", (5, 6, 7)), (8, 8, 8), num_classes=2)
    assert torch.equal(explicit, sliding_window_probs(predict, image, PATCH, (5, 6, 7), num_classes=2))
    whole = infer_probs(predict, image, PATCH, Windows("whole"), (8, 8, 8), num_classes=2)
    assert torch.equal(whole, whole_probs(predict, image, 2, CPU))


def test_windows_from_options():
    predict_default, evaluate_default = Windows("whole"), Windows("stride")
    assert windows_from_options(None, None, None, predict_default) == predict_default
    assert windows_from_options(None, None, None, evaluate_default) == evaluate_default
    assert windows_from_options(None, [4, 4, 2], None, predict_default) == Windows("stride", (4, 4, 2))
    assert windows_from_options(None, None, 0.25, evaluate_default) == Windows("overlap", overlap=0.25)
    assert windows_from_options("sliding", None, None, predict_default) == Windows("overlap", overlap=0.5)
    assert windows_from_options("sliding", None, None, evaluate_default) == evaluate_default
    assert windows_from_options("whole", [9, 9, 2], None, evaluate_default) == Windows("whole", (9, 9, 2))
    with pytest.raises(ValueError, match="--stride and --overlap"):
        windows_from_options(None, [4, 4, 2], 0.5, predict_default)
    with pytest.raises(ValueError, match=r"--overlap 1: must lie in \[0, 1\)"):
        windows_from_options(None, None, 1.0, predict_default)
    with pytest.raises(ValueError, match="three positive integers"):
        windows_from_options(None, [4, 0, 2], None, predict_default)


def test_describe_names_the_mode():
    assert Windows("stride").describe((9, 9, 2)) == "stride 9x9x2"
    assert Windows("overlap").describe((9, 9, 2)).startswith("overlap 0.5, Gaussian")
    assert "whole volume" in Windows("whole").describe((9, 9, 2))
