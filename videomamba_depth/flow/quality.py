"""Quality of a ``flow`` store against the ground truth that ``prepare`` resampled (synthetic videos).

Metrics, on image pixels of every frame pair (t, t+1):

- EPE: mean |flow_fwd - gt flow_fwd| over gt ``flow_fwd_valid`` pixels, px (and over the consistent ones);
- moving IoU: predicted moving (``consistent & ~static``) vs gt ``motion_mask`` of frame t; precision and
  recall of the same;
- detectable moving IoU: the same, but gt moving pixels whose independent displacement (gt flow minus the
  rigid flow of gt depth and gt pose) is below ``static_abs_px`` are left out (neither hit nor miss): no
  two-frame test can see an object that moves less than that between the frames;
- static IoU: predicted static vs the consistent pixels that are not gt moving;
- rotation error of ``rel_pose`` vs gt ``T_{t+1<-t}``, degrees; translation direction error, degrees (only
  pairs whose gt translation exceeds ``MIN_TRANSLATION_M``: the direction of a near-zero translation is
  undefined);
- gt statistics of the scene: share of image pixels that are gt moving (in frames showing a mover), and the
  median independent displacement of gt moving pixels, px per frame.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from videomamba_depth.camera import relative_pose
from videomamba_depth.flow.rigid import rigid_flow
from videomamba_depth.zarrio import open_store, require_arrays

# Shortest gt camera translation between two frames whose direction is scored, metres.
MIN_TRANSLATION_M = 0.005


def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    """Angle of the rotation ``R_a^T R_b`` between two ``(3, 3)`` rotations, degrees."""
    return float(np.degrees(np.arccos(np.clip((np.trace(R_a.T @ R_b) - 1) / 2, -1.0, 1.0))))


def direction_error_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two ``(3,)`` vectors, degrees."""
    cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def iou(pred: np.ndarray, gt: np.ndarray, care: np.ndarray | None = None) -> float:
    """Intersection over union of two bool masks, restricted to ``care`` when given (0 pixels: 0)."""
    if care is not None:
        pred, gt = pred & care, gt & care
    return float((pred & gt).sum() / max(1, (pred | gt).sum()))


def flow_quality(prepared_path: str | Path, flow_path: str | Path, static_abs_px: float) -> dict[str, float]:
    """The metrics of the module docstring for one video.

    ``prepared_path`` must hold the ``gt`` group (prepare with ground truth); ``static_abs_px`` is the flow
    stage's ``static_abs_px``, the least independent displacement counted as detectable.
    """
    prepared, flow = open_store(prepared_path, "prepared"), open_store(flow_path, "flow")
    if "gt" not in prepared:
        raise KeyError(f"{prepared_path} has no gt group: prepare the video with its ground truth")
    gt, image = prepared["gt"], prepared["valid"][...]
    require_arrays(gt, f"{prepared_path}/gt", ["motion_mask", "flow_fwd", "flow_fwd_valid", "depth", "K",
                                               "pose_c2w"])
    fwd = flow["flow_fwd"][...].astype(np.float32)
    consistent, static = flow["consistent"][...], flow["static"][...]
    moving = consistent & ~static
    gt_moving = gt["motion_mask"][...][:-1] & image
    gt_valid = gt["flow_fwd_valid"][...] & image
    gt_flow, gt_depth, gt_K, poses = gt["flow_fwd"][...], gt["depth"][...], gt["K"][...], gt["pose_c2w"][...]
    epe = np.linalg.norm(fwd - gt_flow, axis=-1)
    independent, rot, tdir = [], [], []
    for t in range(len(fwd)):
        T_gt = relative_pose(poses[t], poses[t + 1])
        rigid, _ = rigid_flow(gt_depth[t], gt_K[t], gt_K[t + 1], T_gt)
        independent.append(np.linalg.norm(gt_flow[t] - rigid, axis=-1))
        T = flow["rel_pose"][t]
        rot.append(rotation_error_deg(T[:3, :3], T_gt[:3, :3]))
        if np.linalg.norm(T_gt[:3, 3]) > MIN_TRANSLATION_M:
            tdir.append(direction_error_deg(T[:3, 3], T_gt[:3, 3]))
    independent = np.stack(independent)
    too_slow = gt_moving & (independent < static_abs_px)
    hits = (moving & gt_moving).sum()
    shown = gt_moving.any(axis=(1, 2))
    return {
        "epe": float(epe[gt_valid].mean()),
        "epe_consistent": float(epe[gt_valid & consistent].mean()),
        "consistent_fraction": float(consistent[:, image].mean()),
        "moving_iou": iou(moving, gt_moving),
        "moving_precision": float(hits / max(1, moving.sum())),
        "moving_recall": float(hits / max(1, gt_moving.sum())),
        "detectable_moving_iou": iou(moving, gt_moving, care=~too_slow),
        "static_iou": iou(static, consistent & ~gt_moving),
        "rotation_error_mean_deg": float(np.mean(rot)),
        "rotation_error_max_deg": float(np.max(rot)),
        "translation_direction_error_median_deg": float(np.median(tdir)) if tdir else float("nan"),
        "pose_valid_fraction": float(flow["pose_valid"][...].mean()),
        "gt_moving_share": float(gt_moving[shown][:, image].mean()) if shown.any() else 0.0,
        "gt_moving_too_slow": float(too_slow.sum() / max(1, gt_moving.sum())),
        "gt_independent_px_median": float(np.median(independent[gt_moving])) if gt_moving.any() else 0.0,
    }
