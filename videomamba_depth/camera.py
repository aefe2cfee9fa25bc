"""Pinhole camera conventions, intrinsics I/O and the resize + pad geometry of the ``prepare`` stage.

Conventions used everywhere in the project:

- Camera frame is OpenCV's: x right, y down, z forward. Depth is z (metres along the optical axis), not the
  distance along the ray.
- ``K`` maps camera points to pixel coordinates whose integer values are pixel *centres*:
  ``u = fx * x / z + cx``, so the centre of the top-left pixel is (0, 0) and an ideal centred principal
  point of a W x H image is ((W - 1) / 2, (H - 1) / 2).
- Poses are camera-to-world 4x4 matrices (``pose_c2w``); relative poses ``T_{b<-a}`` map points from camera
  a to camera b.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from videomamba_depth.errors import InputError


class IntrinsicsError(InputError):
    """Intrinsics that are missing, malformed or physically impossible."""


def validate_K(K: np.ndarray, source: str) -> np.ndarray:
    """Check a ``(3, 3)`` or ``(T, 3, 3)`` intrinsics array; return it as float64.

    Rejects non-finite values, non-positive focal lengths and a last row other than (0, 0, 1).
    """
    K = np.asarray(K, dtype=np.float64)
    if K.shape[-2:] != (3, 3) or K.ndim not in (2, 3):
        raise IntrinsicsError(f"{source}: intrinsics must be 3x3 or (T,3,3), got shape {K.shape}")
    if not np.isfinite(K).all():
        raise IntrinsicsError(f"{source}: intrinsics contain NaN or inf")
    Ks = K.reshape(-1, 3, 3)
    if (Ks[:, 0, 0] <= 0).any() or (Ks[:, 1, 1] <= 0).any():
        raise IntrinsicsError(
            f"{source}: focal lengths must be positive, got fx={Ks[:, 0, 0].min()}, fy={Ks[:, 1, 1].min()}"
        )
    if not np.allclose(Ks[:, 2], [0.0, 0.0, 1.0]) or not np.allclose(Ks[:, 1, 0], 0.0):
        raise IntrinsicsError(f"{source}: not an upper-triangular pinhole matrix with last row (0, 0, 1)")
    return K


def make_K(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """A ``(3, 3)`` float64 intrinsics matrix."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def load_intrinsics(path: str | Path) -> np.ndarray:
    """Read intrinsics from a ``.json`` or ``.npy`` file: ``(3, 3)`` or per-frame ``(T, 3, 3)``, float64.

    JSON may hold a 3x3 (or Tx3x3) nested list, ``{"K": ...}``, or ``{"fx", "fy", "cx", "cy"}`` in pixels,
    optionally with the frame size ``"width"``, ``"height"`` (:func:`intrinsics_size`). Values must be JSON
    numbers (``"fx": "100"`` is rejected, not converted) and a ``.npy`` array must have a numeric dtype.
    """
    path = Path(path)
    if path.suffix == ".npy":
        try:
            K = np.load(path, allow_pickle=False)
        except OSError as exc:
            raise IntrinsicsError(f"{path}: cannot read intrinsics ({exc.strerror or exc})") from exc
        except ValueError as exc:  # not an .npy file, or an object array (pickles are refused)
            raise IntrinsicsError(f"{path}: cannot parse intrinsics ({exc})") from exc
        if not isinstance(K, np.ndarray) or K.dtype.kind not in "iuf":
            raise IntrinsicsError(
                f"{path}: intrinsics must be a numeric array (pixels), got dtype {getattr(K, 'dtype', None)}"
            )
    elif path.suffix == ".json":
        payload = _read_json(path)
        _json_size(payload, path)
        K = _K_from_json(payload, path)
    else:
        raise IntrinsicsError(f"{path}: intrinsics must be a .json or .npy file")
    return validate_K(K, str(path))


