"""Intrinsics for ``infer`` and ``infer-image``: given in a file, or estimated once and then fixed for the
whole video (an image is a one-frame video here).

Order of precedence (recorded in the output's ``intrinsics.source``):

1. ``given``: a ``.json``/``.npy`` file (``camera.load_intrinsics``), ``(3, 3)`` or per-frame ``(T, 3, 3)``,
   in pixels of the original frames; checked against the video size.
2. ``hfov``: an explicit horizontal field of view (``--hfov DEG``): ``fx = fy = W / (2 tan(hfov / 2))``,
   principal point at the image centre.
3. ``unidepth``: when the ``unidepth`` package is installed, UniDepthV2 predicts K on the first
   ``estimate_frames`` frames and the per-element median is used for every frame.
4. otherwise the ``hfov`` assumption with :data:`DEFAULT_HFOV_DEG`, with a loud warning: metric depth scales
   with the focal length, so a wrong guess scales every depth by the same wrong factor.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from videomamba_depth.camera import IntrinsicsError, load_intrinsics, make_K, validate_K
from videomamba_depth.decode import check_K_matches_video
from videomamba_depth.provenance import file_sha256

# Horizontal field of view assumed when nothing better is known: a typical phone main camera in video mode
# (about 60-70 degrees); the synthetic set spans 45-90.
DEFAULT_HFOV_DEG = 60.0
# UniDepthV2 weights that estimate K when none is given (hub name; a local folder works too).
DEFAULT_UNIDEPTH_WEIGHTS = "lpiccinelli/unidepth-v2-vits14"


class Frames(Protocol):
    """What the intrinsics come with: a video (``video.reader.VideoSource``) or one image
    (``inference.image.ImageFrame``): its path, ``(W, H)`` size and frame count (None: unknown)."""

    path: Path
    size: tuple[int, int]
    num_frames: int | None


@dataclass(frozen=True)
class Intrinsics:
    """K ``(3, 3)`` (fixed) or ``(T, 3, 3)`` (per frame) of the original frames, and how it was obtained."""

    K: np.ndarray
    info: dict[str, Any]

    def at(self, frame: int) -> np.ndarray:
        """K of ``frame`` (a per-frame K must cover it)."""
        if self.K.ndim == 2:
            return self.K
        if frame >= len(self.K):
            raise IntrinsicsError(
                f"{self.info.get('file')}: {len(self.K)} per-frame intrinsics, but the video has more frames"
            )
        return self.K[frame]


def K_from_hfov(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """Pinhole K of a ``width x height`` image with horizontal field of view ``hfov_deg``, centred.

    The image spans ``W`` pixels edge to edge (from u = -0.5 to W - 0.5), so ``fx = W / (2 tan(hfov/2))``
    and the principal point is ``((W - 1) / 2, (H - 1) / 2)`` (pixel centres at integers).
    """
    if not 0.0 < hfov_deg < 180.0:
        raise IntrinsicsError(f"hfov must be in (0, 180) degrees, got {hfov_deg}")
    f = width / (2.0 * math.tan(math.radians(hfov_deg) / 2.0))
    return make_K(f, f, (width - 1) / 2.0, (height - 1) / 2.0)


def unidepth_available() -> bool:
    """Whether the optional ``unidepth`` package is importable (checked without importing it)."""
    return importlib.util.find_spec("unidepth") is not None


def estimate_K_unidepth(frames: np.ndarray, weights: str, device: str) -> np.ndarray:
    """Median of UniDepthV2's own K predictions on ``frames`` ``(N, H, W, 3)`` uint8: ``(3, 3)`` pixels."""
    from videomamba_depth.teacher import TeacherConfig
    from videomamba_depth.teacher.unidepth import UniDepthTeacher

    cfg = TeacherConfig(backend="unidepth", weights=weights, device=device)
    # from_config only uses the video context for teachers that read the store; UniDepth reads nothing.
    teacher = UniDepthTeacher.from_config(cfg, None)
    K_pred = teacher.predict(frames, None, np.arange(len(frames))).K_pred
    return validate_K(np.median(K_pred, axis=0), "UniDepthV2 intrinsics estimate")


def load_given(path: str | Path, source: Frames) -> Intrinsics:
    """Intrinsics from a file, checked against the video's (or image's) size and frame count."""
    K = load_intrinsics(path)
    check_K_matches_video(K, str(path), source)
    info = {"source": "given", "file": Path(path).name, "sha256": file_sha256(path)}
    if K.ndim == 2:
        info["K"] = K.tolist()
    return Intrinsics(K, info)


def estimated(
    source: Frames,
    first_frames: np.ndarray,
    *,
    hfov_deg: float | None,
    unidepth_weights: str,
    device: str,
) -> Intrinsics:
    """Intrinsics without a file: explicit hfov, else UniDepthV2 when installed, else the default hfov."""
    width, height = source.size
    if hfov_deg is None and unidepth_available():
        K = estimate_K_unidepth(first_frames, unidepth_weights, device)
        info = {"source": "unidepth", "weights": unidepth_weights, "frames_used": len(first_frames)}
        return Intrinsics(K, {**info, "K": K.tolist()})
    if hfov_deg is None:
        hfov_deg = DEFAULT_HFOV_DEG
        print(
            f"WARNING: {source.path}: no intrinsics given and `unidepth` is not installed: ASSUMING a "
            f"{hfov_deg:g} degree horizontal field of view. Metric depth scales with the focal length, so "
            "every depth is off by the ratio of the true to the assumed focal. Pass --intrinsics K.json (or "
            "--hfov DEG), or install UniDepthV2 to estimate K.",
            file=sys.stderr,
        )
    K = K_from_hfov(width, height, hfov_deg)
    return Intrinsics(K, {"source": "hfov", "hfov_deg": hfov_deg, "K": K.tolist()})
