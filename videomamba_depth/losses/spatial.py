"""Per-frame (spatial) loss terms of the distillation: metric log-L1, MiDaS SSI, SILog, multi-scale gradients,
hierarchical depth normalisation and gradient preservation in normalised disparity.

All terms take batched videos ``(B, N, H, W)`` and treat each of the ``B * N`` frames alike, so they work for
single-frame batches (``N == 1``) too. They return 0-dim fp32 tensors computed in an fp32 island.

References: MiDaS (Ranftl et al., "Towards Robust Monocular Depth Estimation", TPAMI 2020) for the
scale-and-shift-invariant loss and the multi-scale gradient matching term; Eigen et al. (NeurIPS 2014) for
SILog; Zhang et al., "Hierarchical Normalization for Robust Monocular Depth Estimation" (NeurIPS 2022) and
He et al., "Distill Any Depth" (2025) for the hierarchical normalisation and the gradient-preserving term.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from videomamba_depth.losses.common import (
    EMPTY_DENOMINATOR,
    MIN_DEPTH,
    fp32_island,
    masked_log,
    masked_mean,
    masked_reciprocal,
    pixel_weights,
)

# The least-squares scale is set to 0 (aligned prediction = the target's mean) when the prediction's weighted
# variance within a frame is below this fraction of its squared mean: a constant prediction has no defined
# scale, and fp32 cannot resolve relative variations much below ~1e-4 anyway.
DEGENERATE_RELATIVE_VARIANCE = 1e-8

# SILog = sqrt(D + eps) - sqrt(eps): exactly 0 at D = 0 and a finite gradient there (sqrt has none at 0);
# the offset it adds elsewhere is below sqrt(eps) = 1e-6 log units.
SILOG_EPS = 1e-12

# Median/MAD normalisation: a group's spread (mean absolute deviation from its median) is floored at this
# fraction of its |median| before dividing, so a constant group (a flat wall filling one depth range)
# normalises to 0 instead of 0/0; fp32 resolves no relative variation much below that anyway.
DEGENERATE_RELATIVE_SPREAD = 1e-6

# Grouping of the hierarchical normalisation: depth_range = equal-count quantile ranges of the target's depth
# (HDN's depth domain), spatial = a regular grid of the frame (its spatial domain).
HdnMode = Literal["depth_range", "spatial"]


def metric_log_l1(pred: Tensor, teacher: Tensor, valid: Tensor, confidence: Tensor | None = None) -> Tensor:
    """Metric depth loss: weighted mean of ``|log pred - log teacher|`` over the teacher's valid pixels.

    Args:
        pred: ``(B, N, H, W)`` predicted depth, metres, > 0.
        teacher: ``(B, N, H, W)`` teacher depth, metres (anything where invalid).
        valid: ``(B, N, H, W)`` bool, teacher validity.
        confidence: ``(B, N, H, W)`` teacher confidence in [0, 1], or None for uniform weights.

    Returns:
        0-dim fp32 tensor: ``sum(w |log pred - log teacher|) / sum(w)`` with ``w = valid * confidence``,
        summed over the whole batch; 0 when no pixel is valid. In log units (~ relative error).
    """
    with fp32_island(pred.device):
        weights = pixel_weights(valid, confidence)
        residual = (masked_log(pred, valid) - masked_log(teacher, valid)).abs()
        return masked_mean(residual, weights)


def scale_shift_lstsq(x: Tensor, y: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row weighted least squares ``argmin_{s,t} sum_i w_i (s x_i + t - y_i)^2`` in closed form.

    Args:
        x, y: ``(F, P)`` fp32 values (anything where ``weights == 0``).
        weights: ``(F, P)`` non-negative fp32 weights.

    Returns:
        scale, shift: ``(F,)`` each. Differentiable. Rows whose ``x`` is (nearly) constant over the weighted
        pixels get scale 0 and shift ``mean(y)``; rows with no weight get (0, 0).
    """
    total = weights.sum(-1).clamp_min(EMPTY_DENOMINATOR)
    x = torch.where(weights > 0, x, 0.0)
    y = torch.where(weights > 0, y, 0.0)
    mean_x = (weights * x).sum(-1) / total
    mean_y = (weights * y).sum(-1) / total
    # Centred normal equations: far better conditioned in fp32 than det = a00 a11 - a01^2 of the raw sums.
    dx = x - mean_x[:, None]
    dy = y - mean_y[:, None]
    var = (weights * dx * dx).sum(-1)
    cov = (weights * dx * dy).sum(-1)
    ok = var > DEGENERATE_RELATIVE_VARIANCE * total * mean_x.square()
    scale = torch.where(ok, cov / torch.where(ok, var, 1.0), 0.0)
    shift = mean_y - scale * mean_x
    return scale, shift


