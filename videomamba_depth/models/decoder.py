"""DPT-style decoder of the student: fuse the 4-scale pyramid coarse to fine, then a log-depth head.

After DPT (Ranftl et al., 2021, ``dpt/blocks.py``: ``FeatureFusionBlock`` and the head of ``DPTDepthModel``),
made cheaper for the CPU budget, where the stride-4 scale dominates the cost:

- each scale is first projected to its decoder width by a 1x1 conv (DPT: 3x3 at one common width); widths
  may grow towards coarse scales, where convolutions are cheap;
- a fusion block adds the upsampled coarser path to the projected skip and refines the sum with ONE
  residual conv unit (DPT refines the skip with a second one first: the encoder's residual stage already
  did that here, and it would double the decoder's stride-4 cost);
- the coarser path is projected to the finer width by a 1x1 conv BEFORE the bilinear upsampling. Both are
  linear, one over channels and one over space, and bilinear weights sum to 1, so the order does not change
  the result, only the cost (4x fewer pixels).

The output layer (``head_out``) is a variant (``HEADS``, chosen by ``ModelConfig.head``): ``dpt``
(:class:`LogDepthConv`, DPT's last 1x1 conv, the default) or ``zoe_bins`` (``bins.ZoeBinsHead``, ZoeDepth's
metric bins on the fused features). Both return canonical log depth at stride 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from videomamba_depth.models.bins import ZoeBinsHead
from videomamba_depth.models.layers import ResBlock, conv3x3, group_norm

if TYPE_CHECKING:
    from videomamba_depth.models.student import ModelConfig

# Builds the output layer: (head_width, bottleneck width, fused widths coarse to fine) -> module whose
# ``forward(last, bottleneck, pyramid)`` returns canonical log depth (``DepthDecoder.forward``).
HeadFactory = Callable[[int, int, Sequence[int]], nn.Module]


class FusionBlock(nn.Module):
    """``refine(skip + upsample(project(coarser)))`` (or ``refine(skip)`` at the coarsest scale).

    Args:
        width: channels of the skip and the output.
        coarser_width: channels of the coarser path, or None at the coarsest scale.
    """

    def __init__(self, width: int, coarser_width: int | None) -> None:
        super().__init__()
        self.project = None if coarser_width is None else nn.Conv2d(coarser_width, width, 1)
        self.refine = ResBlock(width)

    def forward(self, skip: Tensor, coarser: Tensor | None = None) -> Tensor:
        """``skip (F, C, h, w)``, ``coarser (F, C', h', w')`` or None -> ``(F, C, h, w)``."""
        x = skip
        if self.project is not None:
            if coarser is None:
                raise ValueError("this fusion block needs the coarser path")
            x = x + F.interpolate(
                self.project(coarser), size=skip.shape[-2:], mode="bilinear", align_corners=False
            )
        return self.refine(x)


class LogDepthConv(nn.Conv2d):
    """``head: dpt``: DPT's last layer, a 1x1 conv ``head_width -> 1`` giving the canonical log depth.

    Zero-initialised weight and bias ``init_log_depth``, so a fresh model predicts this constant canonical
    log depth and training starts at a plausible scale.
    """

    def __init__(self, head_width: int, init_log_depth: float) -> None:
        super().__init__(head_width, 1, 1)
        if not math.isfinite(init_log_depth):
            raise ValueError(f"init_log_depth must be finite, got {init_log_depth}")
        nn.init.zeros_(self.weight)
        nn.init.constant_(self.bias, init_log_depth)

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, head_width: int, bottleneck_width: int, pyramid_widths: Sequence[int]
    ) -> LogDepthConv:
        return cls(head_width, math.log(cfg.init_depth))

    def forward(self, last: Tensor, bottleneck: Tensor, pyramid: Sequence[Tensor]) -> Tensor:
        """``last (F, head_width, H2, W2)`` -> ``(F, 1, H2, W2)``, fp32; the DPT head reads only ``last``."""
        # fp32 island: the log depth is exponentiated, and bf16 (8 mantissa bits) would quantise it to
        # steps of ~0.4% x |log depth|, visible as banding and as flicker between frames.
        with torch.autocast(device_type=last.device.type, enabled=False):
            return F.conv2d(last.float(), self.weight.float(), self.bias.float())


# Output layers by ``ModelConfig.head``.
HEADS: dict[str, type[LogDepthConv] | type[ZoeBinsHead]] = {"dpt": LogDepthConv, "zoe_bins": ZoeBinsHead}


class DepthDecoder(nn.Module):
    """Scale features -> canonical log depth at half the finest scale's stride (stride 2).

    Args:
        channels: scale name -> encoder channels, finest first (the fusion order is the reverse).
        widths: decoder width per scale, finest first.
        head_width: channels of the head's stride-2 layer.
        head: builds the output layer ``head_out`` (``partial(HEADS[name].from_config, cfg)``), called last,
            so the layers before it draw the same random initial weights whatever the head.
    """

    def __init__(
        self, channels: Mapping[str, int], widths: Sequence[int], head_width: int, head: HeadFactory
    ) -> None:
        super().__init__()
        names = list(channels)
        if len(widths) != len(names):
            raise ValueError(f"{len(widths)} decoder widths for {len(names)} scales")
        self.names = names
        self.project = nn.ModuleDict(
            {name: nn.Conv2d(channels[name], w, 1) for name, w in zip(names, widths, strict=True)}
        )
        coarser = [*widths[1:], None]
        self.fuse = nn.ModuleDict(
            {name: FusionBlock(w, c) for name, w, c in zip(names, widths, coarser, strict=True)}
        )
        # Head as in DPT: conv at the finest fused scale, x2 upsampling, conv + activation, output layer.
        self.head_in = nn.Sequential(group_norm(widths[0]), nn.GELU(), conv3x3(widths[0], head_width))
        self.head_mid = nn.Sequential(nn.GELU(), conv3x3(head_width, head_width), nn.GELU())
        self.head_out = head(head_width, widths[-1], widths[::-1])

    def forward(self, features: Mapping[str, Tensor]) -> Tensor:
        """Scale name -> ``(F, C_s, h_s, w_s)`` -> canonical log depth ``(F, 1, 2 h_0, 2 w_0)``, fp32."""
        projected = {name: self.project[name](features[name]) for name in self.names}
        path, pyramid = None, []  # the fused features, coarse to fine
        for name in reversed(self.names):
            path = self.fuse[name](projected[name], path)
            pyramid.append(path)
        x = self.head_in(path)
        x = self.head_mid(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
        return self.head_out(x, projected[self.names[-1]], pyramid)
