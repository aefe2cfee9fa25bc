"""Temporal consistency metrics of a depth video (numpy, float64): TAE, flow-warped error, static jitter,
scale drift and the histogram of frame-to-frame changes.

Each pairwise metric returns a :class:`TemporalCurve`: the value per consecutive frame pair ``(t, t+1)`` and
its mean over the pairs that have pixels to compare (pairs without any are NaN in the curve and skipped).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from videomamba_depth.camera import (
    backproject,
    per_frame_K,
    pixel_grid,
    project,
    relative_pose,
    transform_points,
)


class TemporalCurve(NamedTuple):
    """Values ``per_pair`` ``(T-1,)`` of pairs ``(t, t+1)`` (NaN: nothing to compare) and their ``mean``."""

    mean: float
    per_pair: np.ndarray


class ScaleDrift(NamedTuple):
    """``scale`` ``(T,)``: per-frame least-squares scale of pred to gt; ``window_std`` ``(T,)``: std of
    ``scale[0..t]`` (growing window from the first frame)."""

    scale: np.ndarray
    window_std: np.ndarray


class ChangeHistogram(NamedTuple):
    """Histogram of relative changes ``d_{t+1} / d_t - 1``: ``edges`` ``(bins+1,)``, ``counts`` ``(bins,)``.

    ``rows()`` gives the plot data.
    """

    edges: np.ndarray
    counts: np.ndarray

    def rows(self) -> list[dict[str, float]]:
        """One ``{"relative_change": bin centre, "fraction": share of pixels}`` per bin (a DVC plot file)."""
        total = max(int(self.counts.sum()), 1)
        centres = 0.5 * (self.edges[1:] + self.edges[:-1])
        return [
            {"relative_change": float(c), "fraction": float(n) / total}
            for c, n in zip(centres, self.counts, strict=True)
        ]


def _curve(per_pair: np.ndarray) -> TemporalCurve:
    per_pair = np.asarray(per_pair, dtype=np.float64)
    finite = np.isfinite(per_pair)
    return TemporalCurve(float(per_pair[finite].mean()) if finite.any() else float("nan"), per_pair)


def _usable(depth: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``(T, H, W)`` bool: finite, positive depth inside ``valid``."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(depth) & (depth > 0)
    return ok if valid is None else ok & np.asarray(valid, dtype=bool)


def pose_c2w_from_relative(rel_pose: np.ndarray) -> np.ndarray:
    """Chain relative poses ``T_{t+1<-t}`` ``(T-1, 4, 4)`` (the flow stage's ``rel_pose``) into
    camera-to-world poses ``(T, 4, 4)``, frame 0 being the world: ``pose_{t+1} = pose_t @ inv(T_{t+1<-t})``.
    """
    rel_pose = np.asarray(rel_pose, dtype=np.float64)
    poses = [np.eye(4)]
    for rel in rel_pose:
        poses.append(poses[-1] @ np.linalg.inv(rel))
    return np.stack(poses)


def splat_depth(
    src: np.ndarray, src_ok: np.ndarray, K_src: np.ndarray, T_dst_src: np.ndarray, K_dst: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """Depth ``src`` as the destination camera sees it: a z-buffered forward warp, NaN where nothing lands.

    Every usable source pixel is back-projected with ``K_src``, moved by ``T_dst_src`` and projected with
    ``K_dst``; its pixel coordinates are rounded to the nearest pixel. Where several source points land on one
    pixel the nearest (smallest z) wins (the surface the destination camera actually sees); points behind the
    camera (``z <= 0``) or outside the image are dropped. No hole filling: a pixel the source did not see, or
    one between splatted points, stays NaN.

    Args:
        src: ``(H, W)`` depth, metres; src_ok: ``(H, W)`` bool usable pixels.
        K_src, K_dst: ``(3, 3)``; T_dst_src: ``(4, 4)`` maps source-camera points to the destination camera.
        shape: ``(H', W')`` of the destination image.

    Returns:
        ``(H', W')`` float64 z-depth in the destination camera, metres.
    """
    H, W = shape
    points = transform_points(T_dst_src, backproject(np.where(src_ok, src, 0.0), K_src)[src_ok])
    uv, z = project(points, K_dst)
    u, v = np.rint(uv[:, 0]), np.rint(uv[:, 1])
    with np.errstate(invalid="ignore"):
        hit = (z > 0) & (u >= 0) & (u <= W - 1) & (v >= 0) & (v <= H - 1)
    index, z = (v[hit] * W + u[hit]).astype(np.int64), z[hit]
    # z-buffer: sort by (pixel, z) and keep the first, nearest point of each pixel.
    order = np.lexsort((z, index))
    index, z = index[order], z[order]
    first = np.ones(len(index), dtype=bool)
    first[1:] = index[1:] != index[:-1]
    out = np.full(H * W, np.nan)
    out[index[first]] = z[first]
    return out.reshape(H, W)


def reprojection_error(
    src: np.ndarray,
    src_ok: np.ndarray,
    K_src: np.ndarray,
    T_dst_src: np.ndarray,
    dst: np.ndarray,
    dst_ok: np.ndarray,
    K_dst: np.ndarray,
) -> float:
    """One direction of TAE: mean ``|d_dst - z| / d_dst`` of depth ``src`` projected into the ``dst`` frame.

    ``src`` is warped into the destination camera by :func:`splat_depth` (rounded to pixel centres, nearest
    point wins); the projected z is compared with ``dst`` at every pixel that received a point and is usable
    in ``dst_ok``. Returns NaN when no pixel is compared.

    Args:
        src, dst: ``(H, W)`` depths, metres; src_ok, dst_ok: ``(H, W)`` bool usable pixels.
        K_src, K_dst: ``(3, 3)``; T_dst_src: ``(4, 4)`` maps source-camera points to the destination camera.
    """
    z = splat_depth(src, src_ok, K_src, T_dst_src, K_dst, dst.shape)
    compared = np.isfinite(z) & dst_ok
    if not compared.any():
        return float("nan")
    target = dst[compared]
    return float(np.mean(np.abs(target - z[compared]) / target))


def tae(
    depth: np.ndarray, K: np.ndarray, pose_c2w: np.ndarray, valid: np.ndarray | None = None
) -> TemporalCurve:
    """Temporal Alignment Error in percent (Video Depth Anything, CVPR 2025, ``benchmark/eval/eval_tae.py``).

    For each pair ``(t, t+1)``, depth ``t`` is projected into frame ``t+1`` with the camera poses and
    intrinsics and compared with frame ``t+1``'s depth by AbsRel (:func:`reprojection_error`); likewise
    ``t+1`` into ``t``. ``per_pair[t] = 100 * mean of the two directions``; ``mean`` averages the pairs, which
    equals VDA's ``100 / (2 (T-1)) * sum of both directions over pairs`` when every pair has overlap.

    Differences from the VDA script, on purpose: a z-buffer where several points land on one pixel (VDA keeps
    an arbitrary one, so a perfect depth of a scene with occlusions scores > 0), per-frame ``K`` (``K_t`` to
    back-project, ``K_{t+1}`` to project), and a pair without overlap is skipped rather than counted as 0.
    VDA first aligns the prediction to ground truth (per-sequence least-squares scale and shift in disparity)
    and clips it to the depth range; pass the prediction of the chosen alignment
    (:func:`videomamba_depth.metrics.align`). A perfect depth of a static scene scores 0 up to the rounding to
    pixel centres; a depth that is right up to a per-frame scale ``s_t`` under pure rotation scores
    ``|1 - s_t / s_{t+1}|`` forward and ``|1 - s_{t+1} / s_t|`` backward.

    Args:
        depth: ``(T, H, W)`` depth, metres (z-depth).
        K: ``(3, 3)`` or ``(T, 3, 3)`` intrinsics, pixels.
        pose_c2w: ``(T, 4, 4)`` camera-to-world poses (ground truth, or :func:`pose_c2w_from_relative` of the
            flow stage's estimates).
        valid: ``(T, H, W)`` bool pixels to use (in both roles, source and target), or None for all.

    Returns:
        :class:`TemporalCurve` in percent.
    """
    depth = np.asarray(depth, dtype=np.float64)
    T = len(depth)
    K = per_frame_K(K, T, "tae intrinsics")
    pose_c2w = np.asarray(pose_c2w, dtype=np.float64)
    if pose_c2w.shape != (T, 4, 4):
        raise ValueError(f"tae: pose_c2w must be ({T}, 4, 4) for {T} frames, got {pose_c2w.shape}")
    ok = _usable(depth, valid)
    per_pair = np.full(max(T - 1, 0), np.nan)
    for t in range(T - 1):
        T_next_this = relative_pose(pose_c2w[t], pose_c2w[t + 1])
        forward = reprojection_error(depth[t], ok[t], K[t], T_next_this, depth[t + 1], ok[t + 1], K[t + 1])
        backward = reprojection_error(
            depth[t + 1], ok[t + 1], K[t + 1], np.linalg.inv(T_next_this), depth[t], ok[t], K[t]
        )
        both = np.array([forward, backward])
        if np.isfinite(both).any():
            per_pair[t] = 100.0 * np.nanmean(both)
    return _curve(per_pair)


def sample_bilinear(
    image: np.ndarray, ok: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear samples of ``image`` ``(H, W)`` at pixel coordinates ``x, y`` (pixel centres are integers).

    Returns ``(values, sampled)``: ``sampled`` is False where the point lies outside ``[0, W-1] x [0, H-1]``
    or a tap with a non-zero weight is not ``ok`` (an integer position next to a bad pixel still samples).
    ``values`` is 0 where not sampled.
    """
    H, W = image.shape
    with np.errstate(invalid="ignore"):
        sampled = (x >= 0) & (x <= W - 1) & (y >= 0) & (y <= H - 1)
    x, y = np.where(sampled, x, 0.0), np.where(sampled, y, 0.0)
    # Left/top tap clamped so a point on the last column/row uses the pair (W-2, W-1) with weight 1 on W-1.
    x0 = np.clip(np.floor(x), 0, max(W - 2, 0)).astype(np.int64)
    y0 = np.clip(np.floor(y), 0, max(H - 2, 0)).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = x - x0, y - y0
    values = np.zeros(x.shape)
    taps = (
        (x0, y0, (1 - fx) * (1 - fy)),
        (x1, y0, fx * (1 - fy)),
        (x0, y1, (1 - fx) * fy),
        (x1, y1, fx * fy),
    )
    for xi, yi, weight in taps:
        tap_ok = ok[yi, xi]
        sampled &= tap_ok | (weight == 0)
        values += np.where(tap_ok, image[yi, xi] * weight, 0.0)
    return np.where(sampled, values, 0.0), sampled


def flow_warped_error(
    depth: np.ndarray, flow_fwd: np.ndarray, consistent: np.ndarray, valid: np.ndarray | None = None
) -> TemporalCurve:
    """Flow-warped temporal error: ``mean |log d_{t+1}(p + f_t(p)) - log d_t(p)|`` per pair, in log units.

    ``f_t`` is the forward flow ``t -> t+1`` (pixels, ``(du, dv)``): the surface seen at pixel ``p`` of frame
    ``t`` is at ``p + f_t(p)`` in frame ``t+1``. Frame ``t+1``'s depth is sampled there bilinearly
    (backward warping into frame ``t``'s grid), interpolating inverse depth, which is exact on planes. Pixels
    count where ``consistent[t]`` (forward-backward consistent flow) holds, both depths are usable and the
    sample lies inside frame ``t+1`` with all its taps usable.

    Not zero for a perfect depth when surfaces move along the optical axis (their true depth changes); report
    the same metric of the ground truth next to it. With zero flow this is :func:`static_jitter`.

    Args:
        depth: ``(T, H, W)`` metres; flow_fwd: ``(T-1, H, W, 2)`` pixels; consistent: ``(T-1, H, W)`` bool;
        valid: ``(T, H, W)`` bool or None.
    """
    depth = np.asarray(depth, dtype=np.float64)
    flow_fwd = np.asarray(flow_fwd, dtype=np.float64)
    T, H, W = depth.shape
    if flow_fwd.shape != (T - 1, H, W, 2) or np.shape(consistent) != (T - 1, H, W):
        raise ValueError(
            f"flow_warped_error: flow {flow_fwd.shape} and consistent {np.shape(consistent)} must be "
            f"({T - 1}, {H}, {W}, 2) and ({T - 1}, {H}, {W}) for depth {depth.shape}"
        )
    ok = _usable(depth, valid)
    disparity = np.where(ok, 1.0 / np.where(ok, depth, 1.0), 0.0)
    grid = pixel_grid(H, W)
    per_pair = np.full(T - 1, np.nan)
    for t in range(T - 1):
        target = grid + flow_fwd[t]
        sampled, hit = sample_bilinear(disparity[t + 1], ok[t + 1], target[..., 0], target[..., 1])
        m = np.asarray(consistent[t], dtype=bool) & ok[t] & hit
        if m.any():
            per_pair[t] = np.mean(np.abs(-np.log(sampled[m]) - np.log(depth[t][m])))
    return _curve(per_pair)


def static_jitter(
    depth: np.ndarray, static_masks: np.ndarray, valid: np.ndarray | None = None
) -> TemporalCurve:
    """Temporal jitter: ``mean |log d_{t+1} - log d_t|`` at one pixel over ``static_masks[t]``, log units.

    Meaningful where the pixel sees the same surface point in both frames (a static scene seen by a static
    camera, or pixels whose flow is ~0); there any change is flicker. Constant depth gives 0.

    Args:
        depth: ``(T, H, W)`` metres; static_masks: ``(T-1, H, W)`` bool for pair ``(t, t+1)``;
        valid: ``(T, H, W)`` bool or None.
    """
    depth = np.asarray(depth, dtype=np.float64)
    T = len(depth)
    if np.shape(static_masks) != (T - 1, *depth.shape[1:]):
        raise ValueError(
            f"static_jitter: static masks {np.shape(static_masks)} must be (T-1, H, W) for depth "
            f"{depth.shape}"
        )
    ok = _usable(depth, valid)
    log_depth = np.log(np.where(ok, depth, 1.0))
    m = np.asarray(static_masks, dtype=bool) & ok[1:] & ok[:-1]
    change = np.abs(log_depth[1:] - log_depth[:-1])
    count = m.sum(axis=(1, 2))
    total = np.where(m, change, 0.0).sum(axis=(1, 2))
    return _curve(np.where(count > 0, total / np.maximum(count, 1), np.nan))


def scale_drift(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> ScaleDrift:
    """Per-frame least-squares scale ``s_t = sum(pred * gt) / sum(pred^2)`` over ``valid`` (so ``s_t pred``
    best matches ``gt``), and its population std over the growing windows ``s_0..s_t``.

    A metric model without drift has a flat curve (any constant bias gives std 0); frames without valid
    pixels are NaN and ignored by the std.

    Args:
        pred, gt: ``(T, H, W)`` depth, metres; valid: ``(T, H, W)`` bool (usually the evaluation mask).
    """
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    m = np.asarray(valid, dtype=bool) & _usable(pred, None) & _usable(gt, None)
    p, g = np.where(m, pred, 0.0), np.where(m, gt, 0.0)
    num, den = (p * g).sum(axis=(1, 2)), (p * p).sum(axis=(1, 2))
    scale = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    window_std = np.full(len(scale), np.nan)
    for t in range(len(scale)):
        window = scale[: t + 1][np.isfinite(scale[: t + 1])]
        if len(window):
            window_std[t] = window.std()
    return ScaleDrift(scale, window_std)


def relative_change_histogram(
    depth: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    bins: int = 41,
    max_change: float = 0.2,
) -> ChangeHistogram:
    """Histogram of frame-to-frame relative changes ``d_{t+1} / d_t - 1`` at the same pixel.

    Changes beyond ``+-max_change`` are clipped into the outermost bins, so every compared pixel is counted.

    Args:
        depth: ``(T, H, W)`` metres; mask: ``(T-1, H, W)`` bool pixels of pair ``(t, t+1)`` to use (e.g. the
            static masks), or None for all usable pixels; bins: number of equal bins over
            ``[-max_change, max_change]``.
    """
    depth = np.asarray(depth, dtype=np.float64)
    ok = _usable(depth, None)
    m = ok[1:] & ok[:-1]
    if mask is not None:
        m &= np.asarray(mask, dtype=bool)
    change = depth[1:][m] / depth[:-1][m] - 1.0
    edges = np.linspace(-max_change, max_change, bins + 1)
    counts, _ = np.histogram(np.clip(change, -max_change, max_change), bins=edges)
    return ChangeHistogram(edges, counts)