def ssi_loss(
    pred: Tensor, teacher: Tensor, valid: Tensor, confidence: Tensor | None = None, *, trim: float = 0.2
) -> Tensor:
    """MiDaS scale-and-shift-invariant loss, in disparity, with per-frame least-squares alignment.

    Each frame's predicted disparity ``p = 1 / pred`` is aligned to the teacher's ``g = 1 / teacher`` by the
    (confidence-)weighted least-squares scale and shift (:func:`scale_shift_lstsq`), then the residual
    ``|s p + t - g|`` is divided by the frame's mean teacher disparity (so the loss does not depend on the
    scene's metric size) and averaged. With ``trim > 0`` the largest ``trim`` fraction of each frame's valid
    residuals is dropped first (MiDaS's trimmed MAE).

    Why disparity: the ambiguity of a relative-depth prediction is affine in disparity (MiDaS); in disparity
    the far field (sky, distant walls), where the teacher is least reliable, weighs little.

    The alignment is differentiable (gradients flow through ``s`` and ``t``, as in MiDaS). The result is
    invariant to any positive scale of ``pred`` and to any affine map of its disparity.

    Args:
        pred: ``(B, N, H, W)`` predicted depth, metres, > 0.
        teacher: ``(B, N, H, W)`` teacher depth, metres.
        valid: ``(B, N, H, W)`` bool, teacher validity.
        confidence: ``(B, N, H, W)`` in [0, 1] weighting both the fit and the mean, or None.
        trim: fraction in [0, 1) of the largest residuals dropped per frame.

    Returns:
        0-dim fp32 tensor (dimensionless), 0 when no pixel is valid.
    """
    if not 0.0 <= trim < 1.0:
        raise ValueError(f"ssi trim must be in [0, 1), got {trim}")
    with fp32_island(pred.device):
        frames = "b n h w -> (b n) (h w)"
        mask = rearrange(valid, frames)
        weights = rearrange(pixel_weights(valid, confidence), frames)
        p = rearrange(masked_reciprocal(pred, valid), frames)
        g = rearrange(masked_reciprocal(teacher, valid), frames)
        scale, shift = scale_shift_lstsq(p, g, weights)
        g_mean = masked_mean(g, mask.float(), dim=-1).clamp_min(EMPTY_DENOMINATOR)  # (F,) 1/m
        residual = (scale[:, None] * p + shift[:, None] - g).abs() / g_mean[:, None]
        if trim > 0:
            # Sort each frame's residuals (masked-out ones last); keep the smallest (1 - trim) of the valid.
            residual, order = torch.where(mask, residual, torch.inf).sort(dim=-1)
            weights = weights.gather(-1, order)
            # Kept count floor((1 - trim) * n) in float64 with a nudge, so e.g. 0.7 * 10 cannot floor to 6.
            keep = torch.floor((1.0 - trim) * mask.sum(-1, keepdim=True).double() + 1e-9)
            rank = torch.arange(residual.shape[-1], device=residual.device)
            weights = torch.where(rank < keep, weights, 0.0)
        return masked_mean(residual, weights)