def intrinsics_size(path: str | Path) -> tuple[int, int] | None:
    """``(W, H)`` stored next to K in a JSON intrinsics file (as :func:`save_intrinsics_json` writes it).

    None for ``.npy`` files and JSON without both ``"width"`` and ``"height"``.
    """
    path = Path(path)
    return _json_size(_read_json(path), path) if path.suffix == ".json" else None


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except OSError as exc:
        raise IntrinsicsError(f"{path}: cannot read intrinsics ({exc.strerror or exc})") from exc
    except ValueError as exc:  # JSON syntax, or bytes that are not UTF-8
        raise IntrinsicsError(f"{path}: cannot parse intrinsics ({exc})") from exc


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _json_size(payload: object, path: Path) -> tuple[int, int] | None:
    """Validated ``(width, height)`` of a JSON intrinsics payload, if it declares both."""
    if not isinstance(payload, dict):
        return None
    for key in ("width", "height"):
        value = payload.get(key)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise IntrinsicsError(f"{path}: '{key}' must be a positive whole number of pixels, got {value!r}")
    if "width" in payload and "height" in payload:
        return payload["width"], payload["height"]
    return None


def _number_array(value: object, path: Path, field: str) -> np.ndarray:
    """``value`` (a number or nested lists of numbers) as float64; strings, booleans, null are rejected."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif not _is_number(item):
            raise IntrinsicsError(f"{path}: '{field}' must hold numbers (pixels), got {item!r}")
    try:
        return np.asarray(value, dtype=np.float64)
    except ValueError as exc:  # ragged nesting
        raise IntrinsicsError(f"{path}: cannot parse intrinsics '{field}' ({exc})") from exc


def _K_from_json(obj: object, path: Path) -> np.ndarray:
    if isinstance(obj, dict):
        if "K" in obj:
            return _number_array(obj["K"], path, "K")
        if {"fx", "fy", "cx", "cy"} <= obj.keys():
            for key in ("fx", "fy", "cx", "cy"):
                if not _is_number(obj[key]):
                    raise IntrinsicsError(f"{path}: '{key}' must be a number (pixels), got {obj[key]!r}")
            return make_K(obj["fx"], obj["fy"], obj["cx"], obj["cy"])
        raise IntrinsicsError(f"{path}: JSON object needs 'K' or 'fx', 'fy', 'cx', 'cy'")
    return _number_array(obj, path, "K")


def save_intrinsics_json(path: str | Path, K: np.ndarray, width: int, height: int) -> None:
    """Write a ``(3, 3)`` K as JSON (``{"K": ..., "width": ..., "height": ..., "units": "pixels"}``)."""
    K = validate_K(K, str(path))
    payload = {"K": K.tolist(), "width": int(width), "height": int(height), "units": "pixels"}
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")


def per_frame_K(K: np.ndarray, num_frames: int, source: str) -> np.ndarray:
    """Broadcast a ``(3, 3)`` K to ``(T, 3, 3)``, or check that a per-frame K has ``T`` frames."""
    K = validate_K(K, source)
    if K.ndim == 2:
        return np.broadcast_to(K, (num_frames, 3, 3)).copy()
    if len(K) != num_frames:
        raise IntrinsicsError(f"{source}: {len(K)} per-frame intrinsics for a video of {num_frames} frames")
    return K


@dataclass(frozen=True)
class ResizePad:
    """Geometry of "resize so the long edge is ``long_edge``, then pad to a multiple" (the ``prepare`` stage).

    Sizes are (width, height). ``scale`` is (sx, sy) = resized / original per axis (they differ slightly,
    since the short edge is rounded to whole pixels). ``pad`` is (left, top, right, bottom), split as evenly
    as possible with the extra pixel on the right/bottom, so the principal point stays near the centre.
    """

    original_size: tuple[int, int]
    resized_size: tuple[int, int]
    padded_size: tuple[int, int]
    pad: tuple[int, int, int, int]

    @classmethod
    def fit(cls, width: int, height: int, long_edge: int, multiple: int) -> ResizePad:
        """Geometry for a ``width`` x ``height`` frame."""
        if width <= 0 or height <= 0:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if long_edge <= 0 or multiple <= 0:
            raise ValueError(f"long_edge and multiple must be positive, got {long_edge}, {multiple}")
        s = long_edge / max(width, height)
        w, h = max(1, round(width * s)), max(1, round(height * s))
        pw, ph = -w % multiple, -h % multiple
        pad = (pw // 2, ph // 2, pw - pw // 2, ph - ph // 2)
        return cls((width, height), (w, h), (w + pw, h + ph), pad)

    @property
    def scale(self) -> tuple[float, float]:
        return (self.resized_size[0] / self.original_size[0], self.resized_size[1] / self.original_size[1])

    def apply_K(self, K: np.ndarray) -> np.ndarray:
        """Intrinsics ``(..., 3, 3)`` of the original frames -> intrinsics of the prepared frames."""
        sx, sy = self.scale
        left, top = self.pad[0], self.pad[1]
        out = np.array(K, dtype=np.float64, copy=True)
        # Focal lengths scale with the image.
        out[..., 0, 0] *= sx
        out[..., 1, 1] *= sy
        out[..., 0, 1] *= sx  # skew is in x pixels per unit y/z
        # Principal point: pixel-area-aligned resampling (cv2.resize INTER_AREA/LINEAR) maps the centre of
        # pixel u to (u + 0.5) * s - 0.5, then padding shifts it right/down by the left/top pad.
        out[..., 0, 2] = (out[..., 0, 2] + 0.5) * sx - 0.5 + left
        out[..., 1, 2] = (out[..., 1, 2] + 0.5) * sy - 0.5 + top
        return out

    def invert_K(self, K: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`apply_K`: prepared-frame intrinsics back to original-frame intrinsics."""
        sx, sy = self.scale
        left, top = self.pad[0], self.pad[1]
        out = np.array(K, dtype=np.float64, copy=True)
        out[..., 0, 2] = (out[..., 0, 2] - left + 0.5) / sx - 0.5
        out[..., 1, 2] = (out[..., 1, 2] - top + 0.5) / sy - 0.5
        out[..., 0, 0] /= sx
        out[..., 1, 1] /= sy
        out[..., 0, 1] /= sx
        return out

    def valid_mask(self) -> np.ndarray:
        """``(H', W')`` bool: True on image pixels, False on padding."""
        (W, H), (left, top, right, bottom) = self.padded_size, self.pad
        mask = np.zeros((H, W), dtype=bool)
        mask[top : H - bottom, left : W - right] = True
        return mask

    def to_attrs(self) -> dict:
        """JSON-serialisable form for store attributes."""
        return {
            "original_size": list(self.original_size),
            "resized_size": list(self.resized_size),
            "padded_size": list(self.padded_size),
            "pad_left_top_right_bottom": list(self.pad),
            "scale_xy": list(self.scale),
        }

    @classmethod
    def from_attrs(cls, attrs: dict) -> ResizePad:
        """Inverse of :meth:`to_attrs`."""
        return cls(
            tuple(attrs["original_size"]),
            tuple(attrs["resized_size"]),
            tuple(attrs["padded_size"]),
            tuple(attrs["pad_left_top_right_bottom"]),
        )


