"""The VNet of the semi-supervised LA lineage (UA-MT, SASSNet, DTC, MC-Net, VAS).

This is the 16-filter, 4-stage VNet with 3x3x3 convolutions, strided-convolution down-sampling,
transposed-convolution up-sampling and *additive* skip connections, exactly as the lineage's public
code builds it (9,448,866 parameters for 1 input channel and 2 classes with batch norm). It is not
MONAI's ``VNet`` (the original V-Net, 45.6 M parameters, 5x5x5 convolutions).

Spatial dimensions follow the array order of the data (for LA: x, y, z); every spatial size of the
input must be divisible by 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

NORMS = ("batchnorm", "groupnorm", "instancenorm", "none")


def make_norm(name: str, channels: int) -> nn.Module | None:
    """Normalisation layer by name, as the lineage's VNet builds it (``None`` for ``"none"``)."""
    if name == "batchnorm":
        return nn.BatchNorm3d(channels)
    if name == "groupnorm":
        # The lineage uses 16 groups whatever the channel count.
        return nn.GroupNorm(num_groups=16, num_channels=channels)
    if name == "instancenorm":
        return nn.InstanceNorm3d(channels)
    if name == "none":
        return None
    raise ValueError(f"unknown normalization {name!r}; choose one of {', '.join(NORMS)}")


def _conv_norm_relu(conv: nn.Module, norm: str, channels: int) -> list[nn.Module]:
    layer = make_norm(norm, channels)
    return [conv] + ([layer] if layer is not None else []) + [nn.ReLU(inplace=True)]


class ConvBlock(nn.Sequential):
    """``stages`` x (3x3x3 conv, norm, ReLU); the first conv maps ``c_in`` to ``c_out``."""

    def __init__(self, stages: int, c_in: int, c_out: int, norm: str) -> None:
        layers: list[nn.Module] = []
        for i in range(stages):
            conv = nn.Conv3d(c_in if i == 0 else c_out, c_out, kernel_size=3, padding=1)
            layers += _conv_norm_relu(conv, norm, c_out)
        super().__init__(*layers)


