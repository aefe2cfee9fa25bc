"""The ``decode`` stage: each manifest entry (video file or frame folder) -> ``data/frames/<name>.zarr.zip``.

Frames are streamed from the decoder into the store one shard at a time, so memory stays bounded whatever
the length or resolution of the video. Intrinsics are validated before any frame is decoded and stored as
given (per frame, original pixels), or marked missing. Every frame's presentation time is stored (variable
frame timing is kept, not resampled), and frames the decoder reports as damaged either fail the video or
are marked (``decode.on_corrupt``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import zarr
from tqdm import tqdm

from videomamba_depth.camera import IntrinsicsError, intrinsics_size, load_intrinsics, per_frame_K
from videomamba_depth.config import StageConfig
from videomamba_depth.manifest import VideoEntry, store_path
from videomamba_depth.pervideo import VideoTask, path_digest
from videomamba_depth.provenance import file_sha256, provenance
from videomamba_depth.video.reader import DEFAULT_FOLDER_FPS, FrameLog, VideoError, VideoSource, open_video
from videomamba_depth.zarrio import TimeWriter, create_time_array, writing_store

KIND = "frames"
PACKAGES = ("av", "decord", "opencv-python-headless")


@dataclass(frozen=True)
class DecodeConfig(StageConfig):
    """The ``decode`` section of ``params.yaml``.

    - ``backend``: "decord" (default) or "pyav" for video files; an explicit choice, never a fallback.
    - ``folder_fps``: frame rate recorded for folders of frames, which carry no timing (default 30).
    - ``on_corrupt``: frames the decoder reports as damaged (corrupt or concealed data, or predicted from
      such a frame before the next keyframe) and packets it rejects: "fail" (default) raises naming the
      file and the frames; "record" keeps the video and marks them in the store's ``corrupt`` array.
    """

    backend: Literal["decord", "pyav"] = "decord"
    folder_fps: float = DEFAULT_FOLDER_FPS
    on_corrupt: Literal["fail", "record"] = "fail"

    def __post_init__(self) -> None:
        if not self.folder_fps > 0:
            raise ValueError(f"folder_fps must be positive, got {self.folder_fps}")


def decode_tasks(manifest: Mapping[str, VideoEntry], config: DecodeConfig) -> list[VideoTask]:
    """One task per manifest entry; a task's fingerprint covers its entry, the params and the input files."""
    params = config.to_dict()
    return [
        VideoTask(
            name=name,
            out=store_path(KIND, name),
            inputs={
                "entry": entry.to_dict(),
                "config": params,
                "video": path_digest(entry.video),
                "intrinsics": path_digest(entry.intrinsics),
            },
            run=partial(decode_video, entry, store_path(KIND, name), config, name=name),
            packages=PACKAGES,
        )
        for name, entry in manifest.items()
    ]


