"""Synthetic RGB-D videos: exact, self-consistent ground truth; deterministic, atomic, streamed outputs."""

import dataclasses
import itertools
import math
import os

import av
import numpy as np
import pytest
import yaml

from videomamba_depth.camera import backproject, load_intrinsics, project, relative_pose, transform_points
from videomamba_depth.config import ConfigError, write_video_list
from videomamba_depth.synth import SynthConfig, render_frames, sample_scene, write_synth_video
from videomamba_depth.synth import export as synth_export
from videomamba_depth.synth.export import GT_STORE
from videomamba_depth.synth.geometry import Body, RigidPath, distance_to_body
from videomamba_depth.synth.scene import _overlap
from videomamba_depth.synth.sensor import Sensor, motion_blur
from videomamba_depth.zarrio import PARTIAL_MARK, open_store, require_arrays

W, H, T = 64, 48, 6
TINY = SynthConfig(width=W, height=H, num_frames=(T, T), hfov_deg=(60.0, 60.0), videos={"tiny": 3})
GT_ARRAYS = ("depth", "pose_c2w", "K", "flow_fwd", "flow_fwd_valid", "motion_mask")


@pytest.fixture(scope="module")
def frames():
    return list(render_frames(sample_scene(TINY, 3)))


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory):
    return write_synth_video(tmp_path_factory.mktemp("synth") / "tiny", TINY, "tiny")


def _files(path):
    return sorted(os.path.relpath(os.path.join(r, f), path) for r, _, fs in os.walk(path) for f in fs)


def _bilinear(image, uv):
    """Sample ``image`` (H, W) at float pixel coordinates ``uv`` (N, 2) (clamped to the border)."""
    h, w = image.shape
    u, v = np.clip(uv[:, 0], 0, w - 1), np.clip(uv[:, 1], 0, h - 1)
    u0, v0 = np.minimum(np.floor(u).astype(int), w - 2), np.minimum(np.floor(v).astype(int), h - 2)
    au, av_ = u - u0, v - v0
    top = image[v0, u0] * (1 - au) + image[v0, u0 + 1] * au
    bottom = image[v0 + 1, u0] * (1 - au) + image[v0 + 1, u0 + 1] * au
    return top * (1 - av_) + bottom * av_


def test_config_rejects_unknown_and_invalid_values():
    with pytest.raises(ConfigError, match="unknown key"):
        SynthConfig.from_dict({"widht": 320}, "synth")
    with pytest.raises(ConfigError, match="even"):
        SynthConfig.from_dict({"width": 255}, "synth")
    with pytest.raises(ConfigError, match="low"):
        SynthConfig.from_dict({"hfov_deg": [90, 45]}, "synth")
    with pytest.raises(KeyError, match="scene_99"):
        TINY.seed("scene_99")


def test_depth_positive_and_K_matches_fov(frames):
    for f in frames:
        assert np.isfinite(f.depth).all() and f.depth.min() > 0
        assert f.depth.shape == (H, W) and f.rgb.shape == (H, W, 3) and f.rgb.dtype == np.uint8
    K = frames[0].K
    # The horizontal field of view spans the image's W pixels edge to edge.
    assert math.degrees(2 * math.atan(W / (2 * K[0, 0]))) == pytest.approx(60.0)
    assert K[0, 0] == K[1, 1] and K[0, 1] == 0
    assert abs(K[0, 2] - (W - 1) / 2) <= TINY.principal_offset * W
    assert abs(K[1, 2] - (H - 1) / 2) <= TINY.principal_offset * H
    fovs = [sample_scene(SynthConfig(), seed).hfov_deg for seed in range(4)]
    assert all(45 <= f <= 90 for f in fovs) and max(fovs) - min(fovs) > 1  # focal length varies per video


