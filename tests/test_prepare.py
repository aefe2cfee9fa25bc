"""prepare: resize + pad geometry, exact intrinsics update, ground-truth resampling, store layout."""

import cv2
import numpy as np
import pytest
import tensorstore as ts
from video_inputs import T, leftovers, smooth_frames, store_files, tiny_K, write_frames_store, write_gt_store

from videomamba_depth.camera import ResizePad, make_K, project
from videomamba_depth.prepare import (
    PrepareConfig,
    interpolation_for,
    nearest_source_pixels,
    prepare_video,
    resize_pad,
)
from videomamba_depth.zarrio import StoreError, open_store


def _blob_frames(width, height, K, points, sigma):
    """One frame with a Gaussian blob at each projected point: ``(1, H, W, 3)`` uint8 and the blob pixels."""
    uv, _ = project(points, K)
    v, u = np.mgrid[0:height, 0:width]
    image = np.zeros((height, width))
    for pu, pv in uv:
        image += np.exp(-((u - pu) ** 2 + (v - pv) ** 2) / (2 * sigma**2))
    frame = np.repeat((255 * image).round().astype(np.uint8)[None, ..., None], 3, axis=-1)
    return frame, uv


def _centroid(image, u0, v0, radius):
    v, u = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    window = (np.abs(u - u0) <= radius) & (np.abs(v - v0) <= radius)
    weights = np.where(window, image.astype(np.float64), 0.0)
    return np.array([(weights * u).sum(), (weights * v).sum()]) / weights.sum()


@pytest.mark.parametrize(
    ("width", "height", "long_edge", "multiple"),
    [
        (191, 143, 112, 14),  # shrink (INTER_AREA), odd sizes, padding on both axes
        (63, 47, 140, 14),  # enlarge (INTER_LINEAR), odd sizes
        (143, 191, 98, 8),  # portrait
    ],
)
def test_K_update_matches_the_resized_image(tmp_path, width, height, long_edge, multiple):
    """Render blobs at projected 3-D points, prepare: the blobs sit where the prepared K projects them."""
    K = make_K(0.8 * width, 0.85 * width, 0.47 * width, 0.53 * height)
    points = np.array([[x, y, 2.0] for x in (-0.6, 0.55) for y in (-0.5, 0.45)])
    # At least 2 output pixels wide, so the centroid is well resolved; far apart, so blobs do not overlap.
    sigma = 2.0 * max(1.0, max(width, height) / long_edge)
    frame, _ = _blob_frames(width, height, K, points, sigma)
    frames_path = write_frames_store(tmp_path / "f.zarr", np.repeat(frame, 3, axis=0), K)
    out = prepare_video(frames_path, tmp_path / "p.zarr", PrepareConfig(long_edge, multiple))
    group = open_store(out, "prepared")
    geometry = ResizePad.from_attrs(group.attrs["geometry"])
    assert geometry == ResizePad.fit(width, height, long_edge, multiple)
    (pw, ph), pad = geometry.padded_size, geometry.pad
    assert max(geometry.resized_size) == long_edge and pw % multiple == 0 and ph % multiple == 0
    assert group["rgb"].shape == (3, ph, pw, 3)
    K_prepared = group["K"][:]
    np.testing.assert_array_equal(K_prepared, np.broadcast_to(geometry.apply_K(K), (3, 3, 3)))
    np.testing.assert_allclose(geometry.invert_K(K_prepared[0]), K, atol=1e-12)
    image = group["rgb"][0, ..., 0]
    uv_prepared, _ = project(points, K_prepared[0])
    radius = 2.5 * sigma * geometry.scale[0]
    for u, v in uv_prepared:
        # uint8 blobs land within ~0.04 px; ignoring the half-pixel term of apply_K errs by >= 0.23 px here.
        np.testing.assert_allclose(_centroid(image, u, v, radius), [u, v], atol=0.08)
    # Padding is exactly zero, and `valid` marks the image pixels.
    valid = group["valid"][:]
    np.testing.assert_array_equal(valid, geometry.valid_mask())
    assert valid.sum() == geometry.resized_size[0] * geometry.resized_size[1]
    assert not group["rgb"][:][:, ~valid].any()
    assert valid[pad[1], pad[0]] and not valid[: pad[1]].any() and not valid[:, : pad[0]].any()


def test_rgb_is_cv2_resize_then_zero_pad(tmp_path):
    frames = smooth_frames(T, 47, 63)
    write_frames_store(tmp_path / "f.zarr", frames)
    out = prepare_video(tmp_path / "f.zarr", tmp_path / "p.zarr", PrepareConfig(32, 14))
    group = open_store(out, "prepared")
    geometry = ResizePad.fit(63, 47, 32, 14)
    assert interpolation_for(geometry) == cv2.INTER_AREA and group.attrs["interpolation"] == "area"
    left, top, right, bottom = geometry.pad
    expected = np.stack([
        np.pad(cv2.resize(f, geometry.resized_size, interpolation=cv2.INTER_AREA),
               ((top, bottom), (left, right), (0, 0)))
        for f in frames
    ])
    np.testing.assert_array_equal(group["rgb"][:], expected)
    np.testing.assert_array_equal(resize_pad(frames, geometry), expected)
    assert interpolation_for(ResizePad.fit(63, 47, 100, 14)) == cv2.INTER_LINEAR
    # Missing intrinsics stay missing; the store is still complete and few-file.
    assert group.attrs["intrinsics"] == "missing" and "K" not in group
    assert group.attrs["fps"] == 10.0 and group.attrs["num_frames"] == T
    files = ["corrupt/c.0", "corrupt/zarr.json", "rgb/c.0.0.0.0", "rgb/zarr.json", "timestamps/c.0",
             "timestamps/zarr.json", "valid/c.0.0", "valid/zarr.json", "zarr.json"]
    assert store_files(out) == files


