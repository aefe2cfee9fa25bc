"""Temporal state-space core of the student: a Mamba-2 style block along time, streamable frame by frame.

Public API:

- ``TemporalMambaScale(dim, num_blocks, ...)``: ``forward(x (L, T, C), state) -> (y, state)``,
  ``step(x_t (L, C), state) -> (y_t, state)``, ``init_state(num_tokens)``, ``backend``.
- ``TemporalFeatureMixer(TemporalMambaScale(...))``: the same on feature maps ``(B, N, C, H, W)``, with
  ``SpatialPreMix`` before tokenising.
- ``BlockState`` / ``ScaleState``: immutable states with ``detach``, ``clone``, ``to``, ``select``, ``where``,
  ``reset``.
- ``to_temporal_tokens`` / ``from_temporal_tokens``: ``(B, N, C, H, W) <-> (B*H*W, N, C)``;
  ``batch_token_mask``: per-video mask -> per-token mask.
- ``ssd_scan`` (fast, chunked) / ``ssd_scan_ref`` (per-frame loop) / ``ssd_step`` / ``ssd_scan_cuda`` /
  ``ssd_scan_numba`` (fused CPU kernel, optional ``numba``).
"""

from videomamba_depth.ssm.block import (
    DEFAULT_CHUNK_SIZE,
    MambaBlock,
    MambaMixer,
    TemporalMambaScale,
    causal_conv,
)
from videomamba_depth.ssm.kernels import require_mamba_ssm, ssd_scan_cuda
from videomamba_depth.ssm.numba_scan import require_numba, ssd_scan_numba
from videomamba_depth.ssm.scan import ssd_scan, ssd_scan_ref, ssd_step
from videomamba_depth.ssm.state import BlockState, ScaleState
from videomamba_depth.ssm.tokens import (
    SpatialPreMix,
    TemporalFeatureMixer,
    batch_token_mask,
    from_temporal_tokens,
    to_temporal_tokens,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BlockState",
    "MambaBlock",
    "MambaMixer",
    "ScaleState",
    "SpatialPreMix",
    "TemporalFeatureMixer",
    "TemporalMambaScale",
    "batch_token_mask",
    "causal_conv",
    "from_temporal_tokens",
    "require_mamba_ssm",
    "require_numba",
    "ssd_scan",
    "ssd_scan_cuda",
    "ssd_scan_numba",
    "ssd_scan_ref",
    "ssd_step",
    "to_temporal_tokens",
]
