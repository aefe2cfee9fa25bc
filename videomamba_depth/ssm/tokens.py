"""Feature maps <-> temporal tokens, and the per-scale wrapper that runs the temporal SSM on feature maps.

A feature map sequence ``(B, N, C, H, W)`` becomes ``B * H * W`` independent token sequences of ``N`` frames.
Token order is ``(b h w)``: the tokens of batch element ``b`` are the contiguous range
``[b * H * W, (b + 1) * H * W)`` (``batch_token_mask`` builds per-token masks from per-video ones).
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from videomamba_depth.ssm.block import TemporalMambaScale
from videomamba_depth.ssm.state import ScaleState


def to_temporal_tokens(x: Tensor) -> Tensor:
    """``(B, N, C, H, W)`` -> ``(B*H*W, N, C)``: one token sequence along time per spatial position."""
    return rearrange(x, "b n c h w -> (b h w) n c")


def from_temporal_tokens(tokens: Tensor, batch: int, height: int, width: int) -> Tensor:
    """``(B*H*W, N, C)`` -> ``(B, N, C, H, W)``; exact inverse of ``to_temporal_tokens``."""
    return rearrange(tokens, "(b h w) n c -> b n c h w", b=batch, h=height, w=width)


def batch_token_mask(batch_mask: Tensor, height: int, width: int) -> Tensor:
    """Per-video mask ``(B,)`` -> per-token mask ``(B*H*W,)`` in the token order of ``to_temporal_tokens``."""
    return repeat(batch_mask, "b -> (b h w)", h=height, w=width)


class SpatialPreMix(nn.Module):
    """Depthwise 3x3 convolution per frame with a residual, applied before tokenising.

    The temporal SSM mixes each spatial position with its own past only; content that moves between
    positions from frame to frame needs its neighbours' features in the token. This is per frame (no
    leakage along time), so streaming is unaffected. Zero-initialised conv: a fresh module is exactly the
    identity, and the conv weights still receive gradients (they are the branch's last operation).
    """

    def __init__(self, dim: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, device=device, dtype=dtype)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, C, H, W)`` -> same shape."""
        frames = rearrange(x, "b n c h w -> (b n) c h w")
        return x + rearrange(self.conv(frames), "(b n) c h w -> b n c h w", b=x.shape[0])


class TemporalFeatureMixer(nn.Module):
    """One feature scale's temporal path: ``SpatialPreMix`` -> tokens -> ``TemporalMambaScale`` -> maps.

    A fresh mixer is exactly the identity. The state is the ``ScaleState`` of ``temporal`` over
    ``B * H * W`` tokens (see the module docstring for the token order).

    Args:
        temporal: the temporal SSM stack; its ``dim`` is the feature channels C.
    """

    def __init__(self, temporal: TemporalMambaScale) -> None:
        super().__init__()
        weight = next(temporal.parameters())
        self.premix = SpatialPreMix(temporal.dim, device=weight.device, dtype=weight.dtype)
        self.temporal = temporal

    @property
    def backend(self) -> str:
        return self.temporal.backend

    def init_state(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> ScaleState:
        """Zero state for ``batch`` videos of ``height x width`` feature maps."""
        return self.temporal.init_state(batch * height * width, device, dtype)

    def forward(self, x: Tensor, state: ScaleState | None = None) -> tuple[Tensor, ScaleState]:
        """Feature maps ``(B, N, C, H, W)`` -> same shape, and the state after the last frame."""
        batch, _, _, height, width = x.shape
        y, state = self.temporal(to_temporal_tokens(self.premix(x)), state)
        return from_temporal_tokens(y, batch, height, width), state

    def step(self, x: Tensor, state: ScaleState | None = None) -> tuple[Tensor, ScaleState]:
        """One frame of feature maps ``(B, C, H, W)`` -> same shape, and the new state."""
        batch, _, height, width = x.shape
        tokens = to_temporal_tokens(self.premix(x[:, None]))[:, 0]
        y, state = self.temporal.step(tokens, state)
        return from_temporal_tokens(y[:, None], batch, height, width)[:, 0], state