class DownBlock(nn.Sequential):
    """Stride-2 2x2x2 convolution, norm, ReLU: halves every spatial size."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        conv = nn.Conv3d(c_in, c_out, kernel_size=2, stride=2, padding=0)
        super().__init__(*_conv_norm_relu(conv, norm, c_out))


class UpBlock(nn.Sequential):
    """Up-sampling block, norm, ReLU: doubles every spatial size.

    ``mode="deconv"`` is the lineage's transposed convolution; ``"trilinear"`` and ``"nearest"``
    (interpolation followed by a 3x3x3 convolution) are MC-Net's alternative decoders.
    """

    def __init__(self, c_in: int, c_out: int, norm: str, mode: str = "deconv") -> None:
        if mode == "deconv":
            ops: list[nn.Module] = [nn.ConvTranspose3d(c_in, c_out, kernel_size=2, stride=2)]
        elif mode in ("trilinear", "nearest"):
            # MC-Net's Upsampling_function (networks/VNet.py) interpolates with align_corners=True.
            up = nn.Upsample(scale_factor=2, mode=mode, align_corners=True if mode == "trilinear" else None)
            ops = [up, nn.Conv3d(c_in, c_out, kernel_size=3, padding=1)]
        else:
            raise ValueError(f"unknown up-sampling mode {mode!r}; choose deconv, trilinear or nearest")
        conv = ops.pop()
        super().__init__(*ops, *_conv_norm_relu(conv, norm, c_out))


@dataclass
class VNetOutput:
    """What a VNet forward pass returns.

    Attributes:
        logits: ``(B, num_classes, D, H, W)`` raw scores.
        encoder: the five encoder maps at strides 1, 2, 4, 8, 16 with ``f, 2f, 4f, 8f, 16f``
            channels (``f`` = base filters); the deepest one after dropout when it is active.
        decoder: the four decoder maps at strides 8, 4, 2, 1 (``8f, 4f, 2f, f`` channels), the
            last one being the input of the 1x1x1 output convolution.
    """

    logits: Tensor
    encoder: list[Tensor]
    decoder: list[Tensor]


class VNetEncoder(nn.Module):
    """The five-level encoder: ``(B, C_in, D, H, W)`` -> five maps at strides 1..16."""

    def __init__(self, in_channels: int, filters: int, norm: str, dropout: bool) -> None:
        super().__init__()
        f = filters
        self.block_one = ConvBlock(1, in_channels, f, norm)
        self.block_one_dw = DownBlock(f, 2 * f, norm)
        self.block_two = ConvBlock(2, 2 * f, 2 * f, norm)
        self.block_two_dw = DownBlock(2 * f, 4 * f, norm)
        self.block_three = ConvBlock(3, 4 * f, 4 * f, norm)
        self.block_three_dw = DownBlock(4 * f, 8 * f, norm)
        self.block_four = ConvBlock(3, 8 * f, 8 * f, norm)
        self.block_four_dw = DownBlock(8 * f, 16 * f, norm)
        self.block_five = ConvBlock(3, 16 * f, 16 * f, norm)
        self.dropout = nn.Dropout3d(p=0.5) if dropout else nn.Identity()

    def forward(self, x: Tensor) -> list[Tensor]:
        x1 = self.block_one(x)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        x5 = self.dropout(self.block_five(self.block_four_dw(x4)))
        return [x1, x2, x3, x4, x5]


class VNetDecoder(nn.Module):
    """Decoder with additive skips: five encoder maps -> ``(B, num_classes, D, H, W)`` logits."""

    def __init__(self, num_classes: int, filters: int, norm: str, dropout: bool, up_mode: str = "deconv") -> None:
        super().__init__()
        f = filters
        self.block_five_up = UpBlock(16 * f, 8 * f, norm, up_mode)
        self.block_six = ConvBlock(3, 8 * f, 8 * f, norm)
        self.block_six_up = UpBlock(8 * f, 4 * f, norm, up_mode)
        self.block_seven = ConvBlock(3, 4 * f, 4 * f, norm)
        self.block_seven_up = UpBlock(4 * f, 2 * f, norm, up_mode)
        self.block_eight = ConvBlock(2, 2 * f, 2 * f, norm)
        self.block_eight_up = UpBlock(2 * f, f, norm, up_mode)
        self.block_nine = ConvBlock(1, f, f, norm)
        self.dropout = nn.Dropout3d(p=0.5) if dropout else nn.Identity()
        self.out_conv = nn.Conv3d(f, num_classes, kernel_size=1, padding=0)

    def forward(self, enc: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        x1, x2, x3, x4, x5 = enc
        x6 = self.block_six(self.block_five_up(x5) + x4)
        x7 = self.block_seven(self.block_six_up(x6) + x3)
        x8 = self.block_eight(self.block_seven_up(x7) + x2)
        x9 = self.dropout(self.block_nine(self.block_eight_up(x8) + x1))
        return self.out_conv(x9), [x6, x7, x8, x9]


class VNet(nn.Module):
    """The lineage's VNet: ``(B, C_in, D, H, W)`` -> :class:`VNetOutput`.

    Args:
        in_channels: image channels (1 for LA MRI and CT).
        num_classes: output channels (2 for LA: background and atrium).
        filters: base filter count ``f`` (16 in the lineage).
        norm: ``batchnorm`` (default), ``groupnorm``, ``instancenorm`` or ``none``.
        dropout: Dropout3d(p=0.5) after the bottleneck and before the output convolution, as
            the lineage's ``has_dropout=True`` (active in ``train()`` mode only).
        up_mode: decoder up-sampling, ``deconv`` (lineage) or MC-Net's ``trilinear``/``nearest``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        filters: int = 16,
        norm: str = "batchnorm",
        dropout: bool = True,
        up_mode: str = "deconv",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = VNetEncoder(in_channels, filters, norm, dropout)
        self.decoder = VNetDecoder(num_classes, filters, norm, dropout, up_mode)

    @property
    def encoder_channels(self) -> list[int]:
        """Channels of the five encoder maps (``f, 2f, 4f, 8f, 16f``)."""
        return [block[0].out_channels for block in self._encoder_blocks()]

    def _encoder_blocks(self) -> list[nn.Sequential]:
        e = self.encoder
        return [e.block_one, e.block_two, e.block_three, e.block_four, e.block_five]

    def forward(self, x: Tensor) -> VNetOutput:
        check_divisible(x.shape[2:])
        enc = self.encoder(x)
        logits, dec = self.decoder(enc)
        return VNetOutput(logits=logits, encoder=enc, decoder=dec)


def check_divisible(spatial: torch.Size | tuple[int, ...], factor: int = 16) -> None:
    """Raise a clear error when a spatial size cannot pass four stride-2 stages."""
    bad = [int(s) for s in spatial if int(s) % factor]
    if bad:
        raise ValueError(
            f"VNet input spatial size {tuple(int(s) for s in spatial)} must be divisible by {factor} "
            f"in every dimension (offending: {bad}); choose a patch size that is"
        )


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
