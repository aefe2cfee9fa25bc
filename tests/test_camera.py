"""Pinhole conventions, intrinsics loading and the exact resize + pad update of K."""

import json

import cv2
import numpy as np
import pytest

from videomamba_depth.camera import (
    IntrinsicsError,
    ResizePad,
    backproject,
    load_intrinsics,
    make_K,
    per_frame_K,
    project,
    relative_pose,
    save_intrinsics_json,
    transform_points,
    validate_K,
)


def test_resize_pad_geometry():
    g = ResizePad.fit(256, 192, long_edge=252, multiple=14)
    assert g.resized_size == (252, 189) and g.padded_size == (252, 196)
    assert g.pad == (0, 3, 0, 4)
    g = ResizePad.fit(191, 255, long_edge=224, multiple=14)  # portrait, odd sizes
    assert g.resized_size[1] == 224 and g.padded_size[0] % 14 == 0 and g.padded_size[1] % 14 == 0
    assert g.valid_mask().sum() == g.resized_size[0] * g.resized_size[1]
    assert ResizePad.from_attrs(g.to_attrs()) == g


def test_apply_K_matches_resampled_image():
    """Render a dot at a known projection, resize + pad the image, find the dot: it sits where K' says."""
    W, H = 320, 240
    K = make_K(300.0, 310.0, 161.3, 117.8)
    point = np.array([0.37, -0.21, 2.0])
    (u, v), _ = project(point, K)
    yy, xx = np.mgrid[0:H, 0:W]
    image = np.exp(-((xx - u) ** 2 + (yy - v) ** 2) / (2 * 6.0**2))
    g = ResizePad.fit(W, H, long_edge=200, multiple=14)
    small = cv2.resize(image, g.resized_size, interpolation=cv2.INTER_AREA)
    left, top, right, bottom = g.pad
    padded = np.pad(small, ((top, bottom), (left, right)))
    yy, xx = np.mgrid[0 : padded.shape[0], 0 : padded.shape[1]]
    centroid = np.array([(padded * xx).sum(), (padded * yy).sum()]) / padded.sum()
    (u2, v2), _ = project(point, g.apply_K(K))
    np.testing.assert_allclose(centroid, [u2, v2], atol=0.02)
    np.testing.assert_allclose(g.invert_K(g.apply_K(K)), K, atol=1e-12)


def test_backproject_project_roundtrip_and_relative_pose():
    K = make_K(200.0, 210.0, 31.5, 23.5)
    depth = np.random.default_rng(0).uniform(1, 5, (48, 64))
    pts = backproject(depth, K)
    uv, z = project(pts, K)
    v, u = np.mgrid[0:48, 0:64]
    np.testing.assert_allclose(uv[..., 0], u, atol=1e-9)
    np.testing.assert_allclose(uv[..., 1], v, atol=1e-9)
    np.testing.assert_allclose(z, depth)
    a, b = np.eye(4), np.eye(4)
    b[:3, 3] = [1.0, 0.0, 0.0]  # camera b is 1 m to the right of camera a
    T_ba = relative_pose(a, b)
    np.testing.assert_allclose(transform_points(T_ba, np.array([0.0, 0.0, 1.0])), [-1.0, 0.0, 1.0])


def test_intrinsics_files(tmp_path):
    K = make_K(100, 101, 50, 40)
    save_intrinsics_json(tmp_path / "k.json", K, 100, 80)
    np.testing.assert_array_equal(load_intrinsics(tmp_path / "k.json"), K)
    (tmp_path / "f.json").write_text(json.dumps({"fx": 100, "fy": 101, "cx": 50, "cy": 40}))
    np.testing.assert_array_equal(load_intrinsics(tmp_path / "f.json"), K)
    np.save(tmp_path / "k.npy", np.stack([K, K, K]))
    assert load_intrinsics(tmp_path / "k.npy").shape == (3, 3, 3)
    assert per_frame_K(K, 5, "k").shape == (5, 3, 3)
    with pytest.raises(IntrinsicsError, match="3 per-frame intrinsics for a video of 4 frames"):
        per_frame_K(np.stack([K, K, K]), 4, "k.npy")


@pytest.mark.parametrize(
    ("K", "message"),
    [
        (np.eye(4), "must be 3x3"),
        (make_K(-1, 100, 10, 10), "focal lengths must be positive"),
        (make_K(0, 100, 10, 10), "focal lengths must be positive"),
        (make_K(np.nan, 100, 10, 10), "NaN or inf"),
        (np.array([[100, 0, 1], [0, 100, 1], [0, 1, 1.0]]), "last row"),
    ],
)
def test_validate_K_rejects(K, message):
    with pytest.raises(IntrinsicsError, match=message):
        validate_K(K, "cam.json")


def test_bad_intrinsics_files(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(IntrinsicsError, match=r"bad\.json: cannot parse"):
        load_intrinsics(tmp_path / "bad.json")
    with pytest.raises(IntrinsicsError, match=r"missing\.json: cannot read"):
        load_intrinsics(tmp_path / "missing.json")
    (tmp_path / "k.txt").write_text("1")
    with pytest.raises(IntrinsicsError, match=r"must be a \.json or \.npy"):
        load_intrinsics(tmp_path / "k.txt")
    (tmp_path / "o.json").write_text(json.dumps({"focal": 1}))
    with pytest.raises(IntrinsicsError, match="needs 'K'"):
        load_intrinsics(tmp_path / "o.json")