def test_static_flow_is_the_rigid_flow_from_depth_K_and_pose(frames):
    uv0 = np.stack(np.meshgrid(np.arange(W), np.arange(H)), axis=-1).astype(float)
    for a, b in itertools.pairwise(frames):
        points = transform_points(relative_pose(a.pose_c2w, b.pose_c2w), backproject(a.depth, a.K))
        uv1, z1 = project(points, b.K)
        static = ~a.motion_mask
        np.testing.assert_allclose(a.flow_fwd[static], (uv1 - uv0)[static], atol=1e-4)
        # The same point, seen from frame t+1 where visible: inverse depth is affine in (u, v) on a plane,
        # so bilinear interpolation of 1/depth is exact away from edges.
        ok = a.flow_fwd_valid & static
        inv = _bilinear(1.0 / b.depth, uv1[ok])
        rel = np.abs(inv * z1[ok] - 1)
        assert np.mean(rel < 1e-3) > 0.9, np.mean(rel < 1e-3)


def test_points_agree_in_world_across_frames(frames):
    """Static pixels: backprojecting with depth and pose gives the world point seen at the flow target."""
    for a, b in itertools.pairwise(frames):
        ok = a.flow_fwd_valid & ~a.motion_mask
        world_a = transform_points(a.pose_c2w, backproject(a.depth, a.K))[ok]
        uv = np.stack(np.meshgrid(np.arange(W), np.arange(H)), axis=-1)[ok] + a.flow_fwd[ok]
        # Backproject pixel uv of frame t+1 at the interpolated depth (exact on planes, see above).
        z = 1.0 / _bilinear(1.0 / b.depth, uv)
        x = (uv[:, 0] - b.K[0, 2]) / b.K[0, 0] * z
        y = (uv[:, 1] - b.K[1, 2]) / b.K[1, 1] * z
        world_b = transform_points(b.pose_c2w, np.stack([x, y, z], axis=-1))
        err = np.linalg.norm(world_a - world_b, axis=-1)
        assert np.mean(err < 1e-3) > 0.9 and np.median(err) < 1e-4


def test_moving_flow_follows_the_body(frames):
    scene = sample_scene(TINY, 3)
    fps = scene.fps
    moving_seen = 0
    for a, b in itertools.pairwise(frames):
        world = transform_points(a.pose_c2w, backproject(a.depth, a.K))
        for k in np.unique(a.body[a.motion_mask]):
            sel = a.body == k
            (R0, c0), (R1, c1) = (scene.bodies[k].path.pose(i / fps) for i in (a.index, b.index))
            moved = ((world[sel] - c0) @ R0) @ R1.T + c1
            uv1, _ = project(transform_points(np.linalg.inv(b.pose_c2w), moved), b.K)
            uv0 = np.stack(np.meshgrid(np.arange(W), np.arange(H)), axis=-1)[sel]
            np.testing.assert_allclose(a.flow_fwd[sel], uv1 - uv0, atol=1e-4)
            # Where the flow is valid, it lands on the same body in frame t+1.
            ok = a.flow_fwd_valid[sel]
            target = np.rint(uv1[ok]).astype(int)
            assert np.mean(b.body[target[:, 1], target[:, 0]] == k) > 0.9
            moving_seen += sel.sum()
    assert moving_seen > 0


def test_motion_mask_and_flow_validity(frames):
    mask = np.stack([f.motion_mask for f in frames])
    assert 0.005 < mask.mean() < 0.5  # moving objects are visible but do not fill the frame
    valid = np.stack([f.flow_fwd_valid for f in frames[:-1]])
    assert 0.5 < valid.mean() < 1.0  # some pixels leave the frame or are occluded
    assert frames[-1].flow_fwd is None and frames[-1].flow_fwd_valid is None
    for f in frames[:-1]:
        assert f.flow_fwd.shape == (H, W, 2) and f.flow_fwd.dtype == np.float32
        assert np.abs(f.flow_fwd).max() > 0.1  # the camera moves
        landing = np.stack(np.meshgrid(np.arange(W), np.arange(H)), axis=-1) + f.flow_fwd
        inside = (landing >= -0.5).all(-1) & (landing[..., 0] < W - 0.5) & (landing[..., 1] < H - 0.5)
        assert not (f.flow_fwd_valid & ~inside).any()


def test_streaming_frames_are_independent(frames):
    scene = sample_scene(TINY, 3)
    (late,) = render_frames(scene, start=4, stop=5)
    for field in ("rgb", "depth", "pose_c2w", "motion_mask", "flow_fwd", "flow_fwd_valid"):
        np.testing.assert_array_equal(getattr(late, field), getattr(frames[4], field))


