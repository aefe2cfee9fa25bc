"""One synthetic video directory: ``video.mp4``, ``intrinsics.json`` and the ``gt.zarr.zip`` ground truth."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from videomamba_depth.camera import save_intrinsics_json
from videomamba_depth.pervideo import VideoTask
from videomamba_depth.provenance import provenance
from videomamba_depth.synth.render import render_frames
from videomamba_depth.synth.scene import SynthConfig, sample_scene
from videomamba_depth.video.writer import write_mp4
from videomamba_depth.zarrio import TimeWriter, atomic_directory, create_time_array, writing_store

VIDEO_FILE = "video.mp4"
INTRINSICS_FILE = "intrinsics.json"
GT_STORE = "gt.zarr.zip"
RENDERER = "videomamba_depth.synth (numpy ray caster)"


def synth_tasks(config: SynthConfig, out_root: Path) -> list[VideoTask]:
    """One task per ``config.videos`` entry, writing ``out_root/<name>/`` (fingerprint: in its gt store)."""
    return [
        VideoTask(
            name=name,
            out=out_root / name,
            marker=out_root / name / GT_STORE,
            # Only this video's seed: a change to another video's seed must not re-render this one.
            inputs={"config": dataclasses.replace(config, videos={name: seed}).to_dict()},
            run=partial(write_synth_video, out_root / name, config, name),
            packages=("av",),
        )
        for name, seed in config.videos.items()
    ]


def write_synth_video(out_dir: str | Path, config: SynthConfig, name: str) -> Path:
    """Render video ``name`` (seed ``config.videos[name]``) into ``out_dir``, atomically; returns ``out_dir``.

    Streams: each frame is rendered once, appended to the ground-truth arrays and fed to the H.264 encoder,
    so memory is bounded by the Zarr writers' shard buffers, not by the video length.
    """
    out_dir = Path(out_dir)
    seed = config.seed(name)
    scene = sample_scene(config, seed)
    W, H, T = scene.width, scene.height, scene.num_frames
    # Record only this video's seed: a change to another video's seed must not change this store.
    resolved = dataclasses.replace(config, videos={name: seed})
    attrs = {
        "fps": config.fps,
        "size": [W, H],
        "num_frames": T,
        "seed": seed,
        "scene": scene.summary(),
        "video": {"file": VIDEO_FILE, "codec": "h264", "crf": scene.sensor.crf},
        "provenance": provenance("synth", resolved, packages=("av",), backend=RENDERER),
    }
    with atomic_directory(out_dir) as tmp:
        save_intrinsics_json(tmp / INTRINSICS_FILE, scene.K, W, H)
        with writing_store(tmp / GT_STORE, "ground_truth", attrs) as group, ExitStack() as stack:
            arrays = _create_arrays(group, W, H)
            writers = {key: stack.enter_context(TimeWriter(array)) for key, array in arrays.items()}

            def rgb_frames() -> Iterator[np.ndarray]:
                for frame in tqdm(render_frames(scene), total=T, desc=f"synth {name}", unit="frame"):
                    writers["depth"].append(frame.depth[None])
                    writers["pose_c2w"].append(frame.pose_c2w[None])
                    writers["K"].append(frame.K[None])
                    writers["motion_mask"].append(frame.motion_mask[None])
                    if frame.flow_fwd is not None:
                        writers["flow_fwd"].append(frame.flow_fwd[None])
                        writers["flow_fwd_valid"].append(frame.flow_fwd_valid[None])
                    yield frame.rgb

            written = write_mp4(tmp / VIDEO_FILE, rgb_frames(), config.fps, scene.sensor.crf)
        if written != T:
            raise RuntimeError(f"{out_dir}: rendered {written} frames, expected {T}")
    return out_dir


def _create_arrays(group: zarr.Group, width: int, height: int) -> dict[str, zarr.Array]:
    """The ground-truth arrays of the ``synth`` store schema, empty (grown frame by frame)."""
    image, matrix = ("t", "y", "x"), ("t", "i", "j")

    def create(name: str, shape: tuple, dtype: str, dims: tuple, units: str, description: str) -> zarr.Array:
        fill = False if dtype == "bool" else 0
        return create_time_array(group, name, shape, dtype, dims=dims, units=units, description=description,
                                 fill_value=fill)

    return {
        "depth": create("depth", (height, width), "float32", image, "m",
                        "z-depth along the optical axis; finite and > 0 everywhere"),
        "pose_c2w": create("pose_c2w", (4, 4), "float64", matrix, "m",
                           "camera-to-world pose, OpenCV camera axes, world z up"),
        "K": create("K", (3, 3), "float64", matrix, "pixels",
                    "intrinsics; integer pixel coordinates are pixel centres"),
        "flow_fwd": create("flow_fwd", (height, width, 2), "float32", (*image, "c"), "pixels",
                           "(du, dv): where the surface point seen at (u, v) of frame t lands in frame t+1, "
                           "object motion included; T-1 frames"),
        "flow_fwd_valid": create("flow_fwd_valid", (height, width), "bool", image, "bool",
                                 "flow_fwd lands on a pixel of frame t+1 and the point is the first surface "
                                 "along its ray there (not occluded); T-1 frames"),
        "motion_mask": create("motion_mask", (height, width), "bool", image, "bool",
                              "the pixel-centre ray hits an independently moving body"),
    }
