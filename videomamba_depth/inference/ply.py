"""A minimal binary PLY writer for coloured point clouds (``infer --points-every``, ``infer-image --ply``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from videomamba_depth.camera import backproject

# One vertex: position in metres (camera frame) and 8-bit colour. Little-endian, no padding: 15 bytes.
VERTEX_DTYPE = np.dtype(
    [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
)


def write_ply(path: str | Path, points: np.ndarray, colors: np.ndarray, comment: str = "") -> Path:
    """Write points ``(N, 3)`` (float, metres) with colours ``(N, 3)`` uint8 as binary little-endian PLY.

    Properties ``x y z`` (float32) and ``red green blue`` (uchar), in that order; ``comment`` becomes one
    header comment line (e.g. the coordinate frame).
    """
    points, colors = np.asarray(points), np.asarray(colors)
    if points.ndim != 2 or points.shape[1] != 3 or colors.shape != points.shape or colors.dtype != np.uint8:
        raise ValueError(f"expected points (N, 3) and uint8 colours (N, 3), got {points.shape} and "
                         f"{colors.shape} {colors.dtype}")
    vertices = np.empty(len(points), VERTEX_DTYPE)
    for i, name in enumerate("xyz"):
        vertices[name] = points[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        vertices[name] = colors[:, i]
    header = ["ply", "format binary_little_endian 1.0"]
    header += [f"comment {line}" for line in comment.splitlines() if line]
    header += [f"element vertex {len(vertices)}"]
    header += [f"property float {n}" for n in "xyz"]
    header += [f"property uchar {n}" for n in ("red", "green", "blue")]
    header += ["end_header"]
    path = Path(path)
    with open(path, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        vertices.tofile(f)
    return path


def write_depth_points(
    path: str | Path, depth: np.ndarray, rgb: np.ndarray, K: np.ndarray, label: str
) -> Path:
    """One point per pixel of a depth map ``(H, W)`` (z, metres), coloured by ``rgb`` ``(H, W, 3)`` uint8,
    back-projected with ``K`` ``(3, 3)`` (pixels) into camera coordinates; ``label`` (e.g. ``frame 12``)
    starts the header comment."""
    points = backproject(depth.astype(np.float64), K).reshape(-1, 3)
    comment = f"VideoMambaDepth {label}; camera coordinates (OpenCV: x right, y down, z forward), metres"
    return write_ply(path, points, rgb.reshape(-1, 3), comment)
