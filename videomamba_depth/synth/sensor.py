"""The camera after the lens: motion blur, exposure and white-balance flicker, sensor noise, 8-bit output.

Real video is hard for a per-frame depth network in ways a clean render is not: the same surface changes
brightness and colour from one frame to the next (auto-exposure and auto-white-balance hunting), is smeared
along its motion while the shutter is open, and is covered in fresh noise every frame. A :class:`Sensor`
turns the renderer's linear colour into the 8-bit frame such a camera records; the ground truth (depth,
flow, masks) stays that of the sharp scene at the frame's time. H.264 compression at the video's ``crf``
follows in the writer.

Developing frame ``t`` (linear colour ``I``, (H, W, 3) float32, 1.0 = white):

1. motion blur: the mean of ``n`` samples of ``I`` at ``p + s * flow_t(p)``, ``s`` evenly spaced over
   ``[-shutter / 2, shutter / 2]`` (the shutter open for that share of the frame interval, centred on the
   frame's time), ``flow_t`` the forward flow to frame t+1 (pixels per frame interval); ``n`` grows with
   the longest streak, up to :data:`MAX_BLUR_TAPS`;
2. exposure and white balance: ``I * exp(e_t + w_t)``, ``e_t ~ N(0, exposure_flicker^2)`` one gain for the
   frame, ``w_t ~ N(0, white_balance_flicker^2)`` one per channel;
3. clip to [0, 1], then Gaussian read + shot noise of standard deviation
   ``noise * sqrt((I + 0.05) / 0.55)`` (``noise`` at mid-grey, about a third of it in the blacks);
4. quantise to uint8.

A sensor with every effect at zero develops exactly the renderer's clean frame. Per-video magnitudes are
drawn from the ``synth`` ranges with the scene; per-frame draws come from a generator seeded by the scene's
seed and the frame index, so any frame renders the same alone or in sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from videomamba_depth.camera import pixel_grid

# Most samples averaged for one pixel's motion blur (one per pixel of streak length, plus one).
MAX_BLUR_TAPS = 9
# Per-frame random stream of a scene's sensor, apart from the layout's and textures' SeedSequence streams.
_FRAME_STREAM = 0x53454E53
# Shot noise: standard deviation proportional to sqrt(I + floor), 1 x noise at mid-grey.
_SHOT_FLOOR, _MID_GREY = 0.05, 0.5


@dataclass(frozen=True)
class Sensor:
    """One video's camera: per-video magnitudes of the effects in the module docstring."""

    seed: int
    noise: float = 0.0  # std of the noise at mid-grey, in units of full scale
    exposure_flicker: float = 0.0  # std of the per-frame log exposure gain
    white_balance_flicker: float = 0.0  # std of the per-frame, per-channel log gain
    shutter: float = 0.0  # exposure time as a share of the frame interval (motion blur)
    crf: int = 18  # H.264 constant rate factor of the video file

    def to_attrs(self) -> dict:
        return {"noise": round(self.noise, 6), "exposure_flicker": round(self.exposure_flicker, 6),
                "white_balance_flicker": round(self.white_balance_flicker, 6),
                "shutter": round(self.shutter, 6), "crf": self.crf}

    def develop(self, linear: np.ndarray, index: int, flow: np.ndarray | None = None) -> np.ndarray:
        """Frame ``index``: linear colour ``(H, W, 3)`` float32 -> ``(H, W, 3)`` uint8, steps 1-4 of the
        module docstring; ``flow`` ``(H, W, 2)`` (du, dv) to the next frame, or None for no motion blur."""
        image = linear
        if flow is not None and self.shutter > 0:
            image = motion_blur(image, flow, self.shutter)
        rng = np.random.default_rng([self.seed, _FRAME_STREAM, index])
        exposure = self.exposure_flicker * rng.standard_normal()
        white_balance = self.white_balance_flicker * rng.standard_normal(3)
        if self.exposure_flicker > 0 or self.white_balance_flicker > 0:
            image = image * np.exp(exposure + white_balance).astype(np.float32)
        image = np.clip(image, 0.0, 1.0)
        if self.noise > 0:
            std = self.noise * np.sqrt((image + _SHOT_FLOOR) / (_MID_GREY + _SHOT_FLOOR))
            image = np.clip(image + std * rng.standard_normal(image.shape, dtype=np.float32), 0.0, 1.0)
        return (image * 255 + 0.5).astype(np.uint8)


def motion_blur(image: np.ndarray, flow: np.ndarray, shutter: float) -> np.ndarray:
    """``image`` ``(H, W, C)`` float32 averaged along ``shutter * flow`` ``(H, W, 2)`` (pixels), centred on
    each pixel: samples at ``p + s * flow(p)``, ``s`` evenly spaced in ``[-shutter / 2, shutter / 2]``, read
    bilinearly with reflected borders."""
    streak = shutter * float(np.sqrt((flow.astype(np.float64) ** 2).sum(axis=-1)).max(initial=0.0))
    taps = min(MAX_BLUR_TAPS, math.ceil(streak) + 1)
    if taps < 2:
        return image
    uv = pixel_grid(*image.shape[:2]).astype(np.float32)
    total = np.zeros_like(image)
    for s in np.linspace(-shutter / 2, shutter / 2, taps, dtype=np.float32):
        target = uv + s * flow
        total += cv2.remap(image, target[..., 0], target[..., 1], cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
    return total / taps