def silog_loss(pred: Tensor, teacher: Tensor, valid: Tensor, *, lam: float = 0.85) -> Tensor:
    """Scale-invariant log loss (Eigen et al. 2014), per frame, averaged over frames with valid pixels.

    With ``g = log pred - log teacher`` over a frame's valid pixels,
    ``SILog = sqrt(mean(g^2) - lam * mean(g)^2)``; ``lam = 1`` makes it fully invariant to a global scale,
    ``lam = 0`` is the RMSE of log depth. (Computed as ``sqrt(D + eps) - sqrt(eps)`` so it is 0 and has a
    finite gradient at a perfect prediction.)

    Args:
        pred, teacher: ``(B, N, H, W)`` depth, metres; valid: ``(B, N, H, W)`` bool.
        lam: variance weight in [0, 1].

    Returns:
        0-dim fp32 tensor in log units.
    """
    with fp32_island(pred.device):
        frames = "b n h w -> (b n) (h w)"
        mask = rearrange(valid, frames).float()
        g = rearrange(masked_log(pred, valid) - masked_log(teacher, valid), frames)
        mean_sq, mean = masked_mean(g.square(), mask, dim=-1), masked_mean(g, mask, dim=-1)
        d = (mean_sq - lam * mean.square()).clamp_min(0.0)
        per_frame = torch.sqrt(d + SILOG_EPS) - SILOG_EPS**0.5
        has_pixels = (mask.sum(-1) > 0).float()
        return masked_mean(per_frame, has_pixels)


def multiscale_gradient_loss(pred: Tensor, teacher: Tensor, valid: Tensor, *, scales: int = 4) -> Tensor:
    """MiDaS-style multi-scale gradient matching on the log-depth residual ``r = log pred - log teacher``.

    At scale ``k`` the frames are subsampled with stride ``2^k`` (as in MiDaS) and the loss is the mean of
    ``|r(x+1, y) - r(x, y)|`` and ``|r(x, y+1) - r(x, y)|`` over neighbour pairs whose two pixels are both
    valid. The result is the average over the scales that have at least one valid pair. A global scale of
    ``pred`` cancels (r is then constant), so this term shapes edges and slopes without fighting the metric
    term.

    Args:
        pred, teacher: ``(B, N, H, W)`` depth, metres; valid: ``(B, N, H, W)`` bool.
        scales: number of scales (>= 1).

    Returns:
        0-dim fp32 tensor in log units per pixel step.
    """
    with fp32_island(pred.device):
        frames = "b n h w -> (b n) h w"
        residual = rearrange(masked_log(pred, valid) - masked_log(teacher, valid), frames)
        return _gradient_matching(residual, rearrange(valid, frames), scales)


def gradient_preservation_loss(pred: Tensor, target: Tensor, valid: Tensor, *, scales: int = 4) -> Tensor:
    """Gradient-preserving term (Distill Any Depth): depth gradients matched in normalised disparity.

    Each frame's disparities ``1 / pred`` and ``1 / target`` are normalised over its valid pixels to
    ``(x - median) / mean|x - median|`` (the first level of :func:`hdn_loss`), and their residual gets the
    multi-scale gradient matching of :func:`multiscale_gradient_loss`. So it is 0 whenever the prediction's
    disparity is a positive affine map of the target's, and it asks for the target's edges and slopes at the
    target's relative strength, whatever the prediction's metric scale.

    Args:
        pred, target: ``(B, N, H, W)`` depth, metres; valid: ``(B, N, H, W)`` bool.
        scales: number of scales (>= 1).

    Returns:
        0-dim fp32 tensor, normalised disparity units per pixel step.
    """
    with fp32_island(pred.device):
        height = pred.shape[-2]
        mask = rearrange(valid, "b n h w -> (b n) 1 (h w)")  # one group per frame: its valid pixels
        normalised = [
            normalize_groups(rearrange(masked_reciprocal(x, valid), "b n h w -> (b n) (h w)"), mask)
            for x in (pred, target)
        ]
        residual = rearrange(normalised[0] - normalised[1], "f 1 (h w) -> f h w", h=height)
        return _gradient_matching(residual, rearrange(valid, "b n h w -> (b n) h w"), scales)


