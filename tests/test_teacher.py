"""Teacher interface, synthetic teacher, the teacher store and its bad-input handling."""

from __future__ import annotations

import numpy as np
import pytest

from videomamba_depth.camera import IntrinsicsError, ResizePad, make_K
from videomamba_depth.teacher import TEACHERS, TeacherConfig, TeacherOutputError, VideoContext, run_teacher
from videomamba_depth.teacher.run import image_window
from videomamba_depth.teacher.synthetic import SyntheticTeacher, stable_video_hash
from videomamba_depth.zarrio import (
    StoreError,
    create_static_array,
    create_time_array,
    open_store,
    writing_store,
)

PAD = (3, 2, 4, 1)  # left, top, right, bottom
# Every corruption of the synthetic teacher switched off: its depth is the ground truth.
NO_CORRUPTION = {"synthetic_scale_jitter": 0.0, "synthetic_scale_drift": 0.0, "synthetic_noise_std": 0.0,
                 "synthetic_edge_width": 0.0, "synthetic_focal_error": 0.0,
                 "synthetic_brightness_coupling": 0.0, "synthetic_texture_coupling": 0.0}


def scene(T: int = 12, h: int = 30, w: int = 40) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A background plane at 4-6 m with a 2 m square moving right; rgb, depth (T, h, w), K (3, 3)."""
    v, u = np.mgrid[0:h, 0:w]
    depth = np.broadcast_to(4.0 + 2.0 * v / h, (T, h, w)).astype(np.float32).copy()
    for t in range(T):
        x0 = 4 + t
        depth[t, 8:20, x0 : x0 + 12] = 2.0
    rgb = np.clip(640 / depth[..., None] * np.array([1.0, 0.8, 0.6]) + (u % 7)[None, ..., None] * 5, 0, 255)
    return rgb.astype(np.uint8), depth, make_K(30.0, 30.0, (w - 1) / 2, (h - 1) / 2)


def write_prepared(path, rgb, *, K=None, gt_depth=None, gt_K=None, pad=PAD, intrinsics=None):
    """A prepared store as the prepare stage writes it (SPEC 'prepared' schema), padding ``pad``."""
    T, h, w = rgb.shape[:3]
    left, top, right, bottom = pad
    geom = ResizePad((w, h), (w, h), (w + left + right, h + top + bottom), pad)
    W, H = geom.padded_size

    def padded(a):
        out = np.zeros((a.shape[0], H, W, *a.shape[3:]), dtype=a.dtype)
        out[:, top : top + h, left : left + w] = a
        return out

    if intrinsics is None:
        intrinsics = "missing" if K is None else "given"
    attrs = {"geometry": geom.to_attrs(), "fps": 24.0, "intrinsics": intrinsics, "num_frames": T,
             "provenance": {"stage": "prepare"}}
    with writing_store(path, "prepared", attrs) as g:
        arr = create_time_array(g, "rgb", (H, W, 3), "uint8", dims=("t", "y", "x", "c"), units="sRGB",
                                description="frames", length=T)
        arr[:] = padded(rgb)
        if K is not None:
            Ks = geom.apply_K(np.broadcast_to(K, (T, 3, 3)) if np.ndim(K) == 2 else K)
            arr = create_time_array(g, "K", (3, 3), "float64", dims=("t", "i", "j"), units="pixels",
                                    description="K", length=len(Ks))
            arr[:] = Ks
        create_static_array(g, "valid", geom.valid_mask(), dims=("y", "x"), units="bool", description="image")
        if gt_depth is not None:
            gt = g.create_group("gt")
            arr = create_time_array(gt, "depth", (H, W), "float32", dims=("t", "y", "x"), units="m",
                                    description="gt", length=T)
            arr[:] = padded(gt_depth)
            arr = create_time_array(gt, "K", (3, 3), "float64", dims=("t", "i", "j"), units="pixels",
                                    description="gt K", length=T)
            arr[:] = geom.apply_K(np.broadcast_to(gt_K, (T, 3, 3)))
    return geom


@pytest.fixture
def synth_video(tmp_path):
    rgb, depth, K = scene()
    path = tmp_path / "prepared" / "vid.zarr"
    geom = write_prepared(path, rgb, K=K, gt_depth=depth, gt_K=K)
    return path, rgb, depth, K, geom


def synthetic_teacher(path, name="vid", **overrides):
    g = open_store(path, "prepared")
    ctx = VideoContext(name, path, g, image_window(g["valid"][:], path))
    return SyntheticTeacher.from_config(TeacherConfig(**overrides), ctx)


def test_config_rejects_bad_values():
    for bad in ({"resolution_level": 10}, {"min_depth": 5.0, "max_depth": 1.0}, {"max_depth": 1e6},
                {"batch_size": 0}, {"synthetic_noise_persistence": 1.5}, {"synthetic_noise_std": -0.1}):
        with pytest.raises(ValueError):
            TeacherConfig(**bad)


def test_synthetic_teacher_accuracy_flicker_and_confidence(synth_video):
    path, rgb, depth, K, _ = synth_video
    teacher = synthetic_teacher(path)
    T = len(rgb)
    out = teacher.predict(rgb, None, np.arange(T))
    assert out.depth.shape == depth.shape and out.depth.dtype == np.float32
    assert (out.depth > 0).all() and np.isfinite(out.depth).all()
    abs_rel = np.mean(np.abs(out.depth - depth) / depth)
    assert 0.02 < abs_rel < 0.12, abs_rel
    # Flicker: the per-frame global scale (median ratio to truth) varies by a few percent between frames.
    scale = np.median(out.depth / depth, axis=(1, 2))
    assert 0.01 < np.std(np.diff(np.log(scale))) < 0.15
    # Confidence is lower on depth edges than on the smooth background.
    assert out.confidence.min() >= 0 and out.confidence.max() <= 1
    edge = np.zeros(depth.shape, dtype=bool)
    edge[:, 7:9, :] = edge[:, 19:21, :] = True
    assert out.confidence[edge].mean() < out.confidence[:, 25:, :].mean()
    # K: predicted focal lengths err by a few percent, the principal point is the truth's.
    K_window = K  # the window is the unpadded image, where the ground-truth K lives
    np.testing.assert_allclose(out.K_pred[:, :2, 2], np.broadcast_to(K_window[:2, 2], (T, 2)))
    focal_ratio = out.K_pred[:, 0, 0] / K[0, 0]
    assert np.all(np.abs(np.log(focal_ratio)) < 0.2) and np.std(focal_ratio) > 0
    np.testing.assert_array_equal(out.K_used, out.K_pred)
    given = np.broadcast_to(K, (T, 3, 3))
    np.testing.assert_array_equal(teacher.predict(rgb, given, np.arange(T)).K_used, given)


def test_synthetic_teacher_is_deterministic_per_frame(synth_video):
    path, rgb, *_ = synth_video
    a = synthetic_teacher(path).predict(rgb, None, np.arange(12))
    b = synthetic_teacher(path).predict(rgb[[7, 2]], None, np.array([7, 2]))  # other batching, other order
    np.testing.assert_array_equal(a.depth[[7, 2]], b.depth)
    np.testing.assert_array_equal(a.K_pred[[7, 2]], b.K_pred)
    c = synthetic_teacher(path, name="other").predict(rgb, None, np.arange(12))
    d = synthetic_teacher(path, seed=1).predict(rgb, None, np.arange(12))
    assert not np.allclose(a.depth, c.depth) and not np.allclose(a.depth, d.depth)
    assert stable_video_hash("vid") == 966208405087254559  # stable across processes and Python versions


def test_synthetic_teacher_magnitudes_are_params(synth_video):
    path, rgb, depth, *_ = synth_video
    zero = NO_CORRUPTION
    out = synthetic_teacher(path, **zero).predict(rgb, None, np.arange(12))
    np.testing.assert_allclose(out.depth, depth, rtol=1e-6)
    np.testing.assert_allclose(out.confidence, 1.0)
    jitter_only = synthetic_teacher(path, **{**zero, "synthetic_scale_jitter": 0.05})
    ratio = jitter_only.predict(rgb, None, np.arange(12)).depth / depth
    np.testing.assert_allclose(ratio, ratio[:, :1, :1] * np.ones_like(ratio), rtol=1e-5)  # global per frame
    assert np.std(np.log(ratio[:, 0, 0])) > 0.01


def test_synthetic_needs_ground_truth(tmp_path):
    rgb, _, K = scene(T=3)
    path = tmp_path / "vid.zarr"
    write_prepared(path, rgb, K=K)
    with pytest.raises(StoreError, match=r"needs ground truth; set videos\.vid\.ground_truth"):
        run_teacher(TeacherConfig(), path, tmp_path / "out.zarr", "vid")
    assert not (tmp_path / "out.zarr").exists()


def test_teacher_store_schema_with_given_K(synth_video, tmp_path):
    path, rgb, depth, _, geom = synth_video
    out_path = tmp_path / "teacher" / "vid.zarr"
    summary = run_teacher(TeacherConfig(batch_size=5), path, out_path, "vid")
    g = open_store(out_path, "teacher")
    T, (W, H) = len(rgb), geom.padded_size
    assert g["depth"].shape == (T, H, W) and g["depth"].dtype == np.float16
    assert g["depth"].attrs["units"] == "m"
    assert g["confidence"].dtype == np.float16 and g["valid"].dtype == bool
    assert g["K_used"].shape == g["K_pred"].shape == (T, 3, 3) and g["K_used"].dtype == np.float64
    assert g["depth"].metadata.dimension_names == ("t", "y", "x")
    valid = g["valid"][:]
    np.testing.assert_array_equal(valid, np.broadcast_to(geom.valid_mask(), valid.shape))  # padding invalid
    d = g["depth"][:]
    assert (d[~valid] == 0).all() and (g["confidence"][:][~valid] == 0).all()
    left, top = PAD[:2]
    image = d[:, top : top + depth.shape[1], left : left + depth.shape[2]].astype(np.float32)
    ref = synthetic_teacher(path).predict(rgb, None, np.arange(T)).depth
    np.testing.assert_allclose(image, ref, rtol=1e-3)  # float16 storage; batching does not change numbers
    np.testing.assert_allclose(g["K_used"][:], open_store(path)["K"][:])
    assert not np.allclose(g["K_pred"][:], g["K_used"][:])
    attrs = g.attrs
    assert attrs["intrinsics_source"] == summary["intrinsics_source"] == "given"
    assert attrs["invalid_pixels"] == attrs["invalid_fraction"] == attrs["frames_with_invalid"] == 0
    assert attrs["padding_pixels_per_frame"] == H * W - depth.shape[1] * depth.shape[2]
    assert attrs["teacher"] == {"name": "synthetic", "weights": None, "resolution_level": None}
    prov = attrs["provenance"]
    assert prov["stage"] == "teacher" and prov["params"]["batch_size"] == 5 and "zarr" in prov["versions"]
    assert "opencv-python-headless" in prov["versions"]


def test_anchored_and_per_frame_intrinsics(tmp_path):
    rgb, depth, K = scene(T=9)
    path = tmp_path / "vid.zarr"
    write_prepared(path, rgb, gt_depth=depth, gt_K=K)  # video without intrinsics
    summary = run_teacher(TeacherConfig(anchor_frames=5, batch_size=2), path, tmp_path / "a.zarr", "vid")
    g = open_store(tmp_path / "a.zarr")
    K_used, K_pred = g["K_used"][:], g["K_pred"][:]
    assert summary["intrinsics_source"] == "anchored_median" and summary["anchor"]["frames_used"] == 5
    np.testing.assert_array_equal(K_used, np.broadcast_to(K_used[0], K_used.shape))  # one K for the video
    np.testing.assert_allclose(K_used[0], summary["anchor"]["K"])
    # The anchor is the median of the teacher's predictions on frames 0, 2, 4, 6, 8.
    np.testing.assert_allclose(K_used[0, 0, 0], np.median(K_pred[::2, 0, 0]))
    run_teacher(TeacherConfig(anchor_intrinsics=False), path, tmp_path / "p.zarr", "vid")
    g = open_store(tmp_path / "p.zarr")
    assert g.attrs["intrinsics_source"] == "per_frame_predicted"
    np.testing.assert_array_equal(g["K_used"][:], g["K_pred"][:])
    np.testing.assert_allclose(g["K_pred"][:], K_pred)


class _BrokenTeacher(SyntheticTeacher):
    """The synthetic teacher with NaN, inf, negative and absurd depth at fixed pixels of frame 1."""

    def predict(self, rgb, K, frames):
        out = super().predict(rgb, K, frames)
        hit = np.flatnonzero(frames == 1)
        for i in hit:
            out.depth[i, 0, :4] = [np.nan, np.inf, -1.0, 5e4]
            out.confidence[i, 1, 0] = np.nan
        return out


def test_invalid_output_is_masked_and_counted(synth_video, tmp_path, monkeypatch):
    path = synth_video[0]
    monkeypatch.setitem(TEACHERS, "synthetic", _BrokenTeacher)
    summary = run_teacher(TeacherConfig(batch_size=4), path, tmp_path / "t.zarr", "vid")
    assert summary["invalid_reasons"] == {"non_finite": 3, "non_positive": 1, "out_of_range": 1}
    assert summary["invalid_pixels"] == 5 and summary["frames_with_invalid"] == 1
    g = open_store(tmp_path / "t.zarr")
    left, top = PAD[:2]
    valid, d = g["valid"][1], g["depth"][1]
    assert not valid[top, left : left + 4].any() and not valid[top + 1, left]
    assert (d[top, left : left + 4] == 0).all() and np.isfinite(g["depth"][:]).all()
    assert g.attrs["invalid_pixels"] == 5
    with pytest.raises(TeacherOutputError, match="max_invalid_fraction"):
        run_teacher(TeacherConfig(max_invalid_fraction=1e-4), path, tmp_path / "u.zarr", "vid")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "t.zarr"]  # nothing half-written


class _WrongShapeTeacher(SyntheticTeacher):
    def predict(self, rgb, K, frames):
        out = super().predict(rgb, K, frames)
        return type(out)(out.depth[:, :-1], out.confidence, out.K_used, out.K_pred)


def test_bad_inputs_fail_clearly(synth_video, tmp_path, monkeypatch):
    path, rgb, depth, K, _ = synth_video
    cfg, out = TeacherConfig(), tmp_path / "o.zarr"
    with pytest.raises(StoreError, match="no such store"):
        run_teacher(cfg, tmp_path / "nope.zarr", out, "nope")
    bad = tmp_path / "declared.zarr"
    write_prepared(bad, rgb, gt_depth=depth, gt_K=K, intrinsics="given")
    with pytest.raises(StoreError, match="intrinsics='given' but the store has no 'K'"):
        run_teacher(cfg, bad, out, "vid")
    bad = tmp_path / "short_K.zarr"
    write_prepared(bad, rgb, K=np.broadcast_to(K, (5, 3, 3)), gt_depth=depth, gt_K=K)
    with pytest.raises(StoreError, match=r"K has shape \(5, 3, 3\), expected \(12, 3, 3\)"):
        run_teacher(cfg, bad, out, "vid")
    bad = tmp_path / "nan_K.zarr"
    K_nan = np.broadcast_to(K, (12, 3, 3)).copy()
    K_nan[3, 0, 0] = np.nan
    write_prepared(bad, rgb, K=K_nan, gt_depth=depth, gt_K=K)
    with pytest.raises(IntrinsicsError, match="NaN"):
        run_teacher(cfg, bad, out, "vid")
    monkeypatch.setitem(TEACHERS, "synthetic", _WrongShapeTeacher)
    with pytest.raises(TeacherOutputError, match=r"depth of shape \(8, 29, 40\).*expected \(8, 30, 40\)"):
        run_teacher(cfg, path, out, "vid")
    assert not out.exists() and not list(tmp_path.glob("o.zarr*"))


def test_synthetic_teacher_error_that_follows_the_frame(synth_video):
    """Step 6: with every random effect off, the error is a function of the frame alone, with known
    answers: a uniform frame of mean luminance L scales depth by (L / 0.5) ** brightness_coupling, and
    fine detail prints into log depth times texture_coupling."""
    path, rgb, depth, *_ = synth_video
    T = len(rgb)
    grey = np.full_like(rgb, 64)  # luminance 64 / 255 everywhere, no detail
    bright = synthetic_teacher(path, **{**NO_CORRUPTION, "synthetic_brightness_coupling": 0.4})
    out = bright.predict(grey, None, np.arange(T)).depth
    np.testing.assert_allclose(out / depth, (64 / 255 / 0.5) ** 0.4, rtol=1e-5)
    # The same frame at any index gives the same depth: nothing here is drawn per frame.
    same = bright.predict(np.repeat(rgb[:1], T, axis=0), None, np.arange(T)).depth / depth
    np.testing.assert_allclose(same, np.broadcast_to(same[:1], same.shape), rtol=1e-6)
    # Texture copying: none on a uniform frame; on vertical stripes, a log-depth ripple across x whose
    # amplitude scales with the coupling and which is flat down each column.
    flat = synthetic_teacher(path, **{**NO_CORRUPTION, "synthetic_texture_coupling": 0.5}).predict(
        grey, None, np.arange(T))
    np.testing.assert_allclose(flat.depth, depth, rtol=1e-6)
    stripes = np.broadcast_to(np.where(np.arange(rgb.shape[2]) % 6 < 3, 200, 60)[None, None, :, None],
                              rgb.shape).astype(np.uint8)
    ripple = {k: np.log(synthetic_teacher(path, **{**NO_CORRUPTION, "synthetic_texture_coupling": k})
                        .predict(stripes, None, np.arange(T)).depth / depth) for k in (0.25, 0.5)}
    assert 0.02 < np.abs(ripple[0.25]).mean() < 0.2
    np.testing.assert_allclose(ripple[0.5], 2 * ripple[0.25], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ripple[0.5], np.broadcast_to(ripple[0.5][:, :1], ripple[0.5].shape), atol=1e-5)
