"""Camera motion from flow + teacher depth, the rigid flow it implies, and the static-motion mask.

For a frame pair (t, t+1): pixels of frame t with consistent flow and valid teacher depth are lifted to 3-D
with depth_t and K_t; their flow targets x + f(x) are 2-D observations in frame t+1. PnP-RANSAC on these
3-D–2-D correspondences gives T_{t+1<-t}; independently moving objects are RANSAC outliers as long as the
static background dominates the sampled pixels.

Scale: a teacher whose depth for frame t is off by a global factor s (per-frame scale jitter) lifts every
point s times too far, and PnP then returns the same rotation with s times the translation. The rigid flow
project(T · backproject(depth_t)) is invariant to that s, so the static test below stays self-consistent
under scale jitter: only depth errors that vary *within* a frame perturb it, which the parallax-relative
tolerance absorbs. The translation stored in ``rel_pose`` is therefore in the teacher's (per-frame) metric
scale, not necessarily the true one.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from videomamba_depth.camera import backproject, pixel_grid, project, transform_points

# RANSAC hypotheses come from EPnP (closed form, fast, stable for planar and non-planar point sets); the
# final pose is refined with Levenberg–Marquardt on the inliers.
PNP_RANSAC_FLAG = cv2.SOLVEPNP_EPNP
# Fewer correspondences than this cannot support a pose, whatever pnp_min_inliers says (EPnP needs 4 points,
# OpenCV's RANSAC draws 5 per hypothesis).
MIN_PNP_POINTS = 6


@dataclass(frozen=True)
class PoseEstimate:
    """Relative pose of one frame pair and how well it is supported.

    ``T`` is ``(4, 4)`` float64 ``T_{t+1<-t}`` (identity when ``ok`` is False). ``num_points`` is how many
    correspondences were sampled, ``num_inliers`` how many agree with ``T`` within the reprojection
    threshold, ``reason`` says why the pose is unknown ("" when ``ok``).
    """

    T: np.ndarray
    ok: bool
    num_points: int
    num_inliers: int
    reason: str = ""


def sample_pixels(mask: np.ndarray, stride: int, max_points: int) -> np.ndarray:
    """``(N, 2)`` int (row, col) of True pixels of ``mask`` on a ``stride`` grid, at most ``max_points``.

    The grid is offset by half a stride so it does not hug the image border. Thinning to ``max_points`` keeps
    evenly spaced grid points (deterministic: same inputs, same pose).
    """
    grid = np.zeros_like(mask)
    grid[stride // 2 :: stride, stride // 2 :: stride] = True
    rows, cols = np.nonzero(mask & grid)
    if len(rows) > max_points:
        keep = np.linspace(0, len(rows) - 1, max_points).round().astype(np.intp)
        rows, cols = rows[keep], cols[keep]
    return np.stack([rows, cols], axis=-1)


def _to_matrix(rvec: np.ndarray, tvec: np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = tvec.ravel()
    return T


def estimate_relative_pose(
    depth: np.ndarray,
    K_a: np.ndarray,
    K_b: np.ndarray,
    flow: np.ndarray,
    mask: np.ndarray,
    *,
    stride: int,
    max_points: int,
    reproj_px: float,
    iterations: int,
    confidence: float,
    min_inliers: int,
) -> PoseEstimate:
    """``T_{b<-a}`` from depth of frame a, its flow to frame b, and both intrinsics.

    ``depth`` ``(H, W)`` metres (z) of frame a; ``K_a``, ``K_b`` ``(3, 3)``; ``flow`` ``(H, W, 2)`` pixels
    a -> b; ``mask`` ``(H, W)`` bool: pixels usable as correspondences (consistent flow, positive depth).
    ``reproj_px`` is the RANSAC inlier threshold in pixels of frame b. The pose is unknown (identity,
    ``ok=False``) when fewer than ``max(min_inliers, MIN_PNP_POINTS)`` points are available or agree.
    """
    need = max(min_inliers, MIN_PNP_POINTS)
    rc = sample_pixels(mask, stride, max_points)
    n = len(rc)
    if n < need:
        return PoseEstimate(np.eye(4), False, n, 0, f"{n} usable correspondences, need {need}")
    rows, cols = rc[:, 0], rc[:, 1]
    points = backproject(depth, K_a)[rows, cols]
    observed = np.stack([cols + flow[rows, cols, 0], rows + flow[rows, cols, 1]], axis=-1).astype(np.float64)
    ok, rvec, tvec, inliers = cv2.solvePnPRansac(
        points,
        observed,
        K_b,
        None,
        iterationsCount=iterations,
        reprojectionError=reproj_px,
        confidence=confidence,
        flags=PNP_RANSAC_FLAG,
    )
    if not ok or inliers is None or len(inliers) < need:
        got = 0 if inliers is None else len(inliers)
        return PoseEstimate(np.eye(4), False, n, got, f"PnP-RANSAC found {got} inliers of {n}, need {need}")
    # RANSAC's inlier set comes from a minimal-sample hypothesis; refine on it, re-select the inliers with the
    # refined pose (usually recovers a few percent of the points) and refine once more.
    inl = inliers[:, 0]
    for _ in range(2):
        rvec, tvec = cv2.solvePnPRefineLM(points[inl], observed[inl], K_b, None, rvec, tvec)
        reproj = cv2.projectPoints(points, rvec, tvec, K_b, None)[0][:, 0]
        inl = np.flatnonzero(np.linalg.norm(reproj - observed, axis=-1) < reproj_px)
        if len(inl) < need:
            reason = f"refined pose keeps {len(inl)} inliers of {n}, need {need}"
            return PoseEstimate(np.eye(4), False, n, len(inl), reason)
    return PoseEstimate(_to_matrix(rvec, tvec), True, n, len(inl))


def rigid_flow(
    depth: np.ndarray, K_a: np.ndarray, K_b: np.ndarray, T: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Flow a -> b of a static scene with ``depth`` ``(H, W)`` in camera a, moved by ``T`` = ``T_{b<-a}``.

    Returns ``(flow, parallax)``: ``flow`` ``(H, W, 2)`` float32 pixels (NaN where the depth is not positive
    or the point ends behind camera b), and ``parallax`` ``(H, W)`` float32, the magnitude of the part of
    that flow caused by the translation (rigid flow minus the depth-independent rotation-only flow). A
    relative depth error e changes the rigid flow by about e · parallax.
    """
    grid = pixel_grid(*depth.shape)
    valid = np.isfinite(depth) & (depth > 0)
    d = np.where(valid, depth, 1.0)
    uv_b, z_b = project(transform_points(T, backproject(d, K_a)), K_b)
    rot_only = T.copy()
    rot_only[:3, 3] = 0.0
    uv_rot, _ = project(transform_points(rot_only, backproject(np.ones_like(d), K_a)), K_b)
    flow = uv_b - grid
    flow[~(valid & (z_b > 0))] = np.nan
    parallax = np.linalg.norm(uv_b - uv_rot, axis=-1)
    return flow.astype(np.float32), parallax.astype(np.float32)


def static_mask(
    flow: np.ndarray,
    flow_rigid: np.ndarray,
    parallax: np.ndarray,
    usable: np.ndarray,
    *,
    abs_px: float,
    rel: float,
) -> np.ndarray:
    """``(H, W)`` bool: usable pixels whose flow agrees with the rigid flow.

    ``flow``, ``flow_rigid`` ``(H, W, 2)`` pixels; ``parallax`` ``(H, W)`` pixels (see :func:`rigid_flow`);
    ``usable`` ``(H, W)`` bool (consistent flow and valid teacher depth). The tolerance is
    ``abs_px + rel · parallax``: ``abs_px`` covers flow noise, ``rel`` the teacher's relative depth error
    within a frame, which moves the rigid flow only along its translational (parallax) component.
    """
    err = np.linalg.norm(flow - flow_rigid, axis=-1)
    with np.errstate(invalid="ignore"):
        agree = err < abs_px + rel * parallax
    return usable & agree
