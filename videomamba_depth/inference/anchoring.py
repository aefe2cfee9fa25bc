"""Keyframe anchoring for the streaming student: revisit detection with state snapshots, and EMA scale
alignment while the view is stable.

Every ``interval`` frames the predictor stores a keyframe: the SSM states after that frame
(``StudentStates.clone()``), a small image descriptor and the output's log scale. When a later frame looks
like an old keyframe again (cosine similarity of descriptors at least ``similarity``, keyframe at least
``min_age`` frames old), the stream continues from that keyframe's states instead of its own: the model
"remembers" the view as it was when it first saw it, and the output scale snaps back to the keyframe's.

Independently, while consecutive frames are nearly identical (descriptor similarity at least ``stability``:
a still camera on a still scene), the global depth scale (median log depth over the image) is smoothed with
an exponential moving average; any larger change of view resets the average, so real depth changes pass
through untouched.

Memory stays bounded: at most ``max_keyframes`` snapshots (the oldest is dropped), each the size of the
states (``StudentStates.nbytes``).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from videomamba_depth.config import StageConfig
from videomamba_depth.models import StudentStates

# Descriptor thumbnail size (width, height): coarse enough to ignore small parallax and noise, fine enough
# to tell rooms and viewing directions apart.
THUMBNAIL_SIZE = (16, 12)


@dataclass(frozen=True)
class AnchoringConfig(StageConfig):
    """Keyframe anchoring (params ``evaluate.anchoring.*``; off by default).

    - ``enabled``: use anchoring at all.
    - ``interval``: frames between keyframe snapshots (Δ_k).
    - ``max_keyframes``: snapshots kept (oldest dropped): bounds memory at ``max_keyframes`` x state size.
    - ``min_age``: frames a keyframe must be old before it is restored (recent views are still in the
      states); also the least number of frames between two restores.
    - ``descriptor``: ``thumbnail`` (grey 16x12 thumbnail, zero-mean, unit-norm) or ``gradient`` (the same of
      the gradient magnitude: less sensitive to lighting).
    - ``similarity``: cosine similarity of descriptors at or above which a frame revisits a keyframe.
    - ``ema_momentum``: weight of the running scale in the EMA of the log depth scale (0 = no smoothing).
    - ``stability``: consecutive-frame descriptor similarity at or above which the view counts as stable and
      the EMA scale alignment applies.
    """

    enabled: bool = False
    interval: int = 8
    max_keyframes: int = 32
    min_age: int = 24
    descriptor: Literal["thumbnail", "gradient"] = "thumbnail"
    similarity: float = 0.97
    ema_momentum: float = 0.8
    stability: float = 0.995

    def __post_init__(self) -> None:
        if self.interval < 1 or self.max_keyframes < 1 or self.min_age < 1:
            raise ValueError("interval, max_keyframes and min_age must be >= 1")
        if not -1.0 <= self.similarity <= 1.0 or not -1.0 <= self.stability <= 1.0:
            raise ValueError("similarity and stability are cosine similarities in [-1, 1]")
        if not 0.0 <= self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in [0, 1), got {self.ema_momentum}")


def describe(rgb: np.ndarray, valid: np.ndarray | None, kind: str) -> np.ndarray:
    """Descriptor ``(h * w,)`` float64, zero-mean and unit-norm, of a frame ``(H, W, 3)`` uint8.

    Only the bounding box of ``valid`` (image pixels, not padding) is described.
    """
    if valid is not None:
        rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
        rgb = rgb[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    grey = rgb.astype(np.float32).mean(axis=2)
    if kind == "gradient":
        gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
        grey = np.hypot(gx, gy)
    elif kind != "thumbnail":
        raise ValueError(f"unknown descriptor {kind!r}; expected thumbnail or gradient")
    thumb = cv2.resize(grey, THUMBNAIL_SIZE, interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
    thumb -= thumb.mean()
    norm = np.linalg.norm(thumb)
    return thumb / norm if norm > 0 else thumb


@dataclass(frozen=True)
class Keyframe:
    """A snapshot: frame index, states after that frame, descriptor and the output's log scale."""

    frame: int
    states: StudentStates
    descriptor: np.ndarray
    log_scale: float


class KeyframeAnchor:
    """Anchoring state of one stream (see the module docstring). Used by ``StreamingDepth``.

    Per frame: :meth:`before_step` (may return keyframe states to continue from), the model step, then
    :meth:`after_step` (scale alignment, keyframe snapshot). ``events`` lists ``(frame, keyframe frame)`` of
    every restore, ``stable_frames`` counts frames whose scale was aligned.
    """

    def __init__(self, config: AnchoringConfig) -> None:
        self.config = config
        self.reset()

    def reset(self) -> None:
        """Forget everything (a new, unrelated clip starts)."""
        self.keyframes: deque[Keyframe] = deque(maxlen=self.config.max_keyframes)
        self.frame = -1
        self.last_restore = -(10**9)
        self.previous: np.ndarray | None = None
        self.current: np.ndarray | None = None
        self.ema: float | None = None
        self.events: list[tuple[int, int]] = []
        self.stable_frames = 0

    def before_step(self, rgb: np.ndarray, valid: np.ndarray | None) -> Keyframe | None:
        """Describe the new frame; return the keyframe to restore, if this frame revisits one."""
        cfg = self.config
        self.frame += 1
        self.previous, self.current = self.current, describe(rgb, valid, cfg.descriptor)
        if self.frame - self.last_restore < cfg.min_age:
            return None
        old = [k for k in self.keyframes if self.frame - k.frame >= cfg.min_age]
        if not old:
            return None
        scores = [float(k.descriptor @ self.current) for k in old]
        best = int(np.argmax(scores))
        if scores[best] < cfg.similarity:
            return None
        keyframe = old[best]
        self.events.append((self.frame, keyframe.frame))
        self.last_restore = self.frame
        # The scale snaps back to the keyframe's: the same view should get the same depth.
        self.ema = keyframe.log_scale
        return keyframe

    def after_step(self, depth: np.ndarray, states: StudentStates, valid: np.ndarray | None) -> np.ndarray:
        """Align the scale of ``depth`` ``(H, W)`` (metres) while the view is stable; snapshot keyframes."""
        cfg = self.config
        log_depth = np.log(depth if valid is None else depth[valid])
        scale = float(np.median(log_depth))
        stable = self.previous is not None and float(self.previous @ self.current) >= cfg.stability
        if stable and self.ema is not None:
            self.ema = cfg.ema_momentum * self.ema + (1.0 - cfg.ema_momentum) * scale
            depth = depth * np.float32(np.exp(self.ema - scale))
            self.stable_frames += 1
        elif self.last_restore != self.frame:
            self.ema = scale  # the view changed: nothing to smooth against
        if self.frame % cfg.interval == 0:
            self.keyframes.append(Keyframe(self.frame, states.clone(), self.current, float(self.ema)))
        return depth

    @property
    def nbytes(self) -> int:
        """Memory held by the keyframe snapshots, bytes."""
        return sum(k.states.nbytes + k.descriptor.nbytes for k in self.keyframes)
