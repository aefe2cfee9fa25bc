"""``videomamba-depth infer``: metric depth of a video file with the streaming student, in bounded memory.

Frames are decoded in small batches (``video.reader``), prepared exactly as the ``prepare`` stage does
(:func:`videomamba_depth.prepare.resize_pad`: long edge, pad multiple), stepped through the student one at
a time (:class:`~videomamba_depth.inference.StreamingDepth`), mapped back to the original pixels (padding
cropped, bilinear resize) and written as float16 metres to a sharded Zarr store (``TimeWriter``: whole
shards, at most one held). Optional outputs, written in the same pass: a colour-mapped preview MP4 and PLY
point clouds every N frames. Memory does not grow with the video length: one read batch, one shard, the
SSM states (and the bounded keyframe bank when anchoring is on).

Outputs appear only when complete: the store and the points folder are written under temporary names and
renamed at the end, the preview likewise; an error leaves nothing behind (existing outputs stay as they
were).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from tqdm import tqdm

from videomamba_depth.camera import IntrinsicsError, ResizePad, backproject
from videomamba_depth.config import StageConfig
from videomamba_depth.devices import resolve_device
from videomamba_depth.inference.anchoring import AnchoringConfig
from videomamba_depth.inference.intrinsics import estimated, load_given
from videomamba_depth.inference.ply import write_ply
from videomamba_depth.inference.predictor import StreamingDepth, load_checkpoint
from videomamba_depth.prepare import resize_pad
from videomamba_depth.provenance import file_sha256, provenance
from videomamba_depth.video.reader import open_video
from videomamba_depth.video.writer import write_mp4
from videomamba_depth.viz import DEPTH_CMAP, colorize, robust_range
from videomamba_depth.zarrio import (
    TimeWriter,
    atomic_directory,
    atomic_file,
    create_time_array,
    writing_store,
)

KIND = "depth"
# Frames decoded per batch: small (memory), large enough to amortise the decoder's per-call overhead.
READ_BATCH = 8
# H.264 crf of the preview video (visually lossless for a colour map).
PREVIEW_CRF = 20


@dataclass(frozen=True)
class InferConfig(StageConfig):
    """Settings of ``infer`` (command-line flags); recorded in the output store's provenance.

    - ``long_edge``, ``pad_multiple``: the prepare geometry the model runs at; use the values the model was
      trained with (params ``prepare.*``; defaults 224 and 14).
    - ``video_backend``: ``pyav`` (handles rotated phone videos) or ``decord``.
    - ``device``: ``auto`` | ``cpu`` | ``cuda``.
    - ``hfov_deg``: assumed horizontal field of view when no intrinsics file is given (None: estimate with
      UniDepthV2 when installed, else ``intrinsics.DEFAULT_HFOV_DEG`` with a warning).
    - ``estimate_frames``: first frames UniDepthV2 estimates K on.
    - ``unidepth_weights``: UniDepthV2 hub name or local folder for that estimate.
    - ``points_every``: write a PLY point cloud every this many frames (0: none).
    - ``preview_range``: ``[near, far]`` metres of the preview colour map (None: the 1st-99th percentile of
      the first frame's depth, then fixed for the whole video so colours do not flicker).
    - ``anchoring``: keyframe anchoring (off by default).
    """

    long_edge: int = 224
    pad_multiple: int = 14
    video_backend: Literal["pyav", "decord"] = "pyav"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    hfov_deg: float | None = None
    estimate_frames: int = 8
    unidepth_weights: str = "lpiccinelli/unidepth-v2-vits14"
    points_every: int = 0
    preview_range: tuple[float, float] | None = None
    anchoring: AnchoringConfig = field(default_factory=AnchoringConfig)

    def __post_init__(self) -> None:
        if self.long_edge < 1 or self.pad_multiple < 1 or self.estimate_frames < 1 or self.points_every < 0:
            raise ValueError("long_edge, pad_multiple, estimate_frames must be >= 1 and points_every >= 0")
        if self.preview_range is not None and not 0 < self.preview_range[0] < self.preview_range[1]:
            raise ValueError(f"preview_range must be [near, far] with 0 < near < far, got "
                             f"{self.preview_range}")


@dataclass(frozen=True)
class InferResult:
    """What ``infer_video`` wrote: paths, frame count, throughput (frames per second of the whole pass)."""

    store: Path
    preview: Path | None
    points: Path | None
    num_frames: int
    fps: float


def points_dir(out: Path) -> Path:
    """Folder of the PLY point clouds of the store ``out``: ``OUT.zarr`` -> ``OUT.points``."""
    return out.with_suffix(".points")


def to_original(depth: np.ndarray, geometry: ResizePad) -> np.ndarray:
    """Prepared-geometry depth ``(H', W')`` -> original-resolution depth ``(H, W)``.

    Crops the padding, then resizes bilinearly with cv2's pixel-area alignment (pixel centres map as in
    ``ResizePad.apply_K``, so original K and the returned map agree).
    """
    (w, h), (W, H) = geometry.resized_size, geometry.original_size
    left, top = geometry.pad[0], geometry.pad[1]
    crop = np.ascontiguousarray(depth[top : top + h, left : left + w])
    return crop if (w, h) == (W, H) else cv2.resize(crop, (W, H), interpolation=cv2.INTER_LINEAR)


def _single_frames(batches: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    for batch in batches:
        yield from batch


def infer_video(
    video: str | Path,
    checkpoint: str | Path,
    out: str | Path,
    config: InferConfig,
    *,
    intrinsics: str | Path | None = None,
    preview: str | Path | None = None,
) -> InferResult:
    """Depth of every frame of ``video`` into the store ``out`` (kind ``depth``); see the module docstring.

    Store: ``depth`` ``(T, H, W)`` float16 metres (z-depth) at the original resolution, ``K`` ``(T, 3, 3)``
    the original-frame intrinsics used; attributes: checkpoint name + sha256, model config and backends,
    intrinsics (source, file hash or assumption), geometry, source video (name, sha256, decoder), fps.
    """
    video, out = Path(video), Path(out)
    preview = None if preview is None else Path(preview)
    device = resolve_device(config.device, "--device")
    # Everything that can reject the inputs runs before any output is created.
    model, checkpoint_info = load_checkpoint(checkpoint, device)
    with open_video(video, config.video_backend) as source, ExitStack() as stack:
        width, height = source.size
        geometry = ResizePad.fit(width, height, config.long_edge, config.pad_multiple)
        valid = geometry.valid_mask()
        frames = _single_frames(source.iter_batches(READ_BATCH))
        if intrinsics is not None:
            K = load_given(intrinsics, source)
        else:
            head = list(islice(frames, config.estimate_frames))
            if not head:
                raise ValueError(f"{video}: the video has no frames")
            K = estimated(source, np.stack(head), hfov_deg=config.hfov_deg,
                          unidepth_weights=config.unidepth_weights, device=str(device))
            frames = chain(head, frames)
        attrs = {
            "fps": source.fps,
            "size": [width, height],
            "geometry": geometry.to_attrs(),
            "checkpoint": checkpoint_info,
            "intrinsics": K.info,
            "source": {"name": video.name, "sha256": file_sha256(video) if video.is_file() else None,
                       "decoder": {"backend": source.backend, "version": source.backend_version}},
            "provenance": provenance("infer", config, backend=model.backends, device=device.type),
        }
        # Entered first, so committed last: the preview appears only if the store and points do.
        preview_tmp = stack.enter_context(atomic_file(preview)) if preview is not None else None
        group = stack.enter_context(writing_store(out, KIND, attrs))
        depth_array = create_time_array(
            group, "depth", (height, width), "float16", dims=("t", "y", "x"), units="m",
            description="metric z-depth of the streaming student at the original resolution",
        )
        K_array = create_time_array(
            group, "K", (3, 3), "float64", dims=("t", "i", "j"), units="pixels",
            description=f"intrinsics of the original frames used ({K.info['source']})",
        )
        depth_writer = stack.enter_context(TimeWriter(depth_array))
        K_writer = stack.enter_context(TimeWriter(K_array))
        points = stack.enter_context(atomic_directory(points_dir(out))) if config.points_every else None
        progress = stack.enter_context(
            tqdm(total=source.num_frames, desc=f"infer {video.name}", unit="frame", file=sys.stderr)
        )
        predictor = StreamingDepth(model, anchoring=config.anchoring)
        predictor.reset()
        start = time.perf_counter()

        def predictions() -> Iterator[np.ndarray]:
            for t, rgb in enumerate(frames):
                K_t = K.at(t)
                prepared = resize_pad(rgb[None], geometry)[0]
                depth = to_original(predictor(prepared, geometry.apply_K(K_t), valid), geometry)
                depth_writer.append(depth[None])
                K_writer.append(K_t[None])
                if points is not None and t % config.points_every == 0:
                    _write_points(points / f"frame_{t:06d}.ply", depth, rgb, K_t, t)
                progress.update(1)
                yield depth

        preview_range = config.preview_range
        if preview_tmp is not None:

            def colour_frames() -> Iterator[np.ndarray]:
                nonlocal preview_range
                for depth in predictions():
                    if preview_range is None:
                        preview_range = robust_range(depth)
                    yield _preview_frame(depth, preview_range)

            write_mp4(preview_tmp, colour_frames(), fps=max(1, round(source.fps)), crf=PREVIEW_CRF)
        else:
            for _ in predictions():
                pass
        num_frames = K_writer.length
        if num_frames == 0:
            raise ValueError(f"{video}: the video has no frames")
        if K.K.ndim == 3 and len(K.K) != num_frames:
            raise IntrinsicsError(
                f"{K.info['file']}: {len(K.K)} per-frame intrinsics for a video of {num_frames} frames"
            )
        elapsed = time.perf_counter() - start
        group.attrs.update({
            "num_frames": num_frames,
            "anchoring": config.anchoring.to_dict() if config.anchoring.enabled else None,
            "preview": None if preview is None else {
                "file": preview.name, "colormap": DEPTH_CMAP, "range_m": [float(v) for v in preview_range],
                "note": "depth colour-mapped on a fixed range; nearer than range_m[0] / farther than "
                        "range_m[1] saturate; odd sizes padded by one edge pixel (H.264)",
            },
            "points": None if points is None else {
                "folder": points_dir(out).name, "every": config.points_every,
                "frame": "camera (OpenCV: x right, y down, z forward), metres; one point per pixel",
            },
        })
    return InferResult(out, preview, points_dir(out) if config.points_every else None, num_frames,
                       num_frames / max(elapsed, 1e-9))


def _write_points(path: Path, depth: np.ndarray, rgb: np.ndarray, K: np.ndarray, frame: int) -> None:
    points = backproject(depth.astype(np.float64), K).reshape(-1, 3)
    comment = (f"VideoMambaDepth frame {frame}; camera coordinates (OpenCV: x right, y down, z forward), "
               "metres")
    write_ply(path, points, rgb.reshape(-1, 3), comment)


def _preview_frame(depth: np.ndarray, depth_range: tuple[float, float]) -> np.ndarray:
    """Depth ``(H, W)`` -> RGB uint8 on the fixed range; odd sizes padded by one edge pixel (yuv420p)."""
    image = colorize(depth, depth_range[0], depth_range[1])
    pad_bottom, pad_right = image.shape[0] % 2, image.shape[1] % 2
    if pad_bottom or pad_right:
        image = np.pad(image, ((0, pad_bottom), (0, pad_right), (0, 0)), mode="edge")
    return image
