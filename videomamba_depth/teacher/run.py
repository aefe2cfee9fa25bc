"""The ``teacher`` stage: run a teacher over a prepared video and write ``data/teacher/<video>.zarr.zip``.

Teachers see only the image area of the prepared frames (never the padding); their outputs are pasted back
into the padded geometry, with padding marked invalid. Invalid teacher output (NaN, inf, <= 0, outside
``[min_depth, max_depth]``) is masked: depth and confidence 0, ``valid`` False, and counted in the store's
attributes, so it never becomes a training target.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from tqdm import tqdm

from videomamba_depth.camera import make_K, validate_K
from videomamba_depth.errors import InputError
from videomamba_depth.manifest import store_path
from videomamba_depth.pervideo import VideoTask, array_cost, input_fingerprint, path_digest
from videomamba_depth.provenance import provenance
from videomamba_depth.teacher.base import Teacher, TeacherConfig, TeacherOutput, VideoContext, read_frames
from videomamba_depth.teacher.synthetic import SyntheticTeacher
from videomamba_depth.teacher.unidepth import UniDepthTeacher
from videomamba_depth.zarrio import (
    StoreError,
    TimeWriter,
    create_time_array,
    open_store,
    require_arrays,
    writing_store,
)

TEACHERS: dict[str, type[Teacher]] = {"synthetic": SyntheticTeacher, "unidepth": UniDepthTeacher}

# Packages whose version can change a teacher's numbers, recorded in provenance next to the core ones.
BACKEND_PACKAGES = {"synthetic": ("opencv-python-headless",), "unidepth": ("unidepth", "huggingface_hub")}


class TeacherOutputError(InputError):
    """Teacher output that cannot be stored (wrong shapes, unusable intrinsics, mostly invalid depth)."""


def build_teacher(cfg: TeacherConfig, video: VideoContext) -> Teacher:
    """The ``cfg.backend`` teacher, bound to ``video``."""
    return TEACHERS[cfg.backend].from_config(cfg, video)


def image_window(valid: np.ndarray, path: Path) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of the image area in a prepared ``valid`` mask ``(H', W')``."""
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if len(rows) == 0:
        raise StoreError(f"{path}: 'valid' mask has no image pixels")
    top, left = int(rows[0]), int(cols[0])
    height, width = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
    if int(valid.sum()) != height * width:
        raise StoreError(f"{path}: 'valid' mask is not a single rectangle (image area plus padding)")
    return top, left, height, width


def given_intrinsics(prepared: zarr.Group, path: Path, num_frames: int) -> np.ndarray | None:
    """The prepared store's ``K`` ``(T, 3, 3)`` when intrinsics were given, else None; checks consistency."""
    declared = prepared.attrs.get("intrinsics")
    if "K" not in prepared:
        if declared == "given":
            raise StoreError(f"{path}: attrs say intrinsics='given' but the store has no 'K' array")
        return None
    if declared == "missing":
        raise StoreError(f"{path}: attrs say intrinsics='missing' but the store has a 'K' array")
    K = validate_K(prepared["K"][:], f"{path}/K")
    if K.shape != (num_frames, 3, 3):
        raise StoreError(f"{path}: K has shape {K.shape}, expected ({num_frames}, 3, 3), one per frame")
    return K


