"""The teacher interface: prepared RGB frames and intrinsics in, metric depth, confidence and intrinsics out.

A teacher is a per-frame metric depth network (or the synthetic stand-in for one). Every backend implements
:class:`Teacher`; :func:`videomamba_depth.teacher.run.run_teacher` drives one over a prepared video, masks
invalid output and writes the ``teacher`` store.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import zarr

from videomamba_depth.config import StageConfig

# Depth is stored as float16 metres: finite up to 65504 m, relative rounding error below 0.05%.
FLOAT16_MAX = 65504.0


def read_frames(array: zarr.Array, frames: np.ndarray) -> np.ndarray:
    """``array[frames]`` for frame indices ``(B,)``: one slice read when they are consecutive and increasing,
    else one read per frame (both far faster than zarr's orthogonal indexing with an index array)."""
    frames = np.asarray(frames)
    if len(frames) and np.all(np.diff(frames) == 1):
        return array[int(frames[0]) : int(frames[-1]) + 1]
    return np.stack([array[int(t)] for t in frames])


@dataclass(frozen=True)
class TeacherConfig(StageConfig):
    """The ``teacher`` section of ``params.yaml``. ``synthetic_*`` keys: see :mod:`.synthetic`."""

    backend: Literal["synthetic", "unidepth"] = "synthetic"
    weights: str = "lpiccinelli/unidepth-v2-vits14"  # unidepth: hub name or local folder
    resolution_level: int = 0  # unidepth: processed image area, tenths of its training range [0, 10)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # unidepth
    batch_size: int = 8  # frames per teacher call and per write
    anchor_intrinsics: bool = True  # no K given: one median K from the teacher's per-frame predictions
    anchor_frames: int = 32  # frames (evenly spaced) the anchored K is estimated on
    min_depth: float = 0.01  # metres; below is invalid
    max_depth: float = 1000.0  # metres; above is invalid
    max_invalid_fraction: float = 0.5  # more invalid image pixels than this fails the stage
    seed: int = 0  # synthetic corruption seed
    synthetic_scale_jitter: float = 0.04  # std of per-frame log global scale
    synthetic_scale_drift: float = 0.04  # amplitude of the sinusoidal log-scale drift
    synthetic_drift_period: float = 96.0  # frames
    synthetic_noise_std: float = 0.04  # std of the smooth log-depth noise
    synthetic_noise_scale: float = 24.0  # its correlation length, pixels
    synthetic_noise_persistence: float = 0.5  # share of its variance shared by all frames
    synthetic_edge_threshold: float = 0.05  # log-depth step between neighbours that is an edge
    synthetic_edge_width: float = 2.0  # blur sigma at edges, pixels (0: no edge errors)
    synthetic_edge_mix: float = 0.8  # largest blend weight of the blur at edges
    synthetic_focal_error: float = 0.03  # std of the per-frame log focal-length error
    synthetic_confidence_scale: float = 0.1  # log-error at which confidence is 1/e
    synthetic_brightness_coupling: float = 0.3  # log scale error per unit of the frame's log mean brightness
    synthetic_texture_coupling: float = 0.5  # log-depth error per unit of the frame's fine luminance detail
    synthetic_texture_sigma: float = 2.0  # pixels: detail = luminance - its Gaussian blur of this sigma

    def __post_init__(self) -> None:
        if not 0 <= self.resolution_level < 10:
            raise ValueError(f"resolution_level must be in [0, 10), got {self.resolution_level}")
        if self.batch_size < 1 or self.anchor_frames < 1:
            raise ValueError("batch_size and anchor_frames must be at least 1")
        if not 0 < self.min_depth < self.max_depth <= FLOAT16_MAX:
            raise ValueError(f"need 0 < min_depth < max_depth <= {FLOAT16_MAX} (float16 storage), got "
                             f"{self.min_depth}, {self.max_depth}")
        if not 0 <= self.max_invalid_fraction <= 1:
            raise ValueError(f"max_invalid_fraction must be in [0, 1], got {self.max_invalid_fraction}")
        if not 0 <= self.synthetic_noise_persistence <= 1 or not 0 <= self.synthetic_edge_mix <= 1:
            raise ValueError("synthetic_noise_persistence and synthetic_edge_mix must be in [0, 1]")
        positive = ("synthetic_drift_period", "synthetic_noise_scale", "synthetic_edge_threshold",
                    "synthetic_confidence_scale", "synthetic_texture_sigma")
        if any(getattr(self, k) <= 0 for k in positive):
            raise ValueError(f"{', '.join(positive)} must be positive")
        magnitudes = ("synthetic_scale_jitter", "synthetic_scale_drift", "synthetic_noise_std",
                      "synthetic_edge_width", "synthetic_focal_error", "synthetic_brightness_coupling",
                      "synthetic_texture_coupling")
        if any(getattr(self, k) < 0 for k in magnitudes):
            raise ValueError(f"{', '.join(magnitudes)} must be non-negative")


@dataclass(frozen=True)
class TeacherOutput:
    """One batch of teacher predictions for ``B`` frames of ``H x W`` pixels.

    - ``depth``: ``(B, H, W)`` float32, metres (z-depth); may hold NaN/inf/<=0 where the network failed
    - ``confidence``: ``(B, H, W)`` float32 in [0, 1], higher is more reliable
    - ``K_used``: ``(B, 3, 3)`` float64, the intrinsics the prediction assumed (given K, else ``K_pred``)
    - ``K_pred``: ``(B, 3, 3)`` float64, the teacher's own intrinsics prediction
    """

    depth: np.ndarray
    confidence: np.ndarray
    K_used: np.ndarray
    K_pred: np.ndarray


@dataclass(frozen=True)
class VideoContext:
    """What a teacher may know about the video it runs on: its name, prepared store (path and group).

    ``window`` is ``(top, left, height, width)`` of the image area of the prepared frames (padding
    excluded): teachers only ever see that area, and their K and outputs are in its pixel coordinates.
    """

    name: str
    path: Path
    prepared: zarr.Group
    window: tuple[int, int, int, int]

    def crop(self, frames: np.ndarray) -> np.ndarray:
        """Crop ``(B, H', W', ...)`` prepared-geometry arrays to the image window ``(B, h, w, ...)``."""
        top, left, height, width = self.window
        return frames[:, top : top + height, left : left + width]

    def K_to_window(self, K: np.ndarray) -> np.ndarray:
        """Prepared-frame intrinsics ``(..., 3, 3)`` -> intrinsics of the cropped window."""
        out = np.array(K, dtype=np.float64, copy=True)
        out[..., 0, 2] -= self.window[1]  # cx -= left crop
        out[..., 1, 2] -= self.window[0]  # cy -= top crop
        return out

    def K_from_window(self, K: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`K_to_window`."""
        out = np.array(K, dtype=np.float64, copy=True)
        out[..., 0, 2] += self.window[1]
        out[..., 1, 2] += self.window[0]
        return out


class Teacher(abc.ABC):
    """A per-frame metric depth teacher bound to one video."""

    #: Registry name (``teacher.backend``).
    name: str

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg: TeacherConfig, video: VideoContext) -> Teacher:
        """Build the teacher for ``video`` (load weights, read ground truth, ...)."""

    @abc.abstractmethod
    def predict(self, rgb: np.ndarray, K: np.ndarray | None, frames: np.ndarray) -> TeacherOutput:
        """Predict a batch.

        ``rgb``: ``(B, H, W, 3)`` uint8 (the video's image window); ``K``: ``(B, 3, 3)`` intrinsics of
        that window, or None to let the teacher predict them; ``frames``: ``(B,)`` int frame indices in the
        video (deterministic backends derive their per-frame randomness from them, so outputs do not depend
        on the batch size).
        """

    @abc.abstractmethod
    def info(self) -> dict[str, Any]:
        """JSON-serialisable description for the store's attributes: name, weights, resolution level."""