def decode_video(entry: VideoEntry, out: str | Path, config: DecodeConfig, *, name: str = "") -> Path:
    """Decode ``entry.video`` into a ``frames`` store at ``out``; return ``out``.

    Store layout: ``rgb`` ``(T, H, W, 3)`` uint8 at the original resolution; ``timestamps`` ``(T,)`` float64
    seconds from the first frame; ``corrupt`` ``(T,)`` bool; ``K`` ``(T, 3, 3)`` float64 when intrinsics are
    given. Attributes ``fps`` (the mean rate of the frames when the timing is variable, ``vfr``),
    ``corrupt_frames`` and ``rejected_packets`` (counts). Raises
    :class:`~videomamba_depth.video.reader.VideoError` or :class:`~videomamba_depth.camera.IntrinsicsError`
    naming the file; nothing is left at ``out`` then (an existing store there is kept).
    """
    out = Path(out)
    K = load_intrinsics(entry.intrinsics) if entry.intrinsics is not None else None
    with open_video(entry.video, config.backend, folder_fps=config.folder_fps) as source:
        if K is not None:
            check_K_matches_video(K, entry.intrinsics, source)
        attrs = {
            "fps": source.fps,
            "original_size": list(source.size),
            "intrinsics": "missing" if K is None else "given",
            "intrinsics_file": None if K is None else {
                "path": entry.intrinsics, "sha256": file_sha256(entry.intrinsics)
            },
            "source": {
                "path": entry.video,
                "sha256": None if Path(entry.video).is_dir() else file_sha256(entry.video),
                **source.info,
            },
            "ground_truth": entry.ground_truth,
            "decoder": {"backend": source.backend, "version": source.backend_version},
            "provenance": provenance("decode", config, packages=PACKAGES, backend=source.backend),
        }
        with writing_store(out, KIND, attrs) as group:
            width, height = source.size
            rgb = create_time_array(
                group, "rgb", (height, width, 3), "uint8", dims=("t", "y", "x", "c"), units="sRGB, 0-255",
                description="decoded RGB frames at the original resolution",
            )
            progress = tqdm(total=source.num_frames, desc=f"decode {name or entry.video}", unit="frame")
            with progress, TimeWriter(rgb) as writer:
                # Whole shards per batch: the writer flushes each batch as it arrives, without copying.
                for frames in source.iter_batches(rgb.shards[0]):
                    writer.append(frames)
                    progress.update(len(frames))
            num_frames = writer.length
            log = source.log
            if config.on_corrupt == "fail" and (log.corrupt.any() or log.rejected):
                raise VideoError(
                    f"{entry.video}: corrupt video data: {log.damage()}; set decode.on_corrupt: record to "
                    "keep the video with those frames marked"
                )
            _write_frame_timing(group, log)
            if K is not None:
                K_array = create_time_array(
                    group, "K", (3, 3), "float64", dims=("t", "i", "j"), units="pixels",
                    description="intrinsics of the original frames, as given (pixel centres at integers)",
                )
                with TimeWriter(K_array) as k_writer:
                    k_writer.append(per_frame_K(K, num_frames, str(entry.intrinsics)))
            group.attrs.update({
                "num_frames": num_frames,
                "fps": log.mean_fps if log.variable_rate else source.fps,
                "vfr": log.variable_rate,
                "corrupt_frames": int(log.corrupt.sum()),
                "rejected_packets": len(log.rejected),
                "source": {**attrs["source"], "color_conversion": list(source.conversions)},
            })
    return out


def _write_frame_timing(group: zarr.Group, log: FrameLog) -> None:
    """The per-frame ``timestamps`` and ``corrupt`` arrays of a ``frames`` store."""
    for name, values, units, description in (
        ("timestamps", log.timestamps, "s",
         "presentation time of the frame, from the first frame (intervals vary when attrs.vfr)"),
        ("corrupt", log.corrupt, "bool",
         "the decoder flagged the frame as damaged, or it is predicted from a damaged frame or a rejected "
         "packet before the next keyframe"),
    ):
        array = create_time_array(group, name, (), values.dtype, dims=("t",), units=units,
                                  description=description)
        with TimeWriter(array) as writer:
            writer.append(values)


def check_K_matches_video(K: np.ndarray, path: str, source: VideoSource) -> None:
    """Catch intrinsics meant for another resolution (or video) before decoding anything."""
    width, height = source.size
    declared = intrinsics_size(path)
    if declared is not None and declared != (width, height):
        raise IntrinsicsError(
            f"{path}: intrinsics are for {declared[0]}x{declared[1]} frames, but {source.path} is "
            f"{width}x{height}"
        )
    Ks = K.reshape(-1, 3, 3)
    # Pixel centres are integers, so the image spans [-0.5, W - 0.5] x [-0.5, H - 0.5].
    inside = (Ks[:, 0, 2] >= -0.5) & (Ks[:, 0, 2] <= width - 0.5) & (Ks[:, 1, 2] >= -0.5) & (
        Ks[:, 1, 2] <= height - 0.5
    )
    if not inside.all():
        bad = Ks[np.argmin(inside)]
        raise IntrinsicsError(
            f"{path}: principal point ({bad[0, 2]:g}, {bad[1, 2]:g}) lies outside the {width}x{height} "
            f"frames of {source.path}; are these intrinsics for another resolution?"
        )
    if K.ndim == 3 and source.num_frames is not None and len(K) != source.num_frames:
        raise IntrinsicsError(
            f"{path}: {len(K)} per-frame intrinsics for {source.path}, which has {source.num_frames} frames"
        )
