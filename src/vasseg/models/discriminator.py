"""SASSNet's image-level discriminator on (signed distance map, image) pairs.

As ``FC3DDiscriminator`` in SASSNet ``code/networks/discriminator.py``: the map and the image each
go through a 4x4x4 stride-2 convolution to ``ndf`` channels; the two are added, then LeakyReLU(0.2)
and Dropout3d(0.5); three more 4x4x4 stride-2 convolutions (``2ndf, 4ndf, 8ndf``), with
LeakyReLU and dropout after the first two and LeakyReLU after the last; average pooling; a linear
layer to 2 logits (0: unlabeled / "fake", 1: labeled / "real").

Their average pool is ``AvgPool3d((7, 7, 5))``, the whole map for a 112x112x80 patch (stride 16);
here it is a global average pool, identical there and valid for any patch (e.g. the CPU scale's
48x48x32).
"""

from __future__ import annotations

from torch import Tensor, nn


def _down(c_in: int, c_out: int) -> nn.Conv3d:
    return nn.Conv3d(c_in, c_out, kernel_size=4, stride=2, padding=1)


class SDMDiscriminator(nn.Module):
    """``(sdm (B, C_map, X, Y, Z), image (B, C_img, X, Y, Z))`` -> logits ``(B, 2)``.

    Args:
        map_channels: channels of the distance map (1 for the binary lineage).
        image_channels: channels of the image (1 for LA MRI).
        ndf: base width (64 in SASSNet, independent of the VNet's filters).
    """

    def __init__(self, map_channels: int = 1, image_channels: int = 1, ndf: int = 64) -> None:
        super().__init__()
        self.map_conv = _down(map_channels, ndf)
        self.image_conv = _down(image_channels, ndf)
        self.conv2 = _down(ndf, 2 * ndf)
        self.conv3 = _down(2 * ndf, 4 * ndf)
        self.conv4 = _down(4 * ndf, 8 * ndf)
        self.act = nn.LeakyReLU(negative_slope=0.2)
        self.dropout = nn.Dropout3d(p=0.5)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.classifier = nn.Linear(8 * ndf, 2)

    def forward(self, sdm: Tensor, image: Tensor) -> Tensor:
        x = self.dropout(self.act(self.map_conv(sdm) + self.image_conv(image)))
        x = self.dropout(self.act(self.conv2(x)))
        x = self.dropout(self.act(self.conv3(x)))
        x = self.act(self.conv4(x))
        return self.classifier(self.pool(x).flatten(1))