@pytest.mark.parametrize("events", [0.0, 1.0], ids=["plain", "passers+near_wall"])
def test_camera_stays_inside_the_room_and_clear_of_bodies(events):
    config = dataclasses.replace(TINY, num_frames=(48, 64), passers=events, near_wall=events)
    for seed in range(6):
        scene = sample_scene(config, seed)
        room = 2 * scene.bodies[0].half
        for t in np.linspace(0, 120, 97):  # far past any clip: motions stay bounded
            centre = scene.camera.pose_c2w(t)[:3, 3]
            assert (centre > 0.3).all() and (centre < room - 0.3).all()
            for body in scene.bodies[1:]:
                assert distance_to_body(centre, body, t) > 0.3
        assert scene.moving.sum() >= 1


def test_store_schema_and_intrinsics(video_dir):
    assert sorted(os.listdir(video_dir)) == ["gt.zarr.zip", "intrinsics.json", "video.mp4"]
    g = open_store(video_dir / GT_STORE, "ground_truth")
    require_arrays(g, video_dir / GT_STORE, GT_ARRAYS)
    assert g["depth"].shape == (T, H, W) and g["depth"].dtype == np.float32
    assert g["pose_c2w"].shape == (T, 4, 4) and g["K"].shape == (T, 3, 3)
    assert g["flow_fwd"].shape == (T - 1, H, W, 2) and g["flow_fwd_valid"].shape == (T - 1, H, W)
    assert g["motion_mask"].shape == (T, H, W) and g["motion_mask"].dtype == np.bool_
    assert g["depth"].attrs["units"] == "m" and g["depth"].metadata.dimension_names == ("t", "y", "x")
    attrs = g.attrs
    assert attrs["fps"] == 24 and attrs["size"] == [W, H] and attrs["num_frames"] == T and attrs["seed"] == 3
    assert attrs["provenance"]["params"]["videos"] == {"tiny": 3} and attrs["provenance"]["stage"] == "synth"
    K = load_intrinsics(video_dir / "intrinsics.json")
    np.testing.assert_array_equal(K, g["K"][0])
    np.testing.assert_array_equal(K, sample_scene(TINY, 3).K)


