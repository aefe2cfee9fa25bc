"""The synthetic teacher: ground-truth depth corrupted the way a per-frame metric depth network errs.

A stand-in for a real per-frame teacher (UniDepthV2) on the synthetic set, where ground truth is known. That
makes "the student flickers less than its teacher" measurable against truth. Every magnitude is a
``teacher.synthetic_*`` param; the defaults imitate a good per-frame network: a few percent of frame-to-frame
global scale flicker (the failure video depth models are built to remove), slow scale drift over a shot,
low-frequency relative errors of a few percent, and blurred "flying pixels" at depth discontinuities, for an
overall AbsRel of roughly 5-10% (the range of zero-shot per-frame metric depth networks).

Corruption of a ground-truth frame ``D`` at frame index ``t`` (all factors multiplicative, in log space):

1. global scale ``s_t = exp(jitter * n_t + drift * sin(2 pi t / period + phi))``, ``n_t ~ N(0, 1)`` per
   frame, ``phi`` per video;
2. spatially smooth noise ``exp(noise_std * f_t(x))``: ``f_t`` is a unit-variance Gaussian field with
   correlation length ``noise_scale`` pixels, mixing a per-video field (share ``noise_persistence`` of the
   variance: a network's consistent bias) with a field redrawn every frame (flicker);
3. depth edges: within about ``2 * edge_width`` pixels of a ground-truth discontinuity (log-depth step above
   ``edge_threshold`` between neighbours) the depth is blended with a Gaussian blur of itself (sigma
   ``edge_width``) by ``edge_mix * u_t``, ``u_t ~ U(0, 1)`` per frame: foreground and background depths mix
   and the mixing flickers;
4. confidence ``exp(-(|noise| + |edge error|) / confidence_scale)`` (log-space magnitudes): low near edges
   and where the smooth noise is large; blind to the global scale error, as a real network is;
5. predicted intrinsics: ground-truth K with both focal lengths scaled by ``exp(focal_error * m_t)``,
   ``m_t ~ N(0, 1)`` per frame;
6. errors that are a function of the input frame (as a real network's are, so a per-frame student that
   imitates the teacher inherits them, and with them the flicker of the frames: exposure flicker, sensor
   noise): a global log scale ``brightness_coupling * log(mean luminance / 0.5)`` (brighter frames look
   farther) and texture copying, ``texture_coupling * (L - G_sigma * L)`` in log depth, ``L`` the frame's
   luminance in [0, 1] and ``G_sigma`` a Gaussian blur of ``texture_sigma`` pixels (fine detail and noise
   print into the depth). The confidence is blind to both.

Steps 1-5 are random draws and do not look at the image; step 6 is deterministic. Randomness is seeded
from ``teacher.seed``, a stable hash of the video name and the frame index, so outputs
do not depend on batching or on which frames are requested together.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import cv2
import numpy as np

from videomamba_depth.teacher.base import Teacher, TeacherConfig, TeacherOutput, VideoContext, read_frames
from videomamba_depth.zarrio import StoreError, require_arrays

# Mean luminance at which the brightness-dependent scale error is zero (mid-grey).
BRIGHTNESS_REFERENCE = 0.5
# Random streams, so that per-video and per-frame draws never share a seed sequence.
_STREAM_VIDEO, _STREAM_FRAME = 0, 1


def stable_video_hash(name: str) -> int:
    """A 64-bit hash of a video name that is the same in every process (unlike ``hash()``)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little")


def smooth_field(rng: np.random.Generator, height: int, width: int, scale: float) -> np.ndarray:
    """``(H, W)`` float32 Gaussian random field, unit standard deviation, correlation length ``scale`` px.

    Cubic upsampling of an i.i.d. normal grid with one node every ``scale`` pixels.
    """
    gh, gw = math.ceil(height / scale) + 1, math.ceil(width / scale) + 1
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    field = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    # Interpolation shrinks the variance by a grid-dependent amount: renormalise to unit std.
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def depth_edge_band(depth: np.ndarray, threshold: float, width: float) -> np.ndarray:
    """``(H, W)`` float32 in [0, 1]: 1 within about ``2 * width`` pixels of a depth discontinuity.

    A discontinuity is a step of more than ``threshold`` in log depth between 4-neighbours.
    """
    log_d = np.log(np.maximum(depth, 1e-6))
    edges = np.zeros(depth.shape, dtype=np.uint8)
    step_x = np.abs(np.diff(log_d, axis=1)) > threshold
    step_y = np.abs(np.diff(log_d, axis=0)) > threshold
    edges[:, 1:] |= step_x
    edges[:, :-1] |= step_x
    edges[1:, :] |= step_y
    edges[:-1, :] |= step_y
    radius = max(1, math.ceil(2 * width))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.dilate(edges, kernel).astype(np.float32)


