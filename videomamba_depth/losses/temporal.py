"""Temporal loss terms: temporal gradient matching (Video Depth Anything), consistency along the optical flow
and smoothing of the student state.

All work on consecutive frame pairs ``(t, t+1)`` of a ``(B, N, ...)`` clip and return exactly 0 for
single-frame clips (``N == 1``), which the training loop uses for its image-only batches.

Reference: Chen et al., "Video Depth Anything", CVPR 2025, temporal gradient matching loss (``loss/loss.py``
in github.com/DepthAnything/Video-Depth-Anything).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from videomamba_depth.losses.common import fp32_island, masked_log, masked_mean


def temporal_gradient_matching(
    pred: Tensor,
    teacher: Tensor,
    valid: Tensor,
    *,
    jump_threshold: float = 0.05,
    pair_mask: Tensor | None = None,
) -> Tensor:
    """Temporal gradient matching in log depth: the student changes over time as the teacher does.

    With ``D_t = log d_{t+1} - log d_t`` at the same pixel, the loss is the mean of
    ``|D_t(pred) - D_t(teacher)|`` over pixel pairs that are valid in both frames, where the teacher's
    own change is small, ``|D_t(teacher)| <= jump_threshold`` (larger changes are the teacher flickering or an
    edge sweeping past the pixel: not a change the student should copy), and where ``pair_mask`` holds.

    Why log depth (VDA works on its relative disparity): the student is metric; a log difference is a
    relative change, so one threshold fits near and far pixels, and the loss is invariant to a global scale of
    ``pred`` and to any per-pixel factor of ``pred`` that is constant in time (``pred = c(x) * teacher``
    gives 0). It is not invariant to an additive depth offset.

    Args:
        pred: ``(B, N, H, W)`` predicted depth, metres, > 0.
        teacher: ``(B, N, H, W)`` teacher depth, metres.
        valid: ``(B, N, H, W)`` bool, teacher validity.
        jump_threshold: largest teacher change ``|log d_{t+1} - log d_t|`` that is still matched (> 0).
        pair_mask: ``(B, N-1, H, W)`` bool for pair ``(t, t+1)`` (e.g. forward-backward flow consistency), or
            None.

    Returns:
        0-dim fp32 tensor in log units; 0 when ``N == 1`` or no pair pixel is kept.
    """
    if pred.shape[1] < 2:
        return pred.new_zeros((), dtype=torch.float32)
    with fp32_island(pred.device):
        log_pred = masked_log(pred, valid)
        log_teacher = masked_log(teacher, valid)
        d_pred = log_pred[:, 1:] - log_pred[:, :-1]  # (B, N-1, H, W)
        d_teacher = log_teacher[:, 1:] - log_teacher[:, :-1]
        keep = valid[:, 1:] & valid[:, :-1] & (d_teacher.abs() <= jump_threshold)
        if pair_mask is not None:
            keep = keep & pair_mask
        return masked_mean((d_pred - d_teacher).abs(), keep.float())


def warped_consistency(pred: Tensor, valid: Tensor, flow: Tensor, mask: Tensor) -> Tensor:
    """Steadiness along the optical flow: a static surface keeps its depth from one frame to the next.

    The mean of ``|log d_{t+1}(p + f_t(p)) - log d_t(p)|`` over the pixels ``p`` of ``mask``, with ``f_t`` the
    forward flow of pair ``(t, t+1)`` and ``d_{t+1}`` read bilinearly; pixels that are not valid, and those
    whose target falls outside the frame or next to an invalid pixel of frame t+1 (padding), are dropped.
    Unlike :func:`temporal_gradient_matching` it does not copy the teacher's changes, so a flickering teacher
    does not teach flicker; the per-frame terms keep the depth itself. It ignores the camera's own motion
    along the ray, which changes a static point's depth by ``v_z / (fps d)`` per frame (about 0.5% for
    0.3 m/s at 2 m and 24 fps, against a few percent of teacher flicker).

    Args:
        pred: ``(B, N, H, W)`` predicted depth, metres, > 0.
        valid: ``(B, N, H, W)`` bool, where the depth counts (teacher validity: the image, not padding).
        flow: ``(B, N-1, H, W, 2)`` forward flow (du, dv) of pair ``(t, t+1)``, pixels.
        mask: ``(B, N-1, H, W)`` bool, pixels of frame t to use (e.g. static and flow-consistent).

    Returns:
        0-dim fp32 tensor in log units; 0 when ``N == 1`` or no pixel is kept.
    """
    if pred.shape[1] < 2:
        return pred.new_zeros((), dtype=torch.float32)
    B, N, H, W = pred.shape
    if flow.shape != (B, N - 1, H, W, 2) or mask.shape != (B, N - 1, H, W) or valid.shape != pred.shape:
        raise ValueError(f"flow {tuple(flow.shape)}, mask {tuple(mask.shape)} and valid {tuple(valid.shape)} "
                         f"do not match depth {tuple(pred.shape)}: need (B, N-1, H, W, 2), (B, N-1, H, W) "
                         "and (B, N, H, W)")
    with fp32_island(pred.device):
        # 0 on invalid pixels, which are never read: kept targets have all four neighbours valid.
        log_pred = masked_log(pred, valid)
        v, u = torch.meshgrid(torch.arange(H, device=pred.device, dtype=torch.float32),
                              torch.arange(W, device=pred.device, dtype=torch.float32), indexing="ij")
        target_u, target_v = u + flow[..., 0].float(), v + flow[..., 1].float()
        inside = (target_u >= 0) & (target_u <= W - 1) & (target_v >= 0) & (target_v <= H - 1)
        # grid_sample's align_corners=True maps -1 / +1 to the centres of the first / last pixels.
        grid = torch.stack([2 * target_u / max(W - 1, 1) - 1, 2 * target_v / max(H - 1, 1) - 1], dim=-1)
        # Frame t+1's log depth and validity read at the targets, as two channels of one sample.
        next_frame = torch.stack([log_pred[:, 1:], valid[:, 1:].float()], dim=2)
        sampled = F.grid_sample(rearrange(next_frame, "b p c h w -> (b p) c h w"),
                                rearrange(grid, "b p h w c -> (b p) h w c"), mode="bilinear",
                                padding_mode="border", align_corners=True)
        following, next_valid = rearrange(sampled, "(b p) c h w -> c b p h w", b=B)
        # All four pixels around the target valid (bilinear weights sum to 1): never read padding.
        keep = (mask & valid[:, :-1] & inside & (next_valid > 1 - 1e-4)).float()
        return masked_mean((following - log_pred[:, :-1]).abs(), keep)


def static_weights(static: Tensor | None, size: tuple[int, int], moving_weight: float) -> Tensor | None:
    """Per-location weights of a state map of spatial ``size``: 1 if static, ``moving_weight`` if moving.

    Args:
        static: ``(B, N-1, H, W)`` bool, pixel of frame t static between t and t+1, or None.
        size: ``(h, w)`` of the state map (coarser than the image).
        moving_weight: weight of a fully moving location, in [0, 1].

    Returns:
        ``(B, N-1, h, w)`` fp32 ``f + moving_weight * (1 - f)`` where ``f`` is the area-pooled fraction of
        static pixels in each location's cell (``adaptive_avg_pool2d``), or None when ``static`` is None.
    """
    if static is None:
        return None
    pairs = static.shape[1]
    fraction = F.adaptive_avg_pool2d(rearrange(static.float(), "b p h w -> (b p) 1 h w"), size)
    fraction = rearrange(fraction, "(b p) 1 h w -> b p h w", p=pairs)
    return fraction + moving_weight * (1.0 - fraction)


def state_smoothing(
    states: Mapping[str, Tensor], static: Tensor | None = None, *, moving_weight: float = 0.1
) -> Tensor:
    """Smoothness of the student's per-frame state summaries: ``mean w ||s_{t+1} - s_t||^2 / C``.

    For each temporal scale ``k`` the squared change of its state map between consecutive frames is averaged
    over channels and weighted per location by :func:`static_weights` (static cells 1, moving cells
    ``moving_weight``: a moving object should be free to change the state). The result per scale is the plain
    mean over batch, pairs and locations (not normalised by the weights, so moving content really counts
    less), and the loss is the mean over scales.

    Args:
        states: name -> ``(B, N, C, h, w)`` state summaries of each frame (any spatial size, coarser than the
            image); every entry must have the same ``B`` and ``N``.
        static: ``(B, N-1, H, W)`` bool static masks at image resolution, or None (all weights 1).
        moving_weight: weight in [0, 1] of moving locations (0 switches smoothing off there).

    Returns:
        0-dim fp32 tensor (state units squared); 0 when ``N == 1`` or ``states`` is empty.
    """
    if not 0.0 <= moving_weight <= 1.0:
        raise ValueError(f"state smoothing moving_weight must be in [0, 1], got {moving_weight}")
    per_scale = []
    for name, s in states.items():
        if s.ndim != 5:
            raise ValueError(f"state '{name}' must be (B, N, C, h, w), got shape {tuple(s.shape)}")
        if static is not None and static.shape[:2] != (s.shape[0], s.shape[1] - 1):
            raise ValueError(
                f"static masks {tuple(static.shape)} do not match state '{name}' {tuple(s.shape)}: "
                "need (B, N-1, H, W)"
            )
        if s.shape[1] < 2:
            continue
        with fp32_island(s.device):
            s = s.float()
            change = (s[:, 1:] - s[:, :-1]).square().mean(dim=2)  # (B, N-1, h, w)
            weights = static_weights(static, (s.shape[-2], s.shape[-1]), moving_weight)
            per_scale.append(change.mean() if weights is None else (weights * change).mean())
    if not per_scale:
        device = next(iter(states.values())).device if states else None
        return torch.zeros((), dtype=torch.float32, device=device)
    return torch.stack(per_scale).mean()
