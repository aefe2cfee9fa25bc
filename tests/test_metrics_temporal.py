"""Temporal metrics (TAE, flow-warped error, jitter, scale drift, change histogram) on analytic scenes."""

import math

import numpy as np
import pytest

from videomamba_depth.camera import backproject, make_K, relative_pose
from videomamba_depth.metrics import (
    flow_warped_error,
    pose_c2w_from_relative,
    relative_change_histogram,
    reprojection_error,
    sample_bilinear,
    scale_drift,
    static_jitter,
    tae,
)


def render_planes(K, pose_c2w, H, W, planes):
    """z-depth ``(H, W)`` of the nearest plane hit by each pixel ray.

    planes: (normal, offset, bounds) with world points ``normal . X = offset``; ``bounds`` is None (infinite)
    or ``((xmin, xmax), (ymin, ymax))`` in world x, y.
    """
    rays = backproject(np.ones((H, W)), K) @ pose_c2w[:3, :3].T  # z = 1 in the camera: lambda is z-depth
    centre = pose_c2w[:3, 3]
    depth = np.full((H, W), np.inf)
    for normal, offset, bounds in planes:
        normal = np.asarray(normal, dtype=np.float64)
        lam = (offset - normal @ centre) / (rays @ normal)
        hit = lam > 0
        if bounds is not None:
            X = centre + lam[..., None] * rays
            (x0, x1), (y0, y1) = bounds
            hit &= (X[..., 0] > x0) & (X[..., 0] < x1) & (X[..., 1] > y0) & (X[..., 1] < y1)
        depth = np.where(hit & (lam < depth), lam, depth)
    assert np.isfinite(depth).all()
    return depth


def translation(x, y, z=0.0):
    pose = np.eye(4)
    pose[:3, 3] = [x, y, z]
    return pose


def roll(quarter_turns):
    """Camera-to-world rotation about the optical axis by 90 degrees per quarter turn."""
    c, s = np.cos(quarter_turns * np.pi / 2), np.sin(quarter_turns * np.pi / 2)
    pose = np.eye(4)
    pose[:2, :2] = [[c, -s], [s, c]]
    return pose


BACKGROUND = ((0.0, 0.0, 1.0), 4.0, None)
BOX = ((0.0, 0.0, 1.0), 2.0, ((-0.35, 0.35), (-0.35, 0.35)))  # a square 2 m in front of a wall at 4 m


def occluding_scene():
    """Camera translating by (0.1, -0.1) m per frame, fx = 40: the box moves 2 px, the wall 1 px per frame
    (whole pixels, so rounding is exact), and the box slides over the wall (occlusions both ways)."""
    H = W = 32
    K = make_K(40.0, 40.0, 15.5, 15.5)
    poses = np.stack([translation(0.1 * t, -0.1 * t) for t in range(5)])
    depth = np.stack([render_planes(K, p, H, W, [BACKGROUND, BOX]) for p in poses])
    return depth, K, poses


def test_tae_is_zero_for_perfect_depth_with_occlusions():
    depth, K, poses = occluding_scene()
    assert len(np.unique(depth)) == 2 and not np.array_equal(depth[0], depth[1])
    result = tae(depth, K, poses)
    assert result.per_pair.shape == (4,)
    np.testing.assert_allclose(result.per_pair, 0.0, atol=1e-10)
    # Per-frame K (the same here) and poses chained from relative poses give the same answer.
    rel = np.stack([relative_pose(poses[t], poses[t + 1]) for t in range(4)])
    again = tae(depth, np.stack([K] * 5), pose_c2w_from_relative(rel))
    np.testing.assert_allclose(again.per_pair, 0.0, atol=1e-10)


def test_tae_of_a_per_frame_scale_wobble_under_pure_rotation():
    """Rolling a square camera by 90 degrees about its centred principal point maps pixel centres onto pixel
    centres, and keeps z. Depth s_t * gt: forward |1 - s_t / s_{t+1}|, backward |1 - s_{t+1} / s_t|."""
    H = W = 16
    K = make_K(20.0, 20.0, 7.5, 7.5)
    plane = ((0.2, -0.1, 1.0), 3.0, None)
    poses = np.stack([roll(t) for t in range(4)])
    gt = np.stack([render_planes(K, p, H, W, [plane]) for p in poses])
    assert np.ptp(gt[0]) > 0.5  # a tilted plane, so the rotation really moves depths around
    np.testing.assert_allclose(tae(gt, K, poses).per_pair, 0.0, atol=1e-10)
    s = np.array([1.0, 1.1, 1.0, 1.1])
    result = tae(s[:, None, None] * gt, K, poses)
    expected = 100 * (1 / 11 + 1 / 10) / 2  # 9.545...%
    np.testing.assert_allclose(result.per_pair, expected, rtol=1e-10)
    assert result.mean == pytest.approx(expected)


