"""Per-frame (spatial) loss terms of the distillation: metric log-L1, MiDaS SSI, SILog, multi-scale gradients.

All terms take batched videos ``(B, N, H, W)`` and treat each of the ``B * N`` frames alike, so they work for
single-frame batches (``N == 1``) too. They return 0-dim fp32 tensors computed in an fp32 island.

References: MiDaS (Ranftl et al., "Towards Robust Monocular Depth Estimation", TPAMI 2020) for the
scale-and-shift-invariant loss and the multi-scale gradient matching term; Eigen et al. (NeurIPS 2014) for
SILog.
"""

from __future__ import annotations

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
    if scales < 1:
        raise ValueError(f"gradient loss needs at least one scale, got {scales}")
    with fp32_island(pred.device):
        frames = "b n h w -> (b n) h w"
        mask = rearrange(valid, frames)
        residual = rearrange(masked_log(pred, valid) - masked_log(teacher, valid), frames)
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
