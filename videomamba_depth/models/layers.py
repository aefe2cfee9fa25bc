"""Small convolutional building blocks shared by the student's encoder and decoder.

Only per-sample normalisation (GroupNorm) is used anywhere in the student: BatchNorm in train mode would mix
the frames of a batch, so a clip run at once and the same frames run one by one (``step``) would give
different features, and streaming batch sizes differ from training ones.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

# GroupNorm groups (fewer when the channel count is not a multiple): 8 groups of >= 4 channels keep
# per-group statistics stable at the narrow widths of the CPU-sized default model.
GROUPS = 8


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with ``gcd(GROUPS, channels)`` groups (statistics per frame, never across the batch)."""
    return nn.GroupNorm(math.gcd(GROUPS, channels), channels)


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1: ``(.., H, W)`` -> ``(.., ceil(H / stride), ceil(W / stride))``."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1)


class ResBlock(nn.Module):
    """Pre-activation residual unit: ``x + conv(act(norm(conv(act(norm(x))))))``, 3x3 convs, same width.

    Serves as the encoder's stage block and as the decoder's residual conv unit (DPT's RCU, with GroupNorm
    added: the student trains from scratch, where DPT fine-tunes a pretrained backbone).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            group_norm(channels),
            nn.GELU(),
            conv3x3(channels, channels),
            group_norm(channels),
            nn.GELU(),
            conv3x3(channels, channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> same shape."""
        return x + self.body(x)