class SyntheticTeacher(Teacher):
    """Ground truth of the prepared store's ``gt`` group, corrupted as described in the module docstring."""

    name = "synthetic"

    def __init__(self, cfg: TeacherConfig, video: VideoContext) -> None:
        path = video.path
        if "gt" not in video.prepared:
            raise StoreError(
                f"{path}: teacher.backend=synthetic needs ground truth; set videos.{video.name}.ground_truth "
                "or use teacher.backend=unidepth"
            )
        gt = video.prepared["gt"]
        require_arrays(gt, f"{path}/gt", ("depth", "K"))
        num_frames, height, width = video.prepared["rgb"].shape[:3]
        if gt["depth"].shape != (num_frames, height, width) or gt["K"].shape != (num_frames, 3, 3):
            raise StoreError(
                f"{path}: ground truth gt/depth {gt['depth'].shape} and gt/K {gt['K'].shape} do not match "
                f"rgb {video.prepared['rgb'].shape[:3]}"
            )
        self.cfg = cfg
        self.video = video
        self._depth = gt["depth"]
        self._K = video.K_to_window(gt["K"][:])
        self._video_hash = stable_video_hash(video.name)
        rng = np.random.default_rng([cfg.seed, self._video_hash, _STREAM_VIDEO])
        self._drift_phase = rng.uniform(0, 2 * np.pi)
        _, _, h, w = video.window
        self._static_field = smooth_field(rng, h, w, cfg.synthetic_noise_scale)

    @classmethod
    def from_config(cls, cfg: TeacherConfig, video: VideoContext) -> SyntheticTeacher:
        return cls(cfg, video)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "weights": None, "resolution_level": None}

    def predict(self, rgb: np.ndarray, K: np.ndarray | None, frames: np.ndarray) -> TeacherOutput:
        frames = np.asarray(frames, dtype=np.int64)
        gt_depth = self.video.crop(read_frames(self._depth, frames)).astype(np.float32)
        if gt_depth.shape != rgb.shape[:3]:
            raise ValueError(f"ground-truth depth {gt_depth.shape} does not match frames {rgb.shape[:3]}")
        outs = [self._corrupt(d, int(t), image) for d, t, image in zip(gt_depth, frames, rgb, strict=True)]
        depth = np.stack([o[0] for o in outs])
        confidence = np.stack([o[1] for o in outs])
        K_pred = np.stack([o[2] for o in outs])
        K_used = K_pred if K is None else np.asarray(K, dtype=np.float64)
        return TeacherOutput(depth=depth, confidence=confidence, K_used=K_used, K_pred=K_pred)

    def _corrupt(self, gt: np.ndarray, t: int, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One frame: ground truth ``(h, w)`` and the frame ``(h, w, 3)`` uint8 -> (depth, confidence,
        K_pred)."""
        rng = np.random.default_rng([self.cfg.seed, self._video_hash, _STREAM_FRAME, t])
        return corrupt_frame(gt, self._K[t], self.cfg, rng, self._static_field, self._drift_phase, t, rgb)


def corrupt_frame(
    gt: np.ndarray,
    K: np.ndarray,
    c: TeacherConfig,
    rng: np.random.Generator,
    static_field: np.ndarray,
    drift_phase: float,
    t: int,
    rgb: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``t`` of a video: ground truth ``(h, w)``, its K ``(3, 3)`` and the frame ``rgb`` ``(h, w, 3)``
    uint8 -> (depth, confidence, K_pred), steps 1-6 of the module docstring with the frame's draws from
    ``rng``; ``static_field`` ``(h, w)`` and ``drift_phase`` are the video's own (its persistent noise
    field and phi). Step 6 reads ``rgb`` where the ground truth is valid (> 0)."""
    log_scale = c.synthetic_scale_jitter * rng.standard_normal() + c.synthetic_scale_drift * np.sin(
        2 * np.pi * t / c.synthetic_drift_period + drift_phase
    )
    p = c.synthetic_noise_persistence
    fresh = smooth_field(rng, *gt.shape, c.synthetic_noise_scale)
    noise = c.synthetic_noise_std * (np.sqrt(p) * static_field + np.sqrt(1 - p) * fresh)
    depth = gt * np.exp(noise + log_scale + image_error(rgb, gt > 0, c), dtype=np.float32)
    edge_err = np.zeros_like(depth)
    if c.synthetic_edge_width > 0:
        band = depth_edge_band(gt, c.synthetic_edge_threshold, c.synthetic_edge_width)
        blurred = cv2.GaussianBlur(depth, (0, 0), c.synthetic_edge_width, borderType=cv2.BORDER_REFLECT)
        weight = band * (c.synthetic_edge_mix * rng.uniform())
        edged = (1 - weight) * depth + weight * blurred
        with np.errstate(divide="ignore", invalid="ignore"):
            edge_err = np.nan_to_num(np.abs(np.log(edged / depth)), nan=0.0, posinf=0.0)
        depth = edged
    confidence = np.exp(-(np.abs(noise) + edge_err) / c.synthetic_confidence_scale)
    K_pred = np.array(K, dtype=np.float64, copy=True)
    focal = np.exp(c.synthetic_focal_error * rng.standard_normal())
    K_pred[0, 0] *= focal  # a per-frame network errs on the field of view: fx and fy together
    K_pred[1, 1] *= focal
    return depth.astype(np.float32), confidence.astype(np.float32), K_pred


def image_error(rgb: np.ndarray, mask: np.ndarray, c: TeacherConfig) -> np.ndarray:
    """``(h, w)`` float32 log-depth error that is a function of the frame ``rgb`` ``(h, w, 3)`` uint8 (step 6
    of the module docstring): brightness-dependent scale plus texture copying; the mean luminance is taken
    over ``mask`` ``(h, w)`` bool (the valid image)."""
    if rgb.shape[:2] != mask.shape:
        raise ValueError(f"frame {rgb.shape[:2]} does not match its ground truth {mask.shape}")
    error = np.zeros(mask.shape, dtype=np.float32)
    if c.synthetic_brightness_coupling == 0 and c.synthetic_texture_coupling == 0:
        return error
    # Rec. 601 luma of the 8-bit frame, in [0, 1].
    luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32) / 255
    if c.synthetic_brightness_coupling > 0 and mask.any():
        brightness = max(float(luma[mask].mean()), 1e-3)
        error += np.float32(c.synthetic_brightness_coupling * np.log(brightness / BRIGHTNESS_REFERENCE))
    if c.synthetic_texture_coupling > 0:
        blurred = cv2.GaussianBlur(luma, (0, 0), c.synthetic_texture_sigma, borderType=cv2.BORDER_REFLECT)
        error += c.synthetic_texture_coupling * (luma - blurred)
    return error


def corrupt_image(
    gt: np.ndarray, K: np.ndarray, c: TeacherConfig, entropy: tuple[int, ...], rgb: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A single image ``rgb`` ``(h, w, 3)`` uint8 as frame 0 of a one-frame video of its own: its drift
    phase and persistent field, then :func:`corrupt_frame`, all drawn from
    ``np.random.default_rng([c.seed, *entropy])``; ``entropy`` names the image (the same entropy gives the
    same corruption, as a network's prediction of the same image)."""
    rng = np.random.default_rng([c.seed, *entropy])
    drift_phase = rng.uniform(0, 2 * np.pi)
    static_field = smooth_field(rng, *gt.shape, c.synthetic_noise_scale)
    return corrupt_frame(gt, K, c, rng, static_field, drift_phase, 0, rgb)
