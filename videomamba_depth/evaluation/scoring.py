"""Scores of one depth video against its reference: accuracy per alignment and temporal consistency.

Every method (teacher, streaming student, per-frame student) is scored on the same pixels: the reference's
valid pixels inside the depth range where the teacher is valid too, so no method is judged on pixels
another one skips. Temporal metrics are computed on the *aligned* prediction of each alignment mode (as
Video Depth Anything does for TAE). Names in the results:

- depth accuracy (``metrics.frame_metrics``, mean over frames): ``abs_rel``, ``rmse`` (m), ``delta1``;
- ``tae``: temporal alignment error, percent (poses and K from ground truth, else the flow stage's
  relative poses; pairs without a known pose are skipped);
- ``jitter_static``: mean ``|Δ log d|`` at one pixel over the flow stage's ``static`` mask (rigid
  background: under camera motion it also contains real depth change, see ``floor``);
- ``jitter_still``: the same over ``static & |flow| < still_flow_px``: pixels that barely move, so nearly
  any change there is flicker;
- ``flow_warped``: mean ``|log d_{t+1}(p + f) - log d_t(p)|`` over forward-backward consistent flow;
- ``scale_std``: std over frames of the per-frame least-squares scale to the reference (scale drift);
- regions (:data:`REGION_METRICS`, ground truth only, else NaN): ``abs_rel`` and ``delta1`` on the evaluated
  pixels of ``moving`` objects (the ground truth's motion mask) and of the ``edge`` band (pixels within
  ``edge_band_px`` of a ground-truth depth discontinuity ``|Δ log depth| > edge_threshold`` between
  4-neighbours, :func:`~videomamba_depth.metrics.depth_edge_band`), and of ``near`` views (every pixel of
  the frames whose 90th-percentile ground-truth depth over the evaluated pixels is under
  ``near_view_depth`` metres: the camera faces a wall or a body up close, where one frame does not tell the
  scale), named ``<region>_<metric>``. A blurred or constant prediction can be stable and score a tolerable
  whole-image mean, but not there. NaN when a video has no pixel of the region.

``floor``: the temporal metrics of the ground truth itself (when it exists): what a perfect depth scores on
the same masks, because surfaces do change depth between frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from videomamba_depth.evaluation.data import EvalVideo
from videomamba_depth.metrics import (
    Alignment,
    align,
    depth_edge_band,
    evaluate_sequence,
    evaluation_mask,
    flow_warped_error,
    relative_change_histogram,
    scale_drift,
    static_jitter,
    tae,
)

DEPTH_METRICS = ("abs_rel", "rmse", "delta1")
TEMPORAL_METRICS = ("tae", "jitter_static", "jitter_still", "flow_warped")
REGIONS = ("moving", "edge", "near")
REGION_DEPTH_METRICS = ("abs_rel", "delta1")
REGION_METRICS = tuple(f"{region}_{metric}" for region in REGIONS for metric in REGION_DEPTH_METRICS)


@dataclass(frozen=True)
class ScoreSettings:
    """Depth range (metres), the flow magnitude (pixels) below which a static pixel is "still", the
    change-histogram layout, the edge band (log-depth jump, half-width in pixels) and the depth (metres)
    under which a view counts as near."""

    min_depth: float
    max_depth: float
    still_flow_px: float
    histogram_bins: int
    histogram_max_change: float
    edge_threshold: float
    edge_band_px: int
    near_view_depth: float


@dataclass(frozen=True)
class Score:
    """Means (metric name -> value) and per-frame / per-pair curves of one method under one alignment.

    ``curves``: ``tae``, ``jitter_static``, ``jitter_still``, ``flow_warped`` ``(T-1,)``; ``abs_rel``,
    ``<region>_abs_rel`` and ``scale`` ``(T,)`` (per-frame least-squares scale to the
    reference), absent when the depth is its own reference (region curves NaN without ground truth).
    """

    means: dict[str, float]
    curves: dict[str, np.ndarray]


def masks(video: EvalVideo, settings: ScoreSettings) -> tuple[np.ndarray, np.ndarray]:
    """``(T, H, W)`` evaluated pixels (reference valid, in range, teacher valid) and ``(T-1, H, W)`` still
    pixels (``static`` with forward flow shorter than ``still_flow_px``)."""
    mask = evaluation_mask(
        video.reference, video.reference_valid & video.teacher_valid,
        max_depth=settings.max_depth, min_depth=settings.min_depth,
    )
    still = video.static & (np.linalg.norm(video.flow_fwd, axis=-1) < settings.still_flow_px)
    return mask, still


def regions(video: EvalVideo, settings: ScoreSettings) -> dict[str, np.ndarray]:
    """:data:`REGIONS` -> ``(T, H, W)`` bool, from the ground truth (empty without it)."""
    if video.motion is None:
        return {}
    edge = depth_edge_band(video.reference, video.reference_valid, threshold=settings.edge_threshold,
                           band_px=settings.edge_band_px)
    mask, _ = masks(video, settings)
    near = near_views(video.reference, mask, settings.near_view_depth)
    return {"moving": video.motion, "edge": edge, "near": np.broadcast_to(near[:, None, None], mask.shape)}


def near_views(depth: np.ndarray, mask: np.ndarray, max_depth: float) -> np.ndarray:
    """``(T,)`` bool: frames of ``depth`` ``(T, H, W)`` metres whose 90th percentile over ``mask`` is under
    ``max_depth`` (False for a frame without a masked pixel)."""
    near = np.zeros(len(depth), dtype=bool)
    for t, (frame, keep) in enumerate(zip(depth, mask, strict=True)):
        if keep.any():
            near[t] = np.percentile(frame[keep], 90) < max_depth
    return near


def region_shares(video: EvalVideo, settings: ScoreSettings) -> dict[str, float]:
    """Fraction of the evaluated pixels in each region (``<region>_pixels``; NaN without ground truth)."""
    mask, _ = masks(video, settings)
    found = regions(video, settings)
    total = max(int(mask.sum()), 1)
    return {f"{name}_pixels": float((mask & found[name]).sum()) / total if name in found else float("nan")
            for name in REGIONS}


def temporal(depth: np.ndarray, video: EvalVideo, mask: np.ndarray, still: np.ndarray) -> dict[str, object]:
    """Temporal curves (:data:`TEMPORAL_METRICS`) of ``depth`` ``(T, H, W)`` over ``mask``."""
    tae_curve = tae(depth, video.K_eval, video.pose_c2w, valid=mask).per_pair.copy()
    tae_curve[~video.pose_known] = np.nan  # an unknown pose is stored as the identity: not comparable
    return {
        "tae": tae_curve,
        "jitter_static": static_jitter(depth, video.static, valid=mask).per_pair,
        "jitter_still": static_jitter(depth, still, valid=mask).per_pair,
        "flow_warped": flow_warped_error(depth, video.flow_fwd, video.consistent, valid=mask).per_pair,
    }


def _nanmean(values: np.ndarray) -> float:
    finite = np.isfinite(values)
    return float(values[finite].mean()) if finite.any() else float("nan")


def score(
    depth: np.ndarray,
    video: EvalVideo,
    alignment: Alignment,
    settings: ScoreSettings,
    *,
    is_reference: bool = False,
) -> Score:
    """Score ``depth`` ``(T, H, W)`` metres under ``alignment``; ``is_reference``: it is the reference
    itself (the teacher when there is no ground truth), so accuracy metrics are left out."""
    mask, still = masks(video, settings)
    aligned = align(depth, video.reference, mask, alignment, max_depth=settings.max_depth,
                    min_depth=settings.min_depth).depth
    curves = temporal(aligned, video, mask, still)
    means = {}
    if not is_reference:
        sequence = evaluate_sequence(depth, video.reference, mask, max_depth=settings.max_depth,
                                     alignment=alignment, min_depth=settings.min_depth,
                                     regions=regions(video, settings))
        means = {name: sequence.mean[name] for name in DEPTH_METRICS}
        curves["abs_rel"] = sequence.per_frame["abs_rel"]
        nan_frames = np.full(video.num_frames, np.nan)
        for region in REGIONS:
            found = sequence.regions.get(region)
            for metric in REGION_DEPTH_METRICS:
                means[f"{region}_{metric}"] = found.mean[metric] if found else float("nan")
            curves[f"{region}_abs_rel"] = found.per_frame["abs_rel"] if found else nan_frames
    means.update({name: _nanmean(curves[name]) for name in TEMPORAL_METRICS})
    if not is_reference:
        drift = scale_drift(aligned, video.reference, mask)
        means["scale_std"] = float(drift.window_std[-1])
        curves["scale"] = drift.scale
    return Score(means, curves)


def floor(video: EvalVideo, settings: ScoreSettings) -> Score | None:
    """Temporal metrics of the ground truth itself (None when the reference is the teacher)."""
    if video.reference_kind != "ground_truth":
        return None
    mask, still = masks(video, settings)
    curves = temporal(video.reference, video, mask, still)
    return Score({name: _nanmean(curves[name]) for name in TEMPORAL_METRICS}, curves)


def change_histogram(depth: np.ndarray, video: EvalVideo, settings: ScoreSettings) -> list[dict[str, float]]:
    """Histogram rows of frame-to-frame relative changes over static, evaluated pixels."""
    mask, _ = masks(video, settings)
    pairs = video.static & mask[1:] & mask[:-1]
    histogram = relative_change_histogram(depth, pairs, bins=settings.histogram_bins,
                                          max_change=settings.histogram_max_change)
    return histogram.rows()
