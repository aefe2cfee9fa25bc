"""Per-frame depth accuracy metrics, alignment protocols, per-video and per-dataset means (numpy, float64).

Protocol: metrics are computed per frame over its evaluated pixels, averaged over the frames of a video
(frames without evaluated pixels are skipped), then averaged over videos (:func:`aggregate`): every frame
weighs the same within its video and every video the same in the dataset, as in the Video Depth Anything
benchmark.

Evaluated pixels (:func:`evaluation_mask`): valid, finite ground truth with ``min_depth < gt < max_depth``.
Predictions are aligned (:func:`align`) and then clipped to ``[min_depth, max_depth]`` before the metrics.

Regions: the same metrics on a subset of the evaluated pixels (``evaluate_sequence(regions=...)``), with the
alignment still fitted on all of them, e.g. moving objects or the band around depth discontinuities
(:func:`depth_edge_band`), where a blurred prediction is wrong even when its whole-image mean looks fine.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

# Metric names, in report order. delta_i are fractions in [0, 1]; silog is x100 (KITTI convention).
METRICS = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3")

Alignment = Literal["none", "median", "lstsq_disparity", "first_frame"]
ALIGNMENTS: tuple[Alignment, ...] = ("none", "median", "lstsq_disparity", "first_frame")

# Threshold accuracy: fraction of pixels with max(pred/gt, gt/pred) < DELTA_BASE**i (Eigen et al. 2014).
DELTA_BASE = 1.25

# Default lower depth bound (metres): ground truth at or below it is ignored and predictions are clipped up
# to it (the Video Depth Anything benchmark uses 1e-3).
DEFAULT_MIN_DEPTH = 1e-3


@dataclass(frozen=True)
class AlignedPrediction:
    """An aligned prediction ``depth`` ``(T, H, W)`` (metres, not yet clipped) and the fitted ``params``."""

    depth: np.ndarray
    params: dict[str, float | int]


@dataclass(frozen=True)
class SequenceMetrics:
    """Metrics of one video under one alignment.

    ``per_frame[m]`` is ``(T,)`` (NaN for frames without evaluated pixels), ``mean[m]`` its mean over frames
    (NaN when no frame has one), ``params`` the fitted alignment (e.g. ``{"scale": s, "shift": t}``),
    ``num_frames`` how many frames had evaluated pixels. ``regions[name]``: the same on the evaluated pixels
    of one region (same alignment and params; no nested regions).
    """

    alignment: Alignment
    params: dict[str, float | int]
    per_frame: dict[str, np.ndarray]
    mean: dict[str, float]
    num_frames: int
    regions: dict[str, SequenceMetrics] = field(default_factory=dict)


def evaluation_mask(
    gt: np.ndarray, valid: np.ndarray | None, *, max_depth: float, min_depth: float = DEFAULT_MIN_DEPTH
) -> np.ndarray:
    """``(T, H, W)`` bool: ``valid`` (all True if None), finite ``gt`` and ``min_depth < gt < max_depth``."""
    gt = np.asarray(gt, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        mask = np.isfinite(gt) & (gt > min_depth) & (gt < max_depth)
    return mask if valid is None else mask & np.asarray(valid, dtype=bool)


def depth_edge_band(
    depth: np.ndarray, valid: np.ndarray | None, *, threshold: float, band_px: int
) -> np.ndarray:
    """``(T, H, W)`` bool: pixels within ``band_px`` of a depth discontinuity of ``depth``.

    A pixel is *on* a discontinuity when one of its 4 neighbours (left, right, up, down) differs from it by
    ``|log d_p - log d_q| > threshold`` with both pixels usable (``valid``, finite, > 0); both pixels of such
    a pair are on it. A pair with an unusable pixel is never a discontinuity, so the border of the image
    (padding) is not one. The band adds every pixel at Chebyshev distance ``<= band_px`` (a
    ``(2 band_px + 1)^2`` square, within the frame: no dilation over time); ``band_px = 0`` keeps the
    discontinuity pixels only. Not intersected with ``valid``: intersect it with the evaluated pixels.

    Args:
        depth: ``(T, H, W)`` ground-truth depth, metres; valid: ``(T, H, W)`` bool, or None for all.
        threshold: log-depth jump between neighbours (0.1: 10.5 %; smooth surfaces of the synthetic rooms
            stay below 0.06 at 224 x 168); band_px: half-width of the band, pixels.
    """
    depth = np.asarray(depth, dtype=np.float64)
    if depth.ndim != 3 or threshold <= 0 or band_px < 0:
        raise ValueError(f"depth_edge_band: need (T, H, W) depth, threshold > 0, band_px >= 0; got "
                         f"{depth.shape}, {threshold}, {band_px}")
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(depth) & (depth > 0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    log_depth = np.log(np.where(ok, depth, 1.0))
    edge = np.zeros(depth.shape, dtype=bool)
    for axis in (1, 2):  # rows (up/down neighbours), then columns (left/right)
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        lo, hi = tuple(lo), tuple(hi)
        jump = ok[lo] & ok[hi] & (np.abs(log_depth[hi] - log_depth[lo]) > threshold)
        edge[lo] |= jump
        edge[hi] |= jump
    if band_px == 0:
        return edge
    square = np.ones((1, 2 * band_px + 1, 2 * band_px + 1), dtype=bool)
    return ndimage.binary_dilation(edge, structure=square)


def frame_metrics(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """All :data:`METRICS` per frame over ``mask``; NaN for frames with no masked pixel.

    Args:
        pred: ``(T, H, W)`` predicted depth, metres, > 0 on ``mask`` (already aligned and clipped).
        gt: ``(T, H, W)`` ground-truth depth, metres, > 0 on ``mask``.
        mask: ``(T, H, W)`` bool, the evaluated pixels.

    Returns:
        name -> ``(T,)`` float64. With ``e = log pred - log gt``: abs_rel = mean |pred - gt| / gt,
        sq_rel = mean (pred - gt)^2 / gt, rmse = sqrt(mean (pred - gt)^2), rmse_log = sqrt(mean e^2),
        log10 = mean |e| / ln 10, silog = 100 sqrt(mean e^2 - (mean e)^2), delta_i = fraction of
        max(pred/gt, gt/pred) < 1.25^i.
    """
    mask = np.asarray(mask, dtype=bool)
    p = np.where(mask, pred, 1.0).astype(np.float64)
    g = np.where(mask, gt, 1.0).astype(np.float64)
    count = mask.sum(axis=(1, 2))

    def frame_mean(values: np.ndarray) -> np.ndarray:
        total = np.where(mask, values, 0.0).sum(axis=(1, 2))
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)

    diff = p - g
    e = np.log(p) - np.log(g)
    ratio = np.maximum(p / g, g / p)
    mean_e = frame_mean(e)
    mean_e2 = frame_mean(e**2)
    out = {
        "abs_rel": frame_mean(np.abs(diff) / g),
        "sq_rel": frame_mean(diff**2 / g),
        "rmse": np.sqrt(frame_mean(diff**2)),
        "rmse_log": np.sqrt(mean_e2),
        "log10": frame_mean(np.abs(e)) / np.log(10.0),
        "silog": 100.0 * np.sqrt(np.maximum(mean_e2 - mean_e**2, 0.0)),
    }
    for i in (1, 2, 3):
        out[f"delta{i}"] = frame_mean((ratio < DELTA_BASE**i).astype(np.float64))
    return out


def align_median(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> AlignedPrediction:
    """Per-sequence median scaling: ``s = median(gt) / median(pred)`` over all masked pixels of all frames."""
    _require_pixels(mask, "median alignment")
    scale = float(np.median(gt[mask]) / np.median(pred[mask]))
    return AlignedPrediction(scale * np.asarray(pred, dtype=np.float64), {"scale": scale})


def align_lstsq_disparity(
    pred: np.ndarray, gt: np.ndarray, mask: np.ndarray, *, max_depth: float
) -> AlignedPrediction:
    """Per-sequence least-squares scale and shift in disparity (the video-depth benchmark protocol).

    Solves ``min_{s,t} sum (s / pred + t - 1 / gt)^2`` over all masked pixels of all frames, then returns
    depth ``1 / max(s / pred + t, 1 / max_depth)``: an aligned disparity at or below ``1 / max_depth``
    (including a negative one) becomes ``max_depth``. Params: ``{"scale": s, "shift": t}`` (shift in 1/m).
    """
    _require_pixels(mask, "least-squares disparity alignment")
    with np.errstate(divide="ignore", invalid="ignore"):  # pixels outside the mask may hold 0 or NaN
        p = 1.0 / np.asarray(pred, dtype=np.float64)
        x, y = p[mask], 1.0 / np.asarray(gt, dtype=np.float64)[mask]
        design = np.stack([x, np.ones_like(x)], axis=-1)
        (scale, shift), *_ = np.linalg.lstsq(design, y, rcond=None)
        disparity = np.maximum(scale * p + shift, 1.0 / max_depth)
        return AlignedPrediction(1.0 / disparity, {"scale": float(scale), "shift": float(shift)})


def align_first_frame(pred: np.ndarray, gt: np.ndarray, mask: np.ndarray) -> AlignedPrediction:
    """Median scale fitted on the first frame with evaluated pixels only, applied to every frame.

    This is what a streaming system can do (calibrate once, then run): later scale drift shows up as error.
    A scale only, not scale + shift: a disparity shift fitted on one frame's narrow depth range is poorly
    conditioned and can turn other frames' disparities negative. Params: ``{"scale": s, "fit_frame": i}``.
    """
    _require_pixels(mask, "first-frame alignment")
    first = int(np.flatnonzero(mask.any(axis=(1, 2)))[0])
    scale = float(np.median(gt[first][mask[first]]) / np.median(pred[first][mask[first]]))
    return AlignedPrediction(scale * np.asarray(pred, dtype=np.float64), {"scale": scale, "fit_frame": first})


def align(
    pred: np.ndarray,
    gt: np.ndarray,
    mask: np.ndarray,
    mode: Alignment,
    *,
    max_depth: float,
    min_depth: float = DEFAULT_MIN_DEPTH,
) -> AlignedPrediction:
    """Align ``pred`` to ``gt`` by ``mode`` (see :data:`ALIGNMENTS`), then clip to ``[min_depth, max_depth]``.

    Args:
        pred, gt: ``(T, H, W)`` depth, metres. ``pred`` must be finite and > 0 on ``mask``.
        mask: ``(T, H, W)`` bool evaluated pixels (:func:`evaluation_mask`); the fit uses only these.
        mode: ``"none"`` (metric, the default for a metric model), ``"median"`` (per-sequence median scale),
            ``"lstsq_disparity"`` (per-sequence least-squares scale + shift in disparity),
            ``"first_frame"`` (median scale of the first frame, applied to all).

    Returns:
        The clipped, aligned ``(T, H, W)`` float64 prediction and the fitted parameters (``{}`` for "none").
    """
    pred = np.asarray(pred, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if pred.shape != np.shape(gt) or pred.shape != mask.shape or pred.ndim != 3:
        raise ValueError(
            f"pred, gt and mask must share one (T, H, W) shape, got {pred.shape}, {np.shape(gt)}, "
            f"{mask.shape}"
        )
    bad = int((~np.isfinite(pred[mask]) | (pred[mask] <= 0)).sum())
    if bad:
        raise ValueError(f"prediction has {bad} non-finite or non-positive depths on evaluated pixels")
    if mode == "none":
        aligned = AlignedPrediction(pred, {})
    elif mode == "median":
        aligned = align_median(pred, gt, mask)
    elif mode == "lstsq_disparity":
        aligned = align_lstsq_disparity(pred, gt, mask, max_depth=max_depth)
    elif mode == "first_frame":
        aligned = align_first_frame(pred, gt, mask)
    else:
        raise ValueError(f"unknown alignment {mode!r}; expected one of {list(ALIGNMENTS)}")
    return AlignedPrediction(np.clip(aligned.depth, min_depth, max_depth), aligned.params)


def evaluate_sequence(
    pred: np.ndarray,
    gt: np.ndarray,
    valid: np.ndarray | None,
    *,
    max_depth: float,
    alignment: Alignment = "none",
    min_depth: float = DEFAULT_MIN_DEPTH,
    regions: Mapping[str, np.ndarray] | None = None,
) -> SequenceMetrics:
    """Depth metrics of one video: align, clip, per-frame :func:`frame_metrics`, mean over frames.

    Args:
        pred: ``(T, H, W)`` predicted depth, metres.
        gt: ``(T, H, W)`` ground-truth depth, metres.
        valid: ``(T, H, W)`` bool pixels with ground truth (e.g. not padding), or None for all.
        max_depth: depth cap, metres: ground truth at or beyond it is not evaluated, predictions are clipped
            to it.
        alignment: one of :data:`ALIGNMENTS`.
        min_depth: lower bound, metres (ground truth at or below it is not evaluated).
        regions: name -> ``(T, H, W)`` bool: also score the evaluated pixels inside each (the alignment is
            still fitted on all evaluated pixels); a region without any gives NaN means.
    """
    mask = evaluation_mask(gt, valid, max_depth=max_depth, min_depth=min_depth)
    aligned = align(pred, gt, mask, alignment, max_depth=max_depth, min_depth=min_depth)

    def scored(pixels: np.ndarray, by_region: dict[str, SequenceMetrics]) -> SequenceMetrics:
        per_frame = frame_metrics(aligned.depth, gt, pixels)
        has_pixels = pixels.any(axis=(1, 2))
        mean = {
            name: float(values[has_pixels].mean()) if has_pixels.any() else float("nan")
            for name, values in per_frame.items()
        }
        return SequenceMetrics(alignment, aligned.params, per_frame, mean, int(has_pixels.sum()), by_region)

    scored_regions = {}
    for name, region in (regions or {}).items():
        if np.shape(region) != mask.shape:
            raise ValueError(f"region '{name}' has shape {np.shape(region)}, expected {mask.shape}")
        scored_regions[name] = scored(mask & np.asarray(region, dtype=bool), {})
    return scored(mask, scored_regions)


def aggregate(per_video: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Dataset summary: for each metric, the mean over videos of the per-video means.

    ``per_video`` holds one mapping per video (e.g. ``SequenceMetrics.mean``, or TAE and jitter values); a
    metric is averaged over the videos that report it with a finite value (NaN: nothing to compare in that
    video, e.g. a region without pixels); NaN when none does.
    """
    names = list(dict.fromkeys(name for video in per_video for name in video))
    out = {}
    for name in names:
        values = [video[name] for video in per_video if name in video and math.isfinite(video[name])]
        out[name] = float(np.mean(values)) if values else float("nan")
    return out


def _require_pixels(mask: np.ndarray, what: str) -> None:
    if not mask.any():
        raise ValueError(f"{what}: no evaluated pixels (check the valid mask and the depth range)")
