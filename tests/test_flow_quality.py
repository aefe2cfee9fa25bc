"""Flow stage quality against ground truth on two synthetic scenes (renderer + prepare + teacher).

Two synthetic scenes (seeds 0 and 1, with the params.yaml synth/prepare/teacher/flow
sections), first ``NUM_FRAMES`` frames, rendered with the streaming API, encoded to H.264 as the synth stage
does, and taken through the real decode, prepare (ground-truth resampling) and synthetic-teacher code at
the default prepared geometry.

Metrics: :func:`videomamba_depth.flow.quality.flow_quality` (its docstring defines them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from videomamba_depth.camera import save_intrinsics_json
from videomamba_depth.config import load_params, load_section
from videomamba_depth.decode import DecodeConfig, decode_video
from videomamba_depth.flow import FlowConfig, compute_flow_store
from videomamba_depth.flow.quality import flow_quality
from videomamba_depth.manifest import VideoEntry
from videomamba_depth.prepare import PrepareConfig, prepare_video
from videomamba_depth.synth import SynthConfig, render_frames, sample_scene
from videomamba_depth.teacher import TeacherConfig, run_teacher
from videomamba_depth.video.writer import write_mp4
from videomamba_depth.zarrio import TimeWriter, create_time_array, writing_store

ROOT = Path(__file__).resolve().parents[1]
# The thresholds below were set on these seeds (the first videos of the earlier default set).
SCENES = {"scene_00": 0, "scene_01": 1}
NUM_FRAMES = 14


def write_rendered(root: Path, name: str, params: dict) -> VideoEntry:
    """The first NUM_FRAMES frames of default scene ``name``: H.264 video, intrinsics and ground-truth store.

    What the ``synth`` stage writes, shortened (the stage renders whole videos).
    """
    cfg = load_section(SynthConfig, "synth", params)
    scene = sample_scene(cfg, SCENES[name])
    frames = list(render_frames(scene, 0, NUM_FRAMES))
    video, intrinsics, gt_path = root / f"{name}.mp4", root / f"{name}_K.json", root / f"{name}_gt.zarr"
    write_mp4(video, (f.rgb for f in frames), cfg.fps, scene.sensor.crf)
    save_intrinsics_json(intrinsics, scene.K, scene.width, scene.height)
    gt = {
        "depth": np.stack([f.depth for f in frames]),
        "pose_c2w": np.stack([f.pose_c2w for f in frames]),
        "K": np.stack([f.K for f in frames]),
        "motion_mask": np.stack([f.motion_mask for f in frames]),
        # The last rendered frame's flow points to a frame that is not rendered.
        "flow_fwd": np.stack([f.flow_fwd for f in frames[:-1]]),
        "flow_fwd_valid": np.stack([f.flow_fwd_valid for f in frames[:-1]]),
    }
    with writing_store(gt_path, "ground_truth", {"fps": cfg.fps}) as group:
        dims = {"flow_fwd": ("t", "y", "x", "c"), "pose_c2w": ("t", "i", "j"), "K": ("t", "i", "j")}
        for key, data in gt.items():
            arr = create_time_array(group, key, data.shape[1:], data.dtype, units="", description=key,
                                    dims=dims.get(key, ("t", "y", "x")))
            with TimeWriter(arr) as writer:
                writer.append(data)
    return VideoEntry(video=str(video), intrinsics=str(intrinsics), ground_truth=str(gt_path))


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, float]]:
    root = tmp_path_factory.mktemp("flow_quality")
    params = load_params(ROOT / "params.yaml")
    cfg = load_section(FlowConfig, "flow", params)
    out = {}
    for name in SCENES:
        entry = write_rendered(root, name, params)
        decode_cfg = load_section(DecodeConfig, "decode", params)
        frames = decode_video(entry, root / f"{name}_frames.zarr", decode_cfg)
        prepare_cfg = load_section(PrepareConfig, "prepare", params)
        prepared = prepare_video(frames, root / f"{name}_prepared.zarr", prepare_cfg,
                                 ground_truth=entry.ground_truth, name=name)
        teacher = root / f"{name}_teacher.zarr"
        run_teacher(load_section(TeacherConfig, "teacher", params), prepared, teacher, video=name)
        compute_flow_store(prepared, teacher, root / f"{name}_flow.zarr", cfg, video=name)
        out[name] = flow_quality(prepared, root / f"{name}_flow.zarr", cfg.static_abs_px)
        print(name, {k: round(v, 3) for k, v in out[name].items()})
    return out


def test_dis_flow_end_point_error(metrics: dict) -> None:
    for name, m in metrics.items():
        # Over all gt-valid pixels EPE includes occlusions, where no two-frame flow is right; over the
        # forward-backward-consistent pixels it is ~0.12 px on both scenes.
        assert m["epe"] < 0.4 and m["epe_consistent"] < 0.2, name
        assert m["consistent_fraction"] > 0.9, name


def test_relative_pose_against_ground_truth(metrics: dict) -> None:
    for name, m in metrics.items():
        assert m["pose_valid_fraction"] == 1.0, name
        # Measured 0.04 / 0.05 deg mean on clean renders; 0.06 / 0.11 with the default camera's noise, motion
        # blur, exposure flicker and compression (synth/sensor.py); 0.08 / 0.08 with the passers both scenes
        # now have, whose worst pair (scene_00: the passer hides most of the static scene) is 0.46 deg.
        assert m["rotation_error_mean_deg"] < 0.15 and m["rotation_error_max_deg"] < 0.6, name
        # The direction of a few-centimetre translation is ill-conditioned at the default 128x96 (measured
        # median 16.4 deg / 10.1 deg on these scenes from clean renders, 17.6 / 23.6 with the default camera's
        # noise and blur; under 15 at 224x168); a wrong pose is off by many tens.
        assert m["translation_direction_error_median_deg"] < 30.0, name


def test_static_and_moving_masks_against_ground_truth(metrics: dict) -> None:
    """Both masks meet the 0.8 IoU target (measured: moving 0.87 / 0.88, static 0.99 / 0.99)."""
    for name, m in metrics.items():
        assert m["static_iou"] > 0.95, name
        assert m["moving_iou"] > 0.8 and m["moving_precision"] > 0.8 and m["moving_recall"] > 0.9, name
