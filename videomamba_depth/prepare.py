"""The ``prepare`` stage: ``data/frames/<name>.zarr.zip`` -> ``data/prepared/<name>.zarr.zip`` (model size).

Frames are resized so the long edge is ``long_edge`` and zero-padded to a multiple of ``pad_multiple``
(:class:`~videomamba_depth.camera.ResizePad`); intrinsics are updated exactly to match, and the geometry is
stored so any later stage can map back to the original pixels. When the manifest gives ground truth, it is
resampled to the same geometry into the ``gt`` group (for evaluation only; training never reads it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import zarr
from tqdm import tqdm

from videomamba_depth.camera import ResizePad
from videomamba_depth.config import StageConfig
from videomamba_depth.manifest import VideoEntry, store_path
from videomamba_depth.pervideo import VideoTask, input_fingerprint
from videomamba_depth.provenance import provenance
from videomamba_depth.zarrio import (
    StoreError,
    TimeWriter,
    copy_time_array,
    create_static_array,
    create_time_array,
    open_store,
    require_arrays,
    writing_store,
)

KIND = "prepared"
GT_GROUP = "gt"
GT_ARRAYS = ("depth", "pose_c2w", "K", "flow_fwd", "flow_fwd_valid", "motion_mask")
# Per-frame metadata of the frames store, copied unchanged (resizing does not touch it).
FRAME_METADATA = ("timestamps", "corrupt")


@dataclass(frozen=True)
class PrepareConfig(StageConfig):
    """The ``prepare`` section of ``params.yaml``.

    - ``long_edge``: pixels of the long edge after resizing (default 224).
    - ``pad_multiple``: pad width and height up to a multiple of this, the ViT patch size (default 14).
    """

    long_edge: int = 224
    pad_multiple: int = 14

    def __post_init__(self) -> None:
        if self.long_edge <= 0 or self.pad_multiple <= 0:
            raise ValueError(f"long_edge and pad_multiple must be positive, got {self.long_edge}, "
                             f"{self.pad_multiple}")


def interpolation_for(geometry: ResizePad) -> int:
    """cv2 flag: pixel-area averaging when shrinking (no aliasing), bilinear when enlarging.

    Both sample pixel-area aligned (pixel u's centre maps to (u + 0.5) * s - 0.5), which is what
    :meth:`ResizePad.apply_K` assumes.
    """
    (w, h), (W, H) = geometry.resized_size, geometry.original_size
    return cv2.INTER_AREA if w <= W and h <= H else cv2.INTER_LINEAR


def resize_pad(frames: np.ndarray, geometry: ResizePad) -> np.ndarray:
    """Frames ``(N, H, W, C)`` at the original size -> ``(N, H', W', C)`` resized and zero-padded."""
    (w, h), (Wp, Hp) = geometry.resized_size, geometry.padded_size
    left, top = geometry.pad[0], geometry.pad[1]
    out = np.zeros((len(frames), Hp, Wp, *frames.shape[3:]), frames.dtype)
    same_size = geometry.resized_size == geometry.original_size
    flag = interpolation_for(geometry)
    for i, frame in enumerate(frames):
        resized = frame if same_size else cv2.resize(frame, (w, h), interpolation=flag)
        out[i, top : top + h, left : left + w] = resized.reshape(h, w, *frames.shape[3:])
    return out


def nearest_source_pixels(geometry: ResizePad) -> tuple[np.ndarray, np.ndarray]:
    """Row and column of the original pixel nearest to each resized pixel centre: ``(h,)`` and ``(w,)`` int.

    The centre of resized pixel x' lies at original coordinate (x' + 0.5) / sx - 0.5; the nearest original
    pixel centre is floor of that + 0.5 = floor((x' + 0.5) / sx).
    """
    (sx, sy), (w, h), (W, H) = geometry.scale, geometry.resized_size, geometry.original_size
    cols = np.clip(np.floor((np.arange(w) + 0.5) / sx).astype(np.int64), 0, W - 1)
    rows = np.clip(np.floor((np.arange(h) + 0.5) / sy).astype(np.int64), 0, H - 1)
    return rows, cols


def resample_nearest(values: np.ndarray, geometry: ResizePad) -> np.ndarray:
    """``(N, H, W, ...)`` -> ``(N, H', W', ...)`` by nearest pixel centre, padding filled with 0 / False.

    Nearest sampling never mixes values across edges (a depth edge stays a step, masks stay masks).
    """
    rows, cols = nearest_source_pixels(geometry)
    (w, h), (Wp, Hp) = geometry.resized_size, geometry.padded_size
    left, top = geometry.pad[0], geometry.pad[1]
    out = np.zeros((len(values), Hp, Wp, *values.shape[3:]), values.dtype)
    out[:, top : top + h, left : left + w] = values[:, rows[:, None], cols[None, :]]
    return out


def prepare_tasks(manifest: Mapping[str, VideoEntry], config: PrepareConfig) -> list[VideoTask]:
    """One task per manifest entry: ``data/frames/<name>.zarr.zip`` (+ ground truth) -> ``data/prepared/``."""
    tasks, params = [], config.to_dict()
    for name, entry in manifest.items():
        frames, out = store_path("frames", name), store_path(KIND, name)
        inputs = {
            "config": params,
            "frames": input_fingerprint(frames),
            "ground_truth": input_fingerprint(entry.ground_truth),
        }
        run = partial(prepare_video, frames, out, config, ground_truth=entry.ground_truth, name=name)
        tasks.append(VideoTask(name=name, out=out, inputs=inputs, run=run))
    return tasks


def prepare_video(
    frames_path: str | Path,
    out: str | Path,
    config: PrepareConfig,
    *,
    ground_truth: str | Path | None = None,
    name: str = "",
) -> Path:
    """Resize + pad the ``frames`` store at ``frames_path`` into a ``prepared`` store at ``out``; return it.

    Store layout: ``rgb`` ``(T, H', W', 3)`` uint8; ``K`` ``(T, 3, 3)`` (when the frames store has it);
    ``timestamps`` and ``corrupt`` ``(T,)`` as in the frames store; ``valid`` ``(H', W')`` bool (image vs
    padding); group ``gt`` when ``ground_truth`` is given. Attributes hold the geometry (sizes, scale,
    padding), and ``fps``, ``vfr`` and ``corrupt_frames`` of the frames store.
    """
    frames_path, out = Path(frames_path), Path(out)
    source = open_store(frames_path, "frames")
    require_arrays(source, frames_path, ["rgb", *FRAME_METADATA])
    src_rgb = source["rgb"]
    num_frames, height, width, _ = src_rgb.shape
    geometry = ResizePad.fit(width, height, config.long_edge, config.pad_multiple)
    gt = None
    if ground_truth is not None:
        gt = _open_ground_truth(Path(ground_truth), frames_path, num_frames, (width, height))
    attrs = {
        "geometry": geometry.to_attrs(),
        "interpolation": "area" if interpolation_for(geometry) == cv2.INTER_AREA else "linear",
        "fps": source.attrs["fps"],
        "vfr": source.attrs["vfr"],
        "corrupt_frames": source.attrs["corrupt_frames"],
        "num_frames": num_frames,
        "intrinsics": source.attrs["intrinsics"],
        "source": str(frames_path),
        "ground_truth": None if ground_truth is None else str(ground_truth),
        "provenance": provenance("prepare", config, packages=("opencv-python-headless",)),
    }
    with writing_store(out, KIND, attrs) as group:
        out_width, out_height = geometry.padded_size
        rgb = create_time_array(
            group, "rgb", (out_height, out_width, 3), "uint8", dims=("t", "y", "x", "c"), units="sRGB, 0-255",
            description="frames resized (long edge) and zero-padded, see attrs.geometry",
        )
        # Read at most one input shard and hold at most one output shard: bounded memory at any resolution.
        step = min(src_rgb.shards[0], rgb.shards[0])
        progress = tqdm(total=num_frames, desc=f"prepare {name or frames_path.name}", unit="frame")
        with progress, TimeWriter(rgb) as writer:
            for t0 in range(0, num_frames, step):
                frames = src_rgb[t0 : t0 + step]
                writer.append(resize_pad(frames, geometry))
                progress.update(len(frames))
        for array_name in FRAME_METADATA:
            copy_time_array(source[array_name], group, array_name)
        if "K" in source:
            _write_K(group, geometry.apply_K(source["K"][:]), "intrinsics of the prepared frames")
        create_static_array(
            group, "valid", geometry.valid_mask(), dims=("y", "x"), units="bool",
            description="True on image pixels, False on padding",
        )
        if gt is not None:
            _write_ground_truth(group, gt, geometry, str(ground_truth))
    return out


def _write_K(group: zarr.Group, K: np.ndarray, description: str) -> None:
    array = create_time_array(
        group, "K", (3, 3), "float64", dims=("t", "i", "j"), units="pixels",
        description=f"{description} (ResizePad.apply_K of the original K)",
    )
    with TimeWriter(array) as writer:
        writer.append(K)


def _open_ground_truth(path: Path, frames_path: Path, num_frames: int, size: tuple[int, int]) -> zarr.Group:
    gt = open_store(path, "ground_truth")
    require_arrays(gt, path, GT_ARRAYS)
    width, height = size
    expected = {
        "depth": (num_frames, height, width),
        "motion_mask": (num_frames, height, width),
        "flow_fwd": (max(num_frames - 1, 0), height, width, 2),
        "flow_fwd_valid": (max(num_frames - 1, 0), height, width),
        "pose_c2w": (num_frames, 4, 4),
        "K": (num_frames, 3, 3),
    }
    for array_name, shape in expected.items():
        if gt[array_name].shape != shape:
            raise StoreError(
                f"{path}: ground truth '{array_name}' has shape {gt[array_name].shape}, but {frames_path} "
                f"({num_frames} frames of {width}x{height}) needs {shape}"
            )
    return gt


def _write_ground_truth(group: zarr.Group, gt: zarr.Group, geometry: ResizePad, path: str) -> None:
    """Resample every ground-truth array to the prepared geometry into ``group/gt``, streamed over time."""
    sub = group.create_group(
        GT_GROUP,
        attributes={
            "kind": "ground_truth",
            "source": path,
            "resampling": "nearest original pixel centre; padding 0 / False; flow scaled by (sx, sy)",
            "note": "evaluation only; training never reads this group",
        },
    )
    sx, sy = geometry.scale
    for array_name in ("depth", "motion_mask", "flow_fwd", "flow_fwd_valid"):
        src = gt[array_name]
        dims = src.metadata.dimension_names or ("t", "y", "x", "c")[: src.ndim]
        frame_shape = (geometry.padded_size[1], geometry.padded_size[0], *src.shape[3:])
        dst = create_time_array(
            sub, array_name, frame_shape, src.dtype, dims=dims, units=src.attrs.get("units", ""),
            description=f"{src.attrs.get('description', array_name)} (resampled to the prepared frames)",
        )
        step = src.shards[0] if src.shards is not None else src.chunks[0]
        with TimeWriter(dst) as writer:
            for t0 in range(0, src.shape[0], step):
                values = resample_nearest(src[t0 : t0 + step], geometry)
                if array_name == "flow_fwd":
                    # Prepared coordinates are u' = (u + 0.5) * sx - 0.5 + left: displacements scale by sx.
                    values = values * np.array([sx, sy], dtype=values.dtype)
                writer.append(values)
    pose = create_time_array(
        sub, "pose_c2w", (4, 4), "float64", dims=("t", "i", "j"),
        units=gt["pose_c2w"].attrs.get("units", "m"),
        description="camera-to-world poses (unchanged by resizing)",
    )
    with TimeWriter(pose) as writer:
        writer.append(gt["pose_c2w"][:])
    _write_K(sub, geometry.apply_K(gt["K"][:]), "ground-truth intrinsics of the prepared frames")
