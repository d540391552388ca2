"""The lineage's VNet: parameter count, shapes, options."""

from __future__ import annotations

import pytest
import torch

from vasseg.models.vnet import VNet, count_parameters


def test_parameter_count_matches_the_lineage() -> None:
    # UA-MT / SASSNet / DTC / MC-Net VNet(n_channels=1, n_classes=2, n_filters=16, batchnorm).
    assert count_parameters(VNet(in_channels=1, num_classes=2)) == 9_448_866


def test_forward_returns_logits_and_feature_maps() -> None:
    net = VNet(filters=4, num_classes=3).eval()
    out = net(torch.randn(2, 1, 32, 32, 16))
    assert out.logits.shape == (2, 3, 32, 32, 16)
    assert [tuple(e.shape[1:]) for e in out.encoder] == [
        (4, 32, 32, 16), (8, 16, 16, 8), (16, 8, 8, 4), (32, 4, 4, 2), (64, 2, 2, 1)]
    assert [tuple(d.shape[1:]) for d in out.decoder] == [
        (32, 4, 4, 2), (16, 8, 8, 4), (8, 16, 16, 8), (4, 32, 32, 16)]
    assert net.encoder_channels == [4, 8, 16, 32, 64]


@pytest.mark.parametrize("norm", ["batchnorm", "groupnorm", "instancenorm", "none"])
def test_every_norm_builds_and_runs(norm: str) -> None:
    net = VNet(filters=16, norm=norm)
    out = net(torch.randn(2, 1, 32, 32, 32))  # norms need >1 value per channel at the bottleneck
    assert torch.isfinite(out.logits).all()
    kinds = {type(m).__name__ for m in net.modules()}
    expected = {"batchnorm": "BatchNorm3d", "groupnorm": "GroupNorm", "instancenorm": "InstanceNorm3d"}
    if norm in expected:
        assert expected[norm] in kinds
    else:
        assert not kinds & set(expected.values())


def test_dropout_flag_and_train_eval_behaviour() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 1, 16, 16, 16)
    with_dropout = VNet(filters=4, dropout=True, norm="none")
    assert any(isinstance(m, torch.nn.Dropout3d) for m in with_dropout.modules())
    assert not any(isinstance(m, torch.nn.Dropout3d) for m in VNet(filters=4, dropout=False).modules())
    with_dropout.train()
    a, b = with_dropout(x).logits, with_dropout(x).logits
    assert not torch.equal(a, b)  # stochastic in training mode
    with_dropout.eval()
    assert torch.equal(with_dropout(x).logits, with_dropout(x).logits)


@pytest.mark.parametrize("mode", ["deconv", "trilinear", "nearest"])
def test_up_sampling_modes(mode: str) -> None:
    out = VNet(filters=4, up_mode=mode)(torch.randn(1, 1, 16, 16, 32))
    assert out.logits.shape == (1, 2, 16, 16, 32)


def test_sizes_not_divisible_by_16_fail_clearly() -> None:
    with pytest.raises(ValueError, match=r"divisible by 16 .*offending: \[20\]"):
        VNet(filters=4)(torch.randn(1, 1, 16, 20, 16))
