"""VNet variants with extra heads or decoders, for the SASSNet / DTC / MC-Net baselines.

* :class:`SDMVNet`: the lineage's VNet plus a second 1x1x1 output convolution with ``tanh`` that
  regresses the signed distance map (SASSNet and DTC ``networks/vnet_sdf.py``: both heads read
  the same last decoder map, after its dropout).
* :class:`MultiDecoderVNet`: one VNet encoder shared by several decoders that differ only in
  their up-sampling (MC-Net ``networks/VNet.py``: ``MCNet3d_v1`` = transposed convolution +
  trilinear, ``MCNet3d_v2`` adds nearest). :meth:`MultiDecoderVNet.branch` gives the
  encoder + one decoder as a plain VNet-like module (MC-Net tests through the first decoder).

Spatial sizes must be divisible by 16, as for :class:`~vasseg.models.vnet.VNet`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vasseg.models.vnet import VNet, VNetDecoder, VNetEncoder, VNetOutput, check_divisible


@dataclass
class SDMOutput(VNetOutput):
    """:class:`VNetOutput` plus ``sdm``: ``(B, C, X, Y, Z)`` tanh-bounded signed distances."""

    sdm: Tensor


class SDMVNet(nn.Module):
    """VNet with a segmentation head and a signed-distance head on the same decoder features.

    Args:
        in_channels, filters, norm, dropout: as :class:`~vasseg.models.vnet.VNet`.
        num_classes: channels of both heads (1 for the lineage's binary sigmoid head).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 1, filters: int = 16,
                 norm: str = "batchnorm", dropout: bool = True) -> None:
        super().__init__()
        self.vnet = VNet(in_channels, num_classes, filters, norm, dropout)
        self.sdm_head = nn.Conv3d(filters, num_classes, kernel_size=1, padding=0)

    def forward(self, x: Tensor) -> SDMOutput:
        out = self.vnet(x)
        sdm = torch.tanh(self.sdm_head(out.decoder[-1]))
        return SDMOutput(logits=out.logits, encoder=out.encoder, decoder=out.decoder, sdm=sdm)


@dataclass
class MultiDecoderOutput(VNetOutput):
    """:class:`VNetOutput` of the first decoder plus every decoder's logits.

    ``branch_logits``: one ``(B, num_classes, X, Y, Z)`` tensor per decoder, the first one being
    ``logits``.
    """

    branch_logits: list[Tensor]


def _align_trilinear_corners(decoder: nn.Module) -> None:
    """MC-Net up-samples with ``align_corners=True`` (``VNet.py`` ``Upsampling_function``)."""
    for module in decoder.modules():
        if isinstance(module, nn.Upsample) and module.mode == "trilinear":
            module.align_corners = True


class DecoderBranch(nn.Module):
    """The shared encoder and one decoder of a :class:`MultiDecoderVNet`, as a VNet.

    Holds references only (it is not registered in the parent, so no parameter is counted or
    saved twice); its forward returns a :class:`VNetOutput`.
    """

    def __init__(self, encoder: VNetEncoder, decoder: VNetDecoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, x: Tensor) -> VNetOutput:
        check_divisible(x.shape[2:])
        enc = self.encoder(x)
        logits, dec = self.decoder(enc)
        return VNetOutput(logits=logits, encoder=enc, decoder=dec)


class MultiDecoderVNet(nn.Module):
    """One VNet encoder, one decoder per entry of ``up_modes``.

    Args:
        up_modes: up-sampling of each decoder, e.g. ``("deconv", "trilinear")`` (MC-Net v1) or
            ``("deconv", "trilinear", "nearest")`` (v2). The first decoder is the test-time one.
        Others: as :class:`~vasseg.models.vnet.VNet`.
    """

    def __init__(self, up_modes: Sequence[str], in_channels: int = 1, num_classes: int = 2,
                 filters: int = 16, norm: str = "batchnorm", dropout: bool = True) -> None:
        super().__init__()
        if not up_modes:
            raise ValueError("MultiDecoderVNet needs at least one decoder")
        self.num_classes = num_classes
        self.encoder = VNetEncoder(in_channels, filters, norm, dropout)
        self.decoders = nn.ModuleList(
            VNetDecoder(num_classes, filters, norm, dropout, up_mode=mode) for mode in up_modes
        )
        for decoder in self.decoders:
            _align_trilinear_corners(decoder)

    def branch(self, index: int = 0) -> DecoderBranch:
        """Encoder + decoder ``index`` as a module returning :class:`VNetOutput`."""
        return DecoderBranch(self.encoder, self.decoders[index])

    def forward(self, x: Tensor) -> MultiDecoderOutput:
        check_divisible(x.shape[2:])
        enc = self.encoder(x)  # dropout on the bottleneck once, shared by all decoders
        outs = [decoder(enc) for decoder in self.decoders]
        logits, dec = outs[0]
        return MultiDecoderOutput(logits=logits, encoder=enc, decoder=dec,
                                  branch_logits=[o[0] for o in outs])