def open_prepared(path: Path, video: str) -> VideoContext:
    """Open and check a prepared store; the :class:`VideoContext` teachers are built from."""
    prepared = open_store(path, "prepared")
    require_arrays(prepared, path, ["rgb", "valid"])
    rgb = prepared["rgb"]
    if rgb.dtype != np.uint8 or rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.shape[0] == 0:
        raise StoreError(f"{path}: rgb must be (T>0, H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    valid = np.asarray(prepared["valid"][:], dtype=bool)
    if valid.shape != rgb.shape[1:3]:
        raise StoreError(f"{path}: valid mask {valid.shape} does not match frames {rgb.shape[1:3]}")
    return VideoContext(video, path, prepared, image_window(valid, path))


def resolve_intrinsics(
    teacher: Teacher, video: VideoContext, cfg: TeacherConfig, K_given: np.ndarray | None
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The K ``(T, 3, 3)`` (window coordinates) to run the teacher with, or None to let it predict K per
    frame, and the attributes recording where it came from (``intrinsics_source`` and the anchor).

    ``K_given``: the prepared store's K ``(T, 3, 3)`` (prepared-frame coordinates) or None.
    """
    num_frames = video.prepared["rgb"].shape[0]
    if K_given is not None:
        return video.K_to_window(K_given), {"intrinsics_source": "given"}
    if not cfg.anchor_intrinsics:
        return None, {"intrinsics_source": "per_frame_predicted"}
    K_anchor, used = anchor_intrinsics(teacher, video, cfg)
    anchor = {"frames_used": used, "K": video.K_from_window(K_anchor).tolist()}
    return np.broadcast_to(K_anchor, (num_frames, 3, 3)), {"intrinsics_source": "anchored_median",
                                                            "anchor": anchor}


def anchor_intrinsics(teacher: Teacher, video: VideoContext, cfg: TeacherConfig) -> tuple[np.ndarray, int]:
    """One ``(3, 3)`` K for the whole video (window coordinates) from the teacher's own per-frame predictions.

    A metric network's depth scale follows the focal length it assumes, so a K predicted anew each frame
    makes the depth scale flicker. Without zoom a video has one K: predict it on ``anchor_frames`` evenly
    spaced frames and take the median of fx, fy, cx, cy (robust to a few bad frames; frames whose
    prediction is not finite or has a non-positive focal length are skipped). Returns K and the number of
    frames it is based on.
    """
    rgb = video.prepared["rgb"]
    frames = np.unique(np.linspace(0, rgb.shape[0] - 1, min(rgb.shape[0], cfg.anchor_frames)).round())
    frames = frames.astype(np.int64)
    preds = []
    for i in tqdm(range(0, len(frames), cfg.batch_size), desc=f"{video.name} (anchor K)", unit="batch"):
        batch = frames[i : i + cfg.batch_size]
        out = teacher.predict(video.crop(read_frames(rgb, batch)), None, batch)
        preds.append(np.asarray(out.K_pred, dtype=np.float64).reshape(len(batch), 3, 3))
    Ks = np.concatenate(preds)
    usable = np.isfinite(Ks).all(axis=(1, 2)) & (Ks[:, 0, 0] > 0) & (Ks[:, 1, 1] > 0)
    if not usable.any():
        raise TeacherOutputError(
            f"{video.path}: teacher '{teacher.name}' predicted no usable intrinsics on any of {len(frames)} "
            f"frames; give intrinsics for video '{video.name}' (videos.{video.name}.intrinsics)"
        )
    fx, fy, cx, cy = np.median(Ks[usable][:, [0, 1, 0, 1], [0, 1, 2, 2]], axis=0)
    return make_K(fx, fy, cx, cy), int(usable.sum())


def mask_invalid(
    out: TeacherOutput, min_depth: float, max_depth: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
    """Depth, confidence ``(B, H, W)`` with invalid pixels zeroed, the validity mask and counts per reason.

    Invalid: depth NaN/inf or confidence NaN/inf (``non_finite``), depth <= 0 (``non_positive``), depth
    outside ``[min_depth, max_depth]`` (``out_of_range``). Confidence is clipped to [0, 1].
    """
    depth = np.asarray(out.depth, dtype=np.float32)
    conf = np.asarray(out.confidence, dtype=np.float32)
    non_finite = ~(np.isfinite(depth) & np.isfinite(conf))
    with np.errstate(invalid="ignore"):
        non_positive = ~non_finite & (depth <= 0)
        out_of_range = ~non_finite & ~non_positive & ((depth < min_depth) | (depth > max_depth))
    valid = ~(non_finite | non_positive | out_of_range)
    counts = {"non_finite": int(non_finite.sum()), "non_positive": int(non_positive.sum()),
              "out_of_range": int(out_of_range.sum())}
    return np.where(valid, depth, 0.0), np.where(valid, np.clip(conf, 0.0, 1.0), 0.0), valid, counts


def _check_output(out: TeacherOutput, teacher: Teacher, video: VideoContext, frames: np.ndarray) -> None:
    B, h, w = len(frames), video.window[2], video.window[3]
    expected = {"depth": (B, h, w), "confidence": (B, h, w), "K_used": (B, 3, 3), "K_pred": (B, 3, 3)}
    for key, shape in expected.items():
        got = np.shape(getattr(out, key))
        if got != shape:
            raise TeacherOutputError(
                f"{video.path}: teacher '{teacher.name}' returned {key} of shape {got} for frames "
                f"{int(frames[0])}..{int(frames[-1])}, expected {shape}"
            )
    bad = ~np.isfinite(out.K_used).all(axis=(1, 2)) | (out.K_used[:, 0, 0] <= 0) | (out.K_used[:, 1, 1] <= 0)
    if bad.any():
        raise TeacherOutputError(
            f"{video.path}: teacher '{teacher.name}' predicted unusable intrinsics for frame "
            f"{int(frames[bad][0])} of video '{video.name}'; give intrinsics or set teacher.anchor_intrinsics"
        )


# name -> (frame shape (None: the prepared frame size), dtype, units, description) of the teacher store.
_ARRAYS = {
    "depth": (None, "float16", "m", "teacher metric z-depth; 0 where not valid"),
    "confidence": (None, "float16", "1", "teacher confidence in [0, 1]; 0 where not valid"),
    "valid": (None, "bool", "bool", "usable teacher depth: an image pixel with valid teacher output"),
    "K_used": ((3, 3), "float64", "pixels", "intrinsics the teacher depth assumes (prepared frames)"),
    "K_pred": ((3, 3), "float64", "pixels", "the teacher's own intrinsics prediction (prepared frames)"),
}


def _create_arrays(group: zarr.Group, height: int, width: int) -> dict[str, zarr.Array]:
    arrays = {}
    for name, (shape, dtype, units, description) in _ARRAYS.items():
        dims = ("t", "y", "x") if shape is None else ("t", "i", "j")
        arrays[name] = create_time_array(group, name, shape or (height, width), dtype, dims=dims, units=units,
                                         description=description)
    return arrays


def teacher_tasks(names: Iterable[str], cfg: TeacherConfig) -> list[VideoTask]:
    """One task per video: ``data/prepared/<name>.zarr.zip`` -> ``data/teacher/<name>.zarr.zip``."""
    # Local weights (a folder) count by content, hashed once: swapping them redoes every video.
    weights = path_digest(cfg.weights) if cfg.weights is not None and Path(cfg.weights).exists() else None
    tasks, config = [], cfg.to_dict()
    for name in names:
        prepared, out = store_path("prepared", name), store_path("teacher", name)
        inputs = {"config": config, "weights": weights, "prepared": input_fingerprint(prepared)}
        run = partial(run_teacher, cfg, prepared, out, video=name)
        tasks.append(VideoTask(name, out, inputs, run, packages=BACKEND_PACKAGES[cfg.backend],
                               cost=array_cost(prepared)))
    return tasks


def run_teacher(
    cfg: TeacherConfig, prepared_path: str | Path, out_path: str | Path, video: str
) -> dict[str, Any]:
    """Run the ``cfg.backend`` teacher over ``prepared_path`` and write the ``teacher`` store at ``out_path``.

    Streams ``cfg.batch_size`` frames at a time (bounded memory); the store appears only when complete.
    Returns the store's summary attributes (intrinsics source, invalid-pixel counts). Raises
    :class:`TeacherOutputError` when more than ``cfg.max_invalid_fraction`` of the image pixels are invalid
    (a broken teacher must not silently produce an empty training set); nothing is written then.
    """
    prepared_path = Path(prepared_path)
    ctx = open_prepared(prepared_path, video)
    rgb = ctx.prepared["rgb"]
    T, H, W = rgb.shape[:3]
    K_given = given_intrinsics(ctx.prepared, prepared_path, T)  # checked before a teacher loads its weights
    teacher = build_teacher(cfg, ctx)
    K_window, summary = resolve_intrinsics(teacher, ctx, cfg, K_given)

    image_pixels = ctx.window[2] * ctx.window[3]
    attrs = {
        "teacher": teacher.info(),
        "num_frames": T,
        "size": [W, H],
        "geometry": ctx.prepared.attrs.get("geometry"),
        "fps": ctx.prepared.attrs.get("fps"),
        "image_pixels_per_frame": image_pixels,
        "padding_pixels_per_frame": H * W - image_pixels,
        "provenance": provenance("teacher", cfg, packages=BACKEND_PACKAGES[cfg.backend], backend=cfg.backend),
    }
    counts = {"non_finite": 0, "non_positive": 0, "out_of_range": 0}
    frames_with_invalid = 0
    top, left, h, w = ctx.window
    with writing_store(out_path, "teacher", attrs) as group:
        writers = {name: TimeWriter(arr) for name, arr in _create_arrays(group, H, W).items()}
        with tqdm(total=T, desc=video, unit="frame") as bar:
            for start in range(0, T, cfg.batch_size):
                frames = np.arange(start, min(T, start + cfg.batch_size))
                K_batch = None if K_window is None else K_window[frames]
                out = teacher.predict(ctx.crop(rgb[frames[0] : frames[-1] + 1]), K_batch, frames)
                _check_output(out, teacher, ctx, frames)
                depth, conf, valid, batch_counts = mask_invalid(out, cfg.min_depth, cfg.max_depth)
                for key, n in batch_counts.items():
                    counts[key] += n
                frames_with_invalid += int((~valid).any(axis=(1, 2)).sum())
                # Paste the window back into the padded frame; padding stays 0 / invalid.
                for name, data in (("depth", depth), ("confidence", conf), ("valid", valid)):
                    full = np.zeros((len(frames), H, W), dtype=writers[name].array.dtype)
                    full[:, top : top + h, left : left + w] = data
                    writers[name].append(full)
                writers["K_used"].append(ctx.K_from_window(out.K_used))
                writers["K_pred"].append(ctx.K_from_window(out.K_pred))
                bar.update(len(frames))
        for writer in writers.values():
            writer.close()
        invalid = sum(counts.values())
        summary.update({
            "invalid_pixels": invalid,
            "invalid_fraction": invalid / (T * image_pixels),
            "frames_with_invalid": frames_with_invalid,
            "invalid_reasons": counts,
        })
        if summary["invalid_fraction"] > cfg.max_invalid_fraction:
            raise TeacherOutputError(
                f"{prepared_path}: teacher '{teacher.name}' output is invalid on "
                f"{summary['invalid_fraction']:.1%} of image pixels ({counts}), above "
                f"teacher.max_invalid_fraction={cfg.max_invalid_fraction}; nothing written"
            )
        group.attrs.update(summary)
    return summary