def test_tae_ignores_invalid_pixels_and_handles_no_overlap():
    depth, K, poses = occluding_scene()
    valid = np.ones_like(depth, dtype=bool)
    valid[:, :6, :] = False
    dirty = depth.copy()
    dirty[:, :6, :] = np.where(np.arange(32) % 2, np.nan, -1.0)
    np.testing.assert_allclose(tae(dirty, K, poses, valid).per_pair, 0.0, atol=1e-10)
    # Frame 2 has nothing valid: pairs (1, 2) and (2, 3) have nothing to compare and are skipped.
    valid[2] = False
    result = tae(depth * np.array([1, 1.1, 1, 1, 1])[:, None, None], K, poses, valid)
    assert np.isnan(result.per_pair[1:3]).all() and np.isfinite(result.per_pair[[0, 3]]).all()
    assert result.mean == pytest.approx(np.mean(result.per_pair[[0, 3]]))
    with pytest.raises(ValueError, match=r"pose_c2w must be \(5, 4, 4\)"):
        tae(depth, K, poses[:4])


def reference_reprojection_error(src, K_src, T, dst, K_dst):
    """Per-pixel loops: project each source pixel, keep the nearest point per target pixel, compare."""
    H, W = dst.shape
    nearest = {}
    for v in range(H):
        for u in range(W):
            z = src[v, u]
            p = np.array([(u - K_src[0, 2]) / K_src[0, 0] * z, (v - K_src[1, 2]) / K_src[1, 1] * z, z])
            q = T[:3, :3] @ p + T[:3, 3]
            if q[2] <= 0:
                continue
            u2 = round(K_dst[0, 0] * q[0] / q[2] + K_dst[0, 2])
            v2 = round(K_dst[1, 1] * q[1] / q[2] + K_dst[1, 2])
            if 0 <= u2 < W and 0 <= v2 < H and q[2] < nearest.get((v2, u2), np.inf):
                nearest[(v2, u2)] = q[2]
    return np.mean([abs(dst[v, u] - z) / dst[v, u] for (v, u), z in nearest.items()])


def test_reprojection_error_matches_a_per_pixel_reference():
    rng = np.random.default_rng(0)
    H, W = 7, 9
    src, dst = rng.uniform(1.0, 3.0, (2, H, W))
    K_src, K_dst = make_K(8.0, 8.5, 4.1, 2.9), make_K(7.5, 8.0, 3.8, 3.2)
    angle = 0.2
    T = np.eye(4)
    T[:3, :3] = [[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]]
    T[:3, 3] = [0.3, -0.1, 0.2]
    ok = np.ones((H, W), dtype=bool)
    got = reprojection_error(src, ok, K_src, T, dst, ok, K_dst)
    assert got == pytest.approx(reference_reprojection_error(src, K_src, T, dst, K_dst), rel=1e-12)