def _gradient_matching(residual: Tensor, mask: Tensor, scales: int) -> Tensor:
    """MiDaS multi-scale gradient matching of ``residual`` ``(F, H, W)`` over pixel pairs valid in ``mask``
    ``(F, H, W)`` (see :func:`multiscale_gradient_loss`)."""
    if scales < 1:
        raise ValueError(f"gradient loss needs at least one scale, got {scales}")
    per_scale, used = [], []
    for k in range(scales):
        step = 2**k
        r, m = residual[:, ::step, ::step], mask[:, ::step, ::step]
        mx = (m[:, :, 1:] & m[:, :, :-1]).float()
        my = (m[:, 1:, :] & m[:, :-1, :]).float()
        gx = (r[:, :, 1:] - r[:, :, :-1]).abs()
        gy = (r[:, 1:, :] - r[:, :-1, :]).abs()
        pairs = mx.sum() + my.sum()
        per_scale.append(((gx * mx).sum() + (gy * my).sum()) / pairs.clamp_min(1.0))
        used.append((pairs > 0).float())
    return masked_mean(torch.stack(per_scale), torch.stack(used))


def normalize_groups(x: Tensor, member: Tensor) -> Tensor:
    """Median/MAD normalisation of ``x`` ``(F, P)`` within each group of pixels ``member`` ``(F, G, P)``.

    Returns ``(F, G, P)``: ``(x - median) / mean|x - median|`` over the group's pixels (the lower median for
    even counts, as ``torch.median``), 0 outside the group. Differentiable (through the sorted median and the
    mean deviation). The spread is floored at ``DEGENERATE_RELATIVE_SPREAD * |median|``.
    """
    count = member.sum(-1, keepdim=True)  # (F, G, 1)
    values = torch.where(member, x[:, None, :], torch.inf)  # the group's values sort first
    median = values.sort(dim=-1).values.gather(-1, ((count - 1).clamp_min(0) // 2))
    median = torch.where(count > 0, median, 0.0)  # empty groups: a finite placeholder, never used
    centred = x[:, None, :] - median
    spread = torch.where(member, centred.abs(), 0.0).sum(-1, keepdim=True) / count.clamp_min(1)
    spread = spread.clamp_min(DEGENERATE_RELATIVE_SPREAD * median.abs()).clamp_min(EMPTY_DENOMINATOR)
    return torch.where(member, centred / spread, 0.0)


def hierarchy_groups(
    target: Tensor, mask: Tensor, size: tuple[int, int], *, levels: int, mode: HdnMode
) -> Tensor:
    """The pixel groups of the hierarchical normalisation: level ``l = 1 .. levels`` splits each frame into
    ``2^(l-1)`` groups (``depth_range``: equal-count ranges of ``target`` sorted, i.e. its quantile ranges,
    ties broken by position) or ``2^(l-1) x 2^(l-1)`` grid cells (``spatial``). Level 1 is the whole frame.

    Args:
        target: ``(F, P)`` target values (their order is what counts; anything where ``mask`` is False).
        mask: ``(F, P)`` bool, the valid pixels; ``P = H * W`` in row-major order.
        size: ``(H, W)``.
        levels: number of levels (>= 1).
        mode: ``depth_range`` or ``spatial``.

    Returns:
        ``(F, G, P)`` bool membership of the valid pixels, ``G = 2^levels - 1`` (depth_range) or
        ``(4^levels - 1) / 3`` (spatial) groups, coarsest level first.
    """
    if levels < 1:
        raise ValueError(f"hierarchical normalisation needs at least one level, got {levels}")
    if mode == "depth_range":
        order = torch.where(mask, target, torch.inf).argsort(dim=-1, stable=True)
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=order.device)
                                               .expand_as(order))
        count = mask.sum(-1, keepdim=True).clamp_min(1)
        labels = [rank * 2**level // count for level in range(levels)]  # (F, P) group index at each level
    elif mode == "spatial":
        height, width = size
        y = torch.arange(height, device=mask.device)[:, None]
        x = torch.arange(width, device=mask.device)[None, :]
        labels = [
            rearrange((y * 2**level // height) * 2**level + x * 2**level // width, "h w -> 1 (h w)")
            for level in range(levels)
        ]
    else:
        raise ValueError(f"hierarchical normalisation mode must be depth_range or spatial, got {mode!r}")
    groups = []
    for level, label in enumerate(labels):
        cells = 2**level if mode == "depth_range" else 4**level
        index = torch.arange(cells, device=mask.device)[None, :, None]
        groups.append((label[:, None, :] == index) & mask[:, None, :])
    return torch.cat(groups, dim=1)


def hdn_loss(
    pred: Tensor, target: Tensor, valid: Tensor, *, levels: int = 3, mode: HdnMode = "depth_range"
) -> Tensor:
    """Hierarchical depth normalisation loss (HDN; Distill Any Depth's hybrid normalisation).

    Disparities ``1 / pred`` and ``1 / target`` are normalised to ``(x - median) / mean|x - median|`` within
    every group of :func:`hierarchy_groups` (by the target's depth ranges or a spatial grid, ``levels``
    levels, the groups of a level made from the target only), and the loss is the mean ``|N(pred) -
    N(target)|`` within each group, averaged over the groups (each non-empty group of every level and frame
    counts once). Level 1 alone is the global median/MAD normalisation of Depth Anything (V1) and MiDaS.

    Why disparity (as :func:`ssi_loss`): the ambiguity of relative depth is affine in disparity, and the far
    field, where teachers are least reliable, weighs little. A prediction whose disparity is a positive affine
    map of the target's within a group scores 0 in that group; one affine over the whole frame scores 0, and
    the loss is invariant to a global positive scale of ``pred``. Finer levels re-normalise locally, so a
    few noisy pixels in one depth range do not shift the targets of every other range.

    Args:
        pred, target: ``(B, N, H, W)`` depth, metres; valid: ``(B, N, H, W)`` bool.
        levels: hierarchy levels (>= 1); ``depth_range`` has ``2^levels - 1`` groups per frame, ``spatial``
            ``(4^levels - 1) / 3``, each a mask over the frame's pixels in memory.
        mode: ``depth_range`` or ``spatial``.

    Returns:
        0-dim fp32 tensor (normalised disparity units), 0 when no pixel is valid.
    """
    with fp32_island(pred.device):
        frames = "b n h w -> (b n) (h w)"
        mask = rearrange(valid, frames)
        p = rearrange(masked_reciprocal(pred, valid), frames)
        t = rearrange(masked_reciprocal(target, valid), frames)
        member = hierarchy_groups(t, mask, tuple(pred.shape[-2:]), levels=levels, mode=mode)
        residual = (normalize_groups(p, member) - normalize_groups(t, member)).abs()
        per_group = masked_mean(residual, member.float(), dim=-1)  # (F, G)
        return masked_mean(per_group, (member.sum(-1) > 0).float())


def pair_ranking_loss(pred: Tensor, pairs: Tensor, pairs_valid: Tensor) -> Tensor:
    """Logistic ranking loss on annotated relative-depth point pairs (DA2K-style annotations).

    For a pair with ``closer = +1`` (point 1 is the closer one) the loss is ``log(1 + exp(z1 - z2))`` with
    ``z = log pred`` at the two points (nearest pixel), small when ``z1 < z2``; ``closer = -1`` swaps the
    roles. This is the ranking loss of Chen et al., "Single-Image Depth Perception in the Wild" (NeurIPS
    2016), on log depth, so it is invariant to a global scale of ``pred``.

    Args:
        pred: ``(F, H, W)`` predicted depth, metres, > 0.
        pairs: ``(F, P, 5)`` ``(u1, v1, u2, v2, closer)`` in pixels of ``pred`` (centres at integers).
        pairs_valid: ``(F, P)`` bool, the real pairs (batches pad with zeros).

    Returns:
        0-dim fp32 tensor, the mean over valid pairs; 0 when there are none.
    """
    with fp32_island(pred.device):
        frames, height, width = pred.shape
        log_depth = pred.float().clamp_min(MIN_DEPTH).log().reshape(frames, -1)
        u = pairs[..., [0, 2]].round().long().clamp(0, width - 1)  # (F, P, 2)
        v = pairs[..., [1, 3]].round().long().clamp(0, height - 1)
        z = log_depth.gather(1, (v * width + u).reshape(frames, -1)).reshape(u.shape)
        loss = torch.nn.functional.softplus(pairs[..., 4].float() * (z[..., 0] - z[..., 1]))
        return masked_mean(loss, pairs_valid.float())