def test_nearest_source_pixels_are_nearest_centres():
    for width, height, long_edge in ((63, 47, 40), (63, 47, 150), (64, 48, 64)):
        geometry = ResizePad.fit(width, height, long_edge, 14)
        rows, cols = nearest_source_pixels(geometry)
        sx, sy = geometry.scale
        centre_u = (np.arange(geometry.resized_size[0]) + 0.5) / sx - 0.5
        centre_v = (np.arange(geometry.resized_size[1]) + 0.5) / sy - 0.5
        assert np.abs(cols - centre_u).max() <= 0.5 + 1e-9 and np.abs(rows - centre_v).max() <= 0.5 + 1e-9
        assert cols.min() >= 0 and cols.max() < width and rows.min() >= 0 and rows.max() < height


def test_ground_truth_resampled_to_prepared_geometry(tmp_path):
    width, height = 63, 47
    frames = smooth_frames(T, height, width)
    K = tiny_K(width, height)
    write_frames_store(tmp_path / "f.zarr", frames, K)
    gt = write_gt_store(tmp_path / "gt.zarr", T, height, width)
    out = prepare_video(tmp_path / "f.zarr", tmp_path / "p.zarr", PrepareConfig(100, 14),
                        ground_truth=tmp_path / "gt.zarr")
    group = open_store(out, "prepared")
    assert group.attrs["ground_truth"] == str(tmp_path / "gt.zarr")
    geometry = ResizePad.from_attrs(group.attrs["geometry"])
    sx, sy = geometry.scale
    (w, h), (left, top) = geometry.resized_size, geometry.pad[:2]
    sub = group["gt"]
    valid = geometry.valid_mask()
    depth = sub["depth"][:]
    assert depth.shape == (T, *valid.shape) and depth.dtype == np.float32
    assert (depth[:, ~valid] == 0).all() and (depth[:, valid] > 0).all()
    # Every prepared depth is one of the original values (no mixing), taken from the nearest pixel centre:
    # the test pattern encodes the source pixel as depth = 1 + u + 100 v + 10000 t.
    t_idx, y_idx, x_idx = np.nonzero(np.broadcast_to(valid, depth.shape))
    src_v, src_u = np.divmod(depth[t_idx, y_idx, x_idx].astype(np.int64) - 1 - 10000 * t_idx, 100)
    centre_u = (x_idx - left + 0.5) / sx - 0.5
    centre_v = (y_idx - top + 0.5) / sy - 0.5
    assert np.abs(src_u - centre_u).max() <= 0.5 + 1e-9 and np.abs(src_v - centre_v).max() <= 0.5 + 1e-9
    # Flow vectors scale with the image; masks stay boolean; padding False.
    flow = sub["flow_fwd"][:]
    assert flow.shape == (T - 1, *valid.shape, 2)
    rows, cols = nearest_source_pixels(geometry)
    np.testing.assert_allclose(flow[:, top : top + h, left : left + w, 0],
                               gt["flow_fwd"][:, rows][:, :, cols, 0] * sx, rtol=1e-6)
    np.testing.assert_allclose(flow[:, top : top + h, left : left + w, 1], -1.0 * sy, rtol=1e-6)
    assert not flow[:, ~valid].any()
    for name in ("motion_mask", "flow_fwd_valid"):
        mask = sub[name][:]
        assert mask.dtype == bool and not mask[:, ~valid].any()
        np.testing.assert_array_equal(mask[:, top : top + h, left : left + w], gt[name][:, rows][:, :, cols])
    np.testing.assert_array_equal(sub["pose_c2w"][:], gt["pose_c2w"])
    np.testing.assert_allclose(sub["K"][:], geometry.apply_K(gt["K"]))
    assert sub["depth"].metadata.dimension_names == ("t", "y", "x") and sub["depth"].attrs["units"] == "m"
    # An independent Zarr v3 reader agrees, for nested arrays too.
    for name in ("rgb", "K", "valid", "gt/depth", "gt/flow_fwd"):
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out / name)}}
        np.testing.assert_array_equal(ts.open(spec).result().read().result(), group[name][:])


def test_ground_truth_of_another_size_is_rejected(tmp_path):
    write_frames_store(tmp_path / "f.zarr", smooth_frames(T, 48, 64))
    write_gt_store(tmp_path / "gt.zarr", T, 40, 64)
    message = r"gt\.zarr: ground truth 'depth' has shape \(10, 40, 64\), but .*f\.zarr"
    with pytest.raises(StoreError, match=message):
        prepare_video(tmp_path / "f.zarr", tmp_path / "p.zarr", PrepareConfig(),
                      ground_truth=tmp_path / "gt.zarr")
    assert leftovers(tmp_path, "p.zarr") == []


def test_missing_frames_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match=r"f\.zarr: no such store"):
        prepare_video(tmp_path / "f.zarr", tmp_path / "p.zarr", PrepareConfig())
    assert leftovers(tmp_path, "p.zarr") == []


def test_config_rejects_non_positive_sizes():
    with pytest.raises(ValueError, match="must be positive"):
        PrepareConfig.from_dict({"long_edge": 0})