def pixel_grid(height: int, width: int) -> np.ndarray:
    """``(H, W, 2)`` float64 pixel-centre coordinates (u, v)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return np.stack([u, v], axis=-1)


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Depth ``(H, W)`` (z, metres) and K ``(3, 3)`` -> camera points ``(H, W, 3)``."""
    uv = pixel_grid(*depth.shape)
    x = (uv[..., 0] - K[0, 2] - K[0, 1] * (uv[..., 1] - K[1, 2]) / K[1, 1]) / K[0, 0]
    y = (uv[..., 1] - K[1, 2]) / K[1, 1]
    return np.stack([x * depth, y * depth, depth], axis=-1)


def project(points: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Camera points ``(..., 3)`` -> pixel coordinates ``(..., 2)`` and depth ``(...)``."""
    z = points[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        x, y = points[..., 0] / z, points[..., 1] / z
    u = K[0, 0] * x + K[0, 1] * y + K[0, 2]
    v = K[1, 1] * y + K[1, 2]
    return np.stack([u, v], axis=-1), z


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 rigid transform to points ``(..., 3)``."""
    return points @ T[:3, :3].T + T[:3, 3]


def relative_pose(pose_a_c2w: np.ndarray, pose_b_c2w: np.ndarray) -> np.ndarray:
    """``T_{b<-a}``: maps points in camera a to camera b, from two camera-to-world poses."""
    return np.linalg.inv(pose_b_c2w) @ pose_a_c2w
