"""The ``flow`` stage: prepared frames + teacher depth -> flow, consistency, static masks and relative poses.

Streams over the video in blocks of frame pairs, so memory does not grow with its length. For each
consecutive pair (t, t+1) it stores, in ``data/flow/<video>.zarr.zip`` (kind ``flow``):

- ``flow_fwd`` / ``flow_bwd`` ``(T-1, H, W, 2)`` float16 pixels, t -> t+1 and t+1 -> t (indexed by t);
- ``consistent`` ``(T-1, H, W)`` bool: the frame-t pixels that can be classified: forward–backward
  consistent flow, valid teacher depth, and a known relative pose for the pair;
- ``static`` ``(T-1, H, W)`` bool: consistent, and the flow agrees with the rigid flow of the estimated
  camera motion. So every image pixel is static, moving (``consistent & ~static``) or unknown
  (``~consistent``);
- ``rel_pose`` ``(T-1, 4, 4)`` float64 ``T_{t+1<-t}``, ``pose_valid`` ``(T-1,)`` bool and ``pose_inliers``
  ``(T-1,)`` int32. Where ``pose_valid`` is False the pose is the identity and the whole pair is unknown
  (``consistent`` and ``static`` all False); its flow is still stored.

Flow is computed on the image region only (the bounding box of the prepared ``valid`` mask), so zero
padding never enters the flow backend; padding gets zero flow and False masks. A one-frame video yields
arrays with zero pairs and ``num_pairs: 0``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm import tqdm

from videomamba_depth.camera import IntrinsicsError, validate_K
from videomamba_depth.config import StageConfig
from videomamba_depth.flow.backends import DISBackend, FlowBackend, RAFTBackend
from videomamba_depth.flow.consistency import forward_backward_consistency
from videomamba_depth.flow.rigid import estimate_relative_pose, rigid_flow, static_mask
from videomamba_depth.manifest import store_path
from videomamba_depth.pervideo import VideoTask, array_cost, input_fingerprint
from videomamba_depth.provenance import provenance
from videomamba_depth.zarrio import (
    StoreError,
    TimeWriter,
    create_time_array,
    open_store,
    require_arrays,
    writing_store,
)

# Frame pairs read, computed and written per step: bounds memory (a block of 224x168 pairs is a few MB).
BLOCK_PAIRS = 16
# Given intrinsics (prepared K) and the teacher's K_used must agree to this many pixels; a larger difference
# means the teacher store was computed from other intrinsics than the prepared frames now carry.
K_MATCH_TOL_PX = 1e-3


@dataclass(frozen=True)
class FlowConfig(StageConfig):
    """``flow`` section of params.yaml (see the comments there for units and defaults)."""

    backend: Literal["dis", "raft"] = "dis"
    dis_preset: Literal["ultrafast", "fast", "medium"] = "medium"
    dis_finest_scale: int | None = 0
    dis_patch_size: int | None = 4
    dis_patch_stride: int | None = 3
    dis_refine_iters: int | None = 10
    raft_model: Literal["raft", "raft_small"] = "raft_small"
    raft_ckpt: str | None = "things"
    raft_iters: int = 12
    raft_batch_pairs: int = 4
    raft_device: Literal["cpu", "cuda"] = "cpu"
    fb_alpha: float = 0.01
    fb_beta: float = 0.5
    pose_stride: int = 4
    pose_max_points: int = 2000
    pnp_reproj_px: float = 0.3
    pnp_iterations: int = 200
    pnp_confidence: float = 0.999
    pnp_min_inliers: int = 50
    static_abs_px: float = 0.75
    static_rel: float = 0.1

    def __post_init__(self) -> None:
        positive = {
            "raft_iters": self.raft_iters,
            "raft_batch_pairs": self.raft_batch_pairs,
            "pose_stride": self.pose_stride,
            "pose_max_points": self.pose_max_points,
            "pnp_reproj_px": self.pnp_reproj_px,
            "pnp_iterations": self.pnp_iterations,
            "pnp_min_inliers": self.pnp_min_inliers,
            "static_abs_px": self.static_abs_px,
        }
        bad = {k: v for k, v in positive.items() if v <= 0}
        if bad:
            raise ValueError(f"must be positive: {bad}")
        nonneg = {"fb_alpha": self.fb_alpha, "fb_beta": self.fb_beta, "static_rel": self.static_rel}
        if any(v < 0 for v in nonneg.values()):
            raise ValueError(f"must be >= 0: {nonneg}")
        if self.dis_finest_scale is not None and self.dis_finest_scale < 0:
            raise ValueError(f"dis_finest_scale must be >= 0 or null, got {self.dis_finest_scale}")
        if self.dis_patch_size is not None and self.dis_patch_size < 1:
            raise ValueError(f"dis_patch_size must be >= 1 or null, got {self.dis_patch_size}")
        if self.dis_patch_stride is not None and self.dis_patch_stride < 1:
            raise ValueError(f"dis_patch_stride must be >= 1 or null, got {self.dis_patch_stride}")
        if self.dis_refine_iters is not None and self.dis_refine_iters < 0:
            raise ValueError(f"dis_refine_iters must be >= 0 or null, got {self.dis_refine_iters}")
        if not 0.0 < self.pnp_confidence < 1.0:
            raise ValueError(f"pnp_confidence must be in (0, 1), got {self.pnp_confidence}")


def make_backend(cfg: FlowConfig) -> FlowBackend:
    """The flow backend named by ``cfg.backend``, configured from its ``dis_*`` / ``raft_*`` keys."""
    if cfg.backend == "dis":
        return DISBackend(
            preset=cfg.dis_preset,
            finest_scale=cfg.dis_finest_scale,
            patch_size=cfg.dis_patch_size,
            patch_stride=cfg.dis_patch_stride,
            refine_iters=cfg.dis_refine_iters,
        )
    return RAFTBackend(
        model=cfg.raft_model,
        ckpt=cfg.raft_ckpt,
        iters=cfg.raft_iters,
        batch_pairs=cfg.raft_batch_pairs,
        device=cfg.raft_device,
    )


@dataclass(frozen=True)
class _Inputs:
    """Checked handles on the prepared and teacher stores of one video."""

    rgb: Any  # zarr array (T, H, W, 3) uint8
    depth: Any  # zarr array (T, H, W) float16 metres
    depth_valid: Any  # zarr array (T, H, W) bool
    K: np.ndarray  # (T, 3, 3) float64, the teacher's K_used
    crop: tuple[slice, slice]  # rows, cols of the image region (bounding box of prepared `valid`)
    region: np.ndarray  # (h, w) bool: prepared `valid` inside the crop


def _open_inputs(prepared_path: Path, teacher_path: Path) -> _Inputs:
    prepared = open_store(prepared_path, kind="prepared")
    require_arrays(prepared, prepared_path, ["rgb", "valid"])
    teacher = open_store(teacher_path, kind="teacher")
    require_arrays(teacher, teacher_path, ["depth", "valid", "K_used"])
    rgb, depth, tvalid, valid = prepared["rgb"], teacher["depth"], teacher["valid"], prepared["valid"][...]
    if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise StoreError(f"{prepared_path}: rgb must be (T, H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if rgb.shape[0] == 0:
        raise StoreError(f"{prepared_path}: the video has no frames")
    if valid.shape != rgb.shape[1:3]:
        raise StoreError(f"{prepared_path}: valid {valid.shape} does not match rgb frames {rgb.shape[1:3]}")
    for name, arr in (("depth", depth), ("valid", tvalid)):
        if arr.shape != rgb.shape[:3]:
            raise StoreError(
                f"teacher {teacher_path} {name} has shape {arr.shape} (frames, H, W) but prepared "
                f"{prepared_path} rgb has {rgb.shape[:3]}: the teacher store is not from these frames; "
                "re-run the teacher stage"
            )
    K = validate_K(teacher["K_used"][...], f"{teacher_path}/K_used")
    if K.shape != (rgb.shape[0], 3, 3):
        raise IntrinsicsError(
            f"{teacher_path}/K_used has shape {K.shape}, expected ({rgb.shape[0]}, 3, 3) for the "
            f"{rgb.shape[0]} frames of {prepared_path}"
        )
    if "K" in prepared:
        given = validate_K(prepared["K"][...], f"{prepared_path}/K")
        diff = float(np.abs(given - K).max()) if given.shape == K.shape else np.inf
        if not diff <= K_MATCH_TOL_PX:
            raise IntrinsicsError(
                f"inconsistent intrinsics: {prepared_path}/K (given) and {teacher_path}/K_used differ by "
                f"{diff:.4g} px; the teacher store was computed with other intrinsics: re-run the teacher"
            )
    if not valid.any():
        raise StoreError(f"{prepared_path}: valid mask has no image pixels")
    rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return _Inputs(rgb, depth, tvalid, K, crop, valid[crop])


def _crop_K(K: np.ndarray, crop: tuple[slice, slice]) -> np.ndarray:
    out = K.copy()
    out[..., 0, 2] -= crop[1].start  # principal point moves left by the cropped columns
    out[..., 1, 2] -= crop[0].start  # and up by the cropped rows
    return out


BACKEND_PACKAGES = {"dis": ("opencv-python-headless",), "raft": ("opencv-python-headless", "ptlflow")}


def flow_tasks(names: Iterable[str], cfg: FlowConfig) -> list[VideoTask]:
    """One task per video: ``data/{prepared,teacher}/<name>.zarr.zip`` -> ``data/flow/<name>.zarr.zip``."""
    tasks, config = [], cfg.to_dict()
    for name in names:
        prepared, teacher, out = (store_path(kind, name) for kind in ("prepared", "teacher", "flow"))
        inputs = {
            "config": config,
            "prepared": input_fingerprint(prepared),
            "teacher": input_fingerprint(teacher),
        }
        run = partial(compute_flow_store, prepared, teacher, out, cfg, video=name)
        packages = BACKEND_PACKAGES[cfg.backend]
        tasks.append(VideoTask(name=name, out=out, inputs=inputs, run=run, packages=packages,
                               cost=array_cost(prepared)))
    return tasks


def compute_flow_store(
    prepared_path: str | Path,
    teacher_path: str | Path,
    out_path: str | Path,
    cfg: FlowConfig,
    video: str,
    backend: FlowBackend | None = None,
) -> dict[str, Any]:
    """Write the ``flow`` store of one video; return its summary attributes.

    ``backend`` defaults to :func:`make_backend` of ``cfg`` (tests may pass one already built). Teacher pixels
    flagged valid whose depth is NaN, inf or not positive are treated as invalid and counted in the
    ``teacher_bad_depth_pixels`` attribute.
    """
    prepared_path, teacher_path = Path(prepared_path), Path(teacher_path)
    inputs = _open_inputs(prepared_path, teacher_path)
    backend = make_backend(cfg) if backend is None else backend
    num_frames, height, width = inputs.rgb.shape[:3]
    num_pairs = num_frames - 1
    ys, xs = inputs.crop
    K_crop = _crop_K(inputs.K, inputs.crop)
    described = backend.describe()
    attrs = {
        "video": video,
        "size": [width, height],
        "num_frames": num_frames,
        "num_pairs": num_pairs,
        "backend": described,
        "inputs": {"prepared": prepared_path.name, "teacher": teacher_path.name},
        "provenance": provenance("flow", cfg, packages=BACKEND_PACKAGES[cfg.backend], backend=described),
    }
    poses, consistent_frac, static_frac, bad_depth = [], [], [], 0
    with writing_store(out_path, "flow", attrs) as group:

        def time_array(name: str, shape: tuple[int, ...], dtype: Any, dims: tuple[str, ...], units: str,
                       description: str) -> TimeWriter:
            return TimeWriter(create_time_array(group, name, shape, dtype, dims=("t", *dims), units=units,
                                                description=description))

        writers = {
            "flow_fwd": time_array("flow_fwd", (height, width, 2), np.float16, ("y", "x", "c"), "pixels",
                                   "flow (du, dv) from frame t to t+1 at frame-t pixels; 0 on padding"),
            "flow_bwd": time_array("flow_bwd", (height, width, 2), np.float16, ("y", "x", "c"), "pixels",
                                   "flow (du, dv) from frame t+1 to t at frame-(t+1) pixels; 0 on padding"),
            "consistent": time_array("consistent", (height, width), bool, ("y", "x"), "1",
                                     "classifiable: forward-backward consistent, teacher depth, known pose"),
            "static": time_array("static", (height, width), bool, ("y", "x"), "1",
                                 "consistent and moves with the camera (moving = consistent & ~static)"),
            "rel_pose": time_array("rel_pose", (4, 4), np.float64, ("i", "j"), "metres (teacher scale)",
                                   "T_{t+1<-t}: maps camera-t points to camera t+1; identity if unknown"),
            "pose_valid": time_array("pose_valid", (), bool, (), "1",
                                     "rel_pose was estimated; if False, static is all False for the pair"),
            "pose_inliers": time_array("pose_inliers", (), np.int32, (), "points",
                                       "PnP correspondences agreeing with rel_pose"),
        }
        progress = tqdm(total=num_pairs, desc=f"flow {video}", unit="pair", file=sys.stderr)
        for t0 in range(0, num_pairs, BLOCK_PAIRS):
            t1 = min(num_pairs, t0 + BLOCK_PAIRS)
            frames = inputs.rgb[t0 : t1 + 1][:, ys, xs]
            # Round to the stored float16 first, so the stored masks are reproducible from the stored flow.
            fwd = backend.flow(frames[:-1], frames[1:]).astype(np.float16).astype(np.float32)
            bwd = backend.flow(frames[1:], frames[:-1]).astype(np.float16).astype(np.float32)
            depth = inputs.depth[t0:t1][:, ys, xs].astype(np.float32)
            with np.errstate(invalid="ignore"):
                good_depth = np.isfinite(depth) & (depth > 0)
            depth_ok = inputs.depth_valid[t0:t1][:, ys, xs] & good_depth
            bad_depth += int((inputs.depth_valid[t0:t1][:, ys, xs] & ~good_depth).sum())
            out = {
                "flow_fwd": np.zeros((t1 - t0, height, width, 2), np.float16),
                "flow_bwd": np.zeros((t1 - t0, height, width, 2), np.float16),
                "consistent": np.zeros((t1 - t0, height, width), bool),
                "static": np.zeros((t1 - t0, height, width), bool),
            }
            out["flow_fwd"][:, ys, xs] = fwd
            out["flow_bwd"][:, ys, xs] = bwd
            for i in range(t1 - t0):
                t = t0 + i
                fb_ok = forward_backward_consistency(fwd[i], bwd[i], inputs.region, cfg.fb_alpha, cfg.fb_beta)
                # Without teacher depth a pixel's rigid flow is unknown: it is neither static nor moving.
                usable = fb_ok & depth_ok[i]
                pose = estimate_relative_pose(
                    depth[i], K_crop[t], K_crop[t + 1], fwd[i], usable,
                    stride=cfg.pose_stride, max_points=cfg.pose_max_points, reproj_px=cfg.pnp_reproj_px,
                    iterations=cfg.pnp_iterations, confidence=cfg.pnp_confidence,
                    min_inliers=cfg.pnp_min_inliers,
                )
                cons = usable if pose.ok else np.zeros_like(usable)
                if pose.ok:
                    rigid, parallax = rigid_flow(depth[i], K_crop[t], K_crop[t + 1], pose.T)
                    out["static"][i, ys, xs] = static_mask(
                        fwd[i], rigid, parallax, usable, abs_px=cfg.static_abs_px, rel=cfg.static_rel
                    )
                out["consistent"][i, ys, xs] = cons
                poses.append(pose)
                n_region = max(1, int(inputs.region.sum()))
                consistent_frac.append(float(cons.sum()) / n_region)
                static_frac.append(float(out["static"][i].sum()) / n_region)
                progress.update(1)
            for name, data in out.items():
                writers[name].append(data)
            writers["rel_pose"].append(np.stack([p.T for p in poses[t0:t1]]))
            writers["pose_valid"].append(np.array([p.ok for p in poses[t0:t1]]))
            writers["pose_inliers"].append(np.array([p.num_inliers for p in poses[t0:t1]], np.int32))
        progress.close()
        for writer in writers.values():
            writer.close()
        summary = _summary(poses, consistent_frac, static_frac, bad_depth)
        group.attrs.update(summary)
    return {**attrs, **summary}


def _summary(poses: list, consistent_frac: list[float], static_frac: list[float], bad_depth: int) -> dict:
    """Per-video statistics recorded in the store attributes (fractions are of image pixels)."""
    known = [p for p in poses if p.ok]
    ratios = [p.num_inliers / p.num_points for p in known]
    return {
        "pose": {
            "known_pairs": len(known),
            "unknown_pairs": [{"pair": t, "reason": p.reason} for t, p in enumerate(poses) if not p.ok],
            "inliers_min": min((p.num_inliers for p in known), default=0),
            "inliers_median": float(np.median([p.num_inliers for p in known])) if known else 0.0,
            "inlier_ratio_min": float(min(ratios, default=0.0)),
            "inlier_ratio_median": float(np.median(ratios)) if ratios else 0.0,
        },
        "consistent_fraction_mean": float(np.mean(consistent_frac)) if consistent_frac else 0.0,
        "static_fraction_mean": float(np.mean(static_frac)) if static_frac else 0.0,
        "teacher_bad_depth_pixels": bad_depth,
    }