def test_pose_chain_roundtrip():
    rng = np.random.default_rng(1)
    rel = []
    for _ in range(3):
        angle = rng.uniform(-0.3, 0.3)
        T = np.eye(4)
        T[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
        T[:3, 3] = rng.normal(size=3)
        rel.append(T)
    poses = pose_c2w_from_relative(np.stack(rel))
    assert poses.shape == (4, 4, 4)
    np.testing.assert_allclose(poses[0], np.eye(4))
    for t in range(3):
        np.testing.assert_allclose(relative_pose(poses[t], poses[t + 1]), rel[t], atol=1e-12)


def test_sample_bilinear():
    image = np.arange(12.0).reshape(3, 4)  # value = 4 v + u, linear: bilinear sampling is exact
    ok = np.ones_like(image, dtype=bool)
    x = np.array([0.5, 3.0, 2.25, 3.5, -0.1])
    y = np.array([0.0, 2.0, 1.5, 1.0, 1.0])
    values, sampled = sample_bilinear(image, ok, x, y)
    np.testing.assert_array_equal(sampled, [True, True, True, False, False])  # last two outside
    np.testing.assert_allclose(values[:3], 4 * y[:3] + x[:3])
    ok[1, 1] = False
    values, sampled = sample_bilinear(image, ok, np.array([1.0, 0.0, 0.5]), np.array([0.0, 0.0, 0.5]))
    # Integer positions next to the bad pixel still sample; a position that mixes it in does not.
    np.testing.assert_array_equal(sampled, [True, True, False])
    np.testing.assert_allclose(values, [1.0, 0.0, 0.0])


def test_flow_warped_error_with_integer_flow():
    """Frame 1 is frame 0 shifted by (2, 1) px and 10% deeper: error log(1.1) wherever frame 0's pixel lands
    inside frame 1 and is consistent."""
    rng = np.random.default_rng(2)
    d0 = rng.uniform(1.0, 4.0, (6, 8))
    d1 = np.full_like(d0, np.nan)  # pixels of frame 1 no point of frame 0 lands on are never read
    d1[1:, 2:] = 1.1 * d0[:-1, :-2]
    flow = np.zeros((1, 6, 8, 2))
    flow[..., 0], flow[..., 1] = 2.0, 1.0
    consistent = np.ones((1, 6, 8), dtype=bool)
    consistent[0, 0, 0] = False
    result = flow_warped_error(np.stack([d0, d1]), flow, consistent)
    assert result.mean == pytest.approx(math.log(1.1), rel=1e-12)


def test_flow_warped_error_is_exact_on_planes_with_subpixel_flow():
    """Inverse depth of a plane is affine in pixel coordinates, so bilinear sampling of disparity is exact."""
    H, W = 6, 7
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    disparity_1 = 0.3 + 0.02 * u - 0.01 * v
    flow = np.zeros((1, H, W, 2))
    flow[..., 0], flow[..., 1] = 0.37, -0.61
    d0 = 1.0 / (0.3 + 0.02 * (u + 0.37) - 0.01 * (v - 0.61))
    consistent = np.ones((1, H, W), dtype=bool)
    depth = np.stack([d0, 1.0 / disparity_1])
    assert flow_warped_error(depth, flow, consistent).mean == pytest.approx(0.0, abs=1e-12)
    depth[0] *= 1.2
    result = flow_warped_error(depth, flow, consistent)
    assert result.mean == pytest.approx(math.log(1.2), rel=1e-12)


def test_jitter_of_constant_depth_is_zero_and_zero_flow_warping_is_jitter():
    rng = np.random.default_rng(3)
    constant = np.broadcast_to(rng.uniform(1.0, 4.0, (5, 6)), (4, 5, 6))
    static = rng.uniform(size=(3, 5, 6)) > 0.3
    assert static_jitter(constant, static).mean == 0.0
    flickering = constant * np.exp(rng.normal(0.0, 0.05, (4, 5, 6)))
    jitter = static_jitter(flickering, static)
    warped = flow_warped_error(flickering, np.zeros((3, 5, 6, 2)), static)
    np.testing.assert_allclose(warped.per_pair, jitter.per_pair, rtol=1e-12)


def test_jitter_hand_value_and_masks():
    depth = np.ones((3, 2, 2))
    depth[1] = math.e**0.1  # frame 0 -> 1: +0.1 everywhere
    depth[2] = depth[1]
    depth[2, 0, 0] = 50.0  # frame 1 -> 2: a jump at (0, 0), masked out below
    static = np.ones((2, 2, 2), dtype=bool)
    static[1, 0, 0] = False
    result = static_jitter(depth, static)
    np.testing.assert_allclose(result.per_pair, [0.1, 0.0], atol=1e-12)
    assert result.mean == pytest.approx(0.05)
    static[1] = False  # nothing static in pair (1, 2): NaN there, skipped by the mean
    result = static_jitter(depth, static)
    assert math.isnan(result.per_pair[1]) and result.mean == pytest.approx(0.1)


def test_scale_drift_curve_and_growing_window_std():
    gt = np.random.default_rng(4).uniform(1.0, 5.0, (4, 3, 3))
    s = np.array([1.0, 1.2, 0.9, 1.0])
    valid = np.ones_like(gt, dtype=bool)
    valid[3] = False  # no pixels: NaN scale, window std unchanged
    drift = scale_drift(gt / s[:, None, None], gt, valid)
    np.testing.assert_allclose(drift.scale[:3], s[:3])
    assert math.isnan(drift.scale[3])
    expected = [0.0, 0.1, np.std([1.0, 1.2, 0.9]), np.std([1.0, 1.2, 0.9])]
    np.testing.assert_allclose(drift.window_std, expected, atol=1e-12)


def test_relative_change_histogram():
    depth = np.ones((2, 1, 4))
    depth[1, 0] = [0.85, 1.0, 1.05, 2.0]  # changes -0.15, 0, 0.05, +1.0 (clipped into the last bin)
    hist = relative_change_histogram(depth, bins=4, max_change=0.2)
    np.testing.assert_allclose(hist.edges, [-0.2, -0.1, 0.0, 0.1, 0.2])
    np.testing.assert_array_equal(hist.counts, [1, 0, 2, 1])
    rows = hist.rows()
    assert rows[0] == {"relative_change": pytest.approx(-0.15), "fraction": 0.25}
    assert sum(r["fraction"] for r in rows) == pytest.approx(1.0)
    mask = np.array([[[True, True, False, False]]])
    np.testing.assert_array_equal(relative_change_histogram(depth, mask, bins=4).counts, [1, 0, 1, 0])