def test_mp4_decodes_to_the_rendered_frames(video_dir, frames):
    with av.open(str(video_dir / "video.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == T and decoded[0].shape == (H, W, 3)
    decoded = np.stack(decoded).astype(float)
    rendered = np.stack([f.rgb for f in frames]).astype(float)
    mse = np.mean((decoded - rendered) ** 2, axis=(1, 2, 3))
    assert 10 * np.log10(255**2 / mse.max()) > 25  # H.264 (yuv420) of textured 64x48 frames: ~30 dB
    # In order: each decoded frame is closer to its own rendered frame than to the next one.
    assert (mse[:-1] < np.mean((decoded[:-1] - rendered[1:]) ** 2, axis=(1, 2, 3))).all()


def test_outputs_are_byte_identical(tmp_path, video_dir):
    again = write_synth_video(tmp_path / "tiny", TINY, "tiny")
    assert _files(again) == _files(video_dir)
    for name in _files(video_dir):
        assert (again / name).read_bytes() == (video_dir / name).read_bytes(), name


def test_stage_writes_directory_atomically(tmp_path, monkeypatch):
    from stages import synth as stage

    params = {"synth": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(TINY).items()
                        if k != "videos"}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_video_list("synth", {"tiny": 3}, tmp_path)
    monkeypatch.chdir(tmp_path)
    stage.main(["tiny"])
    assert {"video.mp4", "intrinsics.json"} <= set(_files(tmp_path / "data/synth/tiny"))

    def broken(scene):
        yield from list(render_frames(scene, stop=3))
        raise RuntimeError("renderer died")

    monkeypatch.setattr(synth_export, "render_frames", broken)
    write_video_list("synth", {"b": 1}, tmp_path)
    with pytest.raises(RuntimeError, match="renderer died"):
        stage.main(["b"])
    assert sorted(p.name for p in (tmp_path / "data/synth").iterdir()) == ["tiny"]
    assert not list((tmp_path / "data/synth").glob(f"*{PARTIAL_MARK}*"))


def test_clean_sensor_develops_the_render_exactly():
    linear = np.random.default_rng(0).uniform(-0.1, 1.2, (H, W, 3)).astype(np.float32)
    flow = np.full((H, W, 2), 3.0, dtype=np.float32)
    developed = Sensor(seed=1).develop(linear, 0, flow)
    np.testing.assert_array_equal(developed, (np.clip(linear, 0, 1) * 255 + 0.5).astype(np.uint8))


def test_sensor_exposure_white_balance_and_noise_have_their_magnitudes():
    linear = np.full((H, W, 3), 0.5, dtype=np.float32)
    flicker = Sensor(seed=1, exposure_flicker=0.05)
    frames = np.stack([flicker.develop(linear, t) for t in range(200)]).astype(np.float64)
    log_gain = np.log(frames.mean(axis=(1, 2, 3)) / 127.5)
    assert 0.04 < log_gain.std() < 0.06
    assert (frames == frames[:, :1, :1, :1]).all()  # one gain for the whole frame, no noise
    np.testing.assert_array_equal(flicker.develop(linear, 7), frames[7])  # per-frame draws: random access
    balance = np.stack([Sensor(seed=1, white_balance_flicker=0.05).develop(linear, t) for t in range(200)])
    channel_gain = np.log(balance[:, 0, 0].astype(np.float64) / 127.5)
    assert (np.abs(np.corrcoef(channel_gain.T) - np.eye(3)) < 0.25).all()  # independent per channel
    assert (0.04 < channel_gain.std(axis=0)).all() and (channel_gain.std(axis=0) < 0.06).all()
    noisy = Sensor(seed=1, noise=0.02).develop(linear, 0).astype(np.float64) / 255
    assert 0.018 < noisy.std() < 0.022 and abs(noisy.mean() - 0.5) < 0.003
    dark = Sensor(seed=1, noise=0.02).develop(np.full_like(linear, 0.05), 0).astype(np.float64) / 255
    assert dark.std() < 0.6 * noisy.std()  # shot noise: less noise in the shadows


def test_motion_blur_smears_along_the_flow_only():
    linear = np.zeros((H, W, 3), dtype=np.float32)
    linear[:, W // 2 :] = 1.0  # a vertical edge
    flow = np.zeros((H, W, 2), dtype=np.float32)
    np.testing.assert_array_equal(motion_blur(linear, flow, 0.5), linear)  # nothing moves: sharp
    flow[..., 0] = 8.0  # 8 px per frame to the right; shutter 0.5: a 4 px streak
    row = motion_blur(linear, flow, 0.5)[H // 2, :, 0]
    ramp = np.flatnonzero((row > 0.01) & (row < 0.99))
    assert 2 <= len(ramp) <= 5 and abs(ramp.mean() - (W // 2 - 0.5)) <= 1
    np.testing.assert_allclose(row[: W // 2 - 3], 0)
    np.testing.assert_allclose(row[W // 2 + 3 :], 1)
    flow[..., 0], flow[..., 1] = 0.0, 8.0  # vertical motion along the edge: the edge stays sharp
    np.testing.assert_allclose(motion_blur(linear, flow, 0.5), linear, atol=1e-6)


def test_scene_sensor_is_drawn_from_the_ranges_and_recorded(video_dir):
    ranges = dict(sensor_noise=(0.01, 0.02), exposure_flicker=(0.03, 0.04), white_balance_flicker=(0.0, 0.01),
                  shutter=(0.2, 0.3), crf=(24, 26))
    sensors = [sample_scene(dataclasses.replace(TINY, **ranges), seed).sensor for seed in range(20)]
    assert all(0.01 <= s.noise <= 0.02 and 0.03 <= s.exposure_flicker <= 0.04 and 0.2 <= s.shutter <= 0.3
               and s.white_balance_flicker <= 0.01 and s.crf in (24, 25, 26) for s in sensors)
    assert len({s.crf for s in sensors}) == 3 and len({s.noise for s in sensors}) == 20
    # The sensor has its own random stream: the same seed lays out the same room whatever the sensor ranges.
    plain = sample_scene(TINY, 3)
    assert [b.path.centre.tolist() for b in sample_scene(dataclasses.replace(TINY, **ranges), 3).bodies] == [
        b.path.centre.tolist() for b in plain.bodies]
    attrs = open_store(video_dir / GT_STORE, "ground_truth").attrs
    assert attrs["scene"]["sensor"] == plain.sensor.to_attrs()
    assert attrs["video"]["crf"] == plain.sensor.crf
    with pytest.raises(ValueError, match="shutter"):
        SynthConfig(shutter=(0.0, 1.5))
    with pytest.raises(ValueError, match="crf"):
        SynthConfig(crf=(20, 60))


def test_events_have_their_own_stream_and_shares():
    plain = dataclasses.replace(TINY, passers=0.0, near_wall=0.0)
    every = dataclasses.replace(TINY, passers=1.0, near_wall=1.0)
    drawn = {"passer": 0, "near_wall": 0}
    for seed in range(12):
        scene = sample_scene(TINY, seed)
        for name, event in scene.events.items():
            drawn[name] += event is not None
        assert sample_scene(plain, seed).events == {"passer": None, "near_wall": None}
        if scene.events == {"passer": None, "near_wall": None}:
            # No event drawn: laid out body for body as with both shares 0.
            assert [b.path.centre.tolist() for b in scene.bodies] == [
                b.path.centre.tolist() for b in sample_scene(plain, seed).bodies]
        assert sample_scene(every, seed).events["near_wall"] is not None
    assert 0 < drawn["passer"] < 12 and 0 < drawn["near_wall"] < 12
    with pytest.raises(ValueError, match="passers"):
        SynthConfig(passers=1.5)
    with pytest.raises(ValueError, match="near_wall"):
        SynthConfig(near_wall=-0.1)


def test_passer_walks_across_the_view_close_to_the_camera_and_through_nothing():
    config = dataclasses.replace(TINY, passers=1.0, near_wall=0.0, num_frames=(24, 32))
    crossed = 0
    for seed in range(8):
        scene = sample_scene(config, seed)
        if scene.events["passer"] is None:  # it may give way to the moving objects, not often
            continue
        index = len(scene.bodies) - 1  # passers come last
        passer = scene.bodies[index]
        frames = list(render_frames(scene))
        # At its crossing (the middle of the mean view; the camera sways and turns about it) it covers a good
        # part of the view, nearer than the rest of the scene, moving.
        mid = frames[min(len(frames) - 1, round(scene.events["passer"]["crossing_s"] * scene.fps))]
        here = mid.body == index
        assert here.mean() > 0.1
        assert mid.motion_mask[here].all() and np.median(mid.depth[here]) < np.median(mid.depth[~here])
        assert np.median(mid.depth[here]) < 2.5
        crossed += 1
        # Its walk never meets a static body nor comes near the camera, far past the clip.
        for t in np.linspace(0, 60, 241):
            R, c = passer.path.pose(t)
            box = Body("box", passer.half, RigidPath.static(c, R), passer.materials, passer.tex_offset)
            assert not any(_overlap(box, b) for b in scene.bodies[1 : scene.num_static])
            assert distance_to_body(scene.camera.pose_c2w(t)[:3, 3], box) > 0.3
            assert 0 < c[2] - passer.half[2] + 1e-9 and (c[:2] > 0).all()
    assert crossed >= 5


def test_near_wall_camera_turns_to_face_a_plain_wall():
    config = dataclasses.replace(TINY, passers=0.0, near_wall=1.0, num_frames=(24, 32))
    for seed in range(4):
        scene = sample_scene(config, seed)
        event = scene.events["near_wall"]
        (first,) = render_frames(scene, 0, 1)
        (turned,) = render_frames(scene, round(event["turned_at_s"] * scene.fps),
                                  round(event["turned_at_s"] * scene.fps) + 1)
        # Facing the wall: the room's face fills the view, close; the room seen along the wall at the start.
        faces = turned.body == 0
        assert faces.mean() > 0.9
        assert np.median(turned.depth) < 2.0 < np.median(first.depth)
        assert abs(event["turn_deg"]) > 80
        walls = scene.bodies[0].materials[:4]
        assert walls.count(walls[event["wall_face"]]) == 3  # a plain wall, not the accent wall
