"""Rigid bodies, their smooth motion, and vectorised ray casting for the synthetic renderer.

World frame: metres, z up, the room's floor at z = 0 and its walls at x = 0, x = Lx, y = 0, y = Ly. Cameras
follow the project convention (OpenCV: x right, y down, z forward, see ``camera.py``).

Rays are cast from the camera centre with camera-frame directions ``(x/z, y/z, 1)``: the ray parameter of a
hit is then its z-depth, so the depth buffer is the ground-truth depth with no conversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

# Closest a bounding sphere may come to the camera plane and still be culled by its screen rectangle; closer
# bodies are tested against every ray.
CULL_NEAR_M = 0.05


def rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """``(3, 3)`` rotation by ``angle`` radians about the unit ``axis`` (Rodrigues)."""
    x, y, z = axis
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def yaw_rotation(yaw: float) -> np.ndarray:
    """``(3, 3)`` rotation about the world z (up) axis."""
    return rotation(np.array([0.0, 0.0, 1.0]), yaw)


# Camera axes in the world for yaw = pitch = roll = 0: looking along +x with z up, so camera x (right) is
# world -y and camera y (down) is world -z. Columns are the camera axes (a camera-to-world rotation).
_CAMERA_BASE = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-world ``(3, 3)``: heading ``yaw`` about world z (0 looks along +x), ``pitch`` up (> 0) or
    down (< 0) from horizontal, ``roll`` about the optical axis; radians."""
    heading = yaw_rotation(yaw) @ rotation(np.array([0.0, 1.0, 0.0]), -pitch)
    return heading @ _CAMERA_BASE @ rotation(np.array([0.0, 0.0, 1.0]), roll)


@dataclass(frozen=True, eq=False)
class Sinusoids:
    """A smooth bounded signal ``sum_k a_k sin(2 pi f_k t + phi_k)`` with vector amplitudes ``a_k``.

    ``amplitudes`` (K, D), ``freqs_hz`` (K,), ``phases`` (K,) radians. K = 0 is the constant zero signal.
    """

    amplitudes: np.ndarray
    freqs_hz: np.ndarray
    phases: np.ndarray

    @classmethod
    def zero(cls, dims: int) -> Sinusoids:
        return cls(np.zeros((0, dims)), np.zeros(0), np.zeros(0))

    def __call__(self, t: float) -> np.ndarray:
        """Value ``(D,)`` at time ``t`` seconds."""
        return np.sin(2 * np.pi * self.freqs_hz * t + self.phases) @ self.amplitudes

    def reach(self) -> float:
        """Bound on the signal's norm at any time: the sum of the amplitude norms."""
        return float(np.linalg.norm(self.amplitudes, axis=1).sum())

    def to_attrs(self) -> dict:
        return {
            "amplitudes": self.amplitudes.tolist(),
            "freqs_hz": self.freqs_hz.tolist(),
            "phases": self.phases.tolist(),
        }


@dataclass(frozen=True, eq=False)
class RigidPath:
    """Pose of a body over time: centre ``centre + offset(t)``, rotation ``R(spin_axis, spin * t) @ R0``.

    A static body has a zero offset and no spin.
    """

    centre: np.ndarray
    R0: np.ndarray
    offset: Sinusoids
    spin_axis: np.ndarray
    spin_rad_s: float

    @classmethod
    def static(cls, centre: np.ndarray, R0: np.ndarray) -> RigidPath:
        z = np.array([0.0, 0.0, 1.0])
        return cls(np.asarray(centre, float), np.asarray(R0, float), Sinusoids.zero(3), z, 0.0)

    @property
    def moving(self) -> bool:
        return len(self.offset.freqs_hz) > 0 or self.spin_rad_s != 0.0

    def pose(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Local-to-world rotation ``(3, 3)`` and centre ``(3,)`` at time ``t`` seconds."""
        R = rotation(self.spin_axis, self.spin_rad_s * t) @ self.R0 if self.spin_rad_s else self.R0
        return R, self.centre + self.offset(t)


@dataclass(frozen=True, eq=False)
class CameraPath:
    """Head-motion-like camera: position ``centre + offset(t)``; (yaw, pitch, roll) = ``base + angles(t)``."""

    centre: np.ndarray
    offset: Sinusoids
    base_angles: np.ndarray
    angles: Sinusoids

    def pose_c2w(self, t: float) -> np.ndarray:
        """Camera-to-world ``(4, 4)`` at time ``t`` seconds."""
        yaw, pitch, roll = self.base_angles + self.angles(t)
        pose = np.eye(4)
        pose[:3, :3] = camera_rotation(yaw, pitch, roll)
        pose[:3, 3] = self.centre + self.offset(t)
        return pose


BodyKind = Literal["room", "box", "sphere"]


@dataclass(frozen=True, eq=False)
class Body:
    """A textured rigid primitive.

    ``room``: an axis-aligned box seen from inside (the camera is always in it); ``box``: an oriented box;
    ``sphere``: ``half`` holds the radius three times. ``materials`` gives the texture of each face, indexed
    ``2 * axis + (normal points to +axis)`` in the local frame (all six equal for a sphere). ``tex_offset``
    (metres) shifts the texture so equal materials do not line up across bodies.
    """

    kind: BodyKind
    half: np.ndarray
    path: RigidPath
    materials: tuple[int, int, int, int, int, int]
    tex_offset: np.ndarray

    @property
    def bound_radius(self) -> float:
        """Radius of a sphere about the centre that contains the body."""
        return float(self.half[0]) if self.kind == "sphere" else float(np.linalg.norm(self.half))


def _argmax3(a: np.ndarray) -> np.ndarray:
    """Index of the largest of three rows ``(3, M)``, per column (much faster than ``argmax(axis=0)``)."""
    return np.where((a[0] >= a[1]) & (a[0] >= a[2]), 0, np.where(a[1] >= a[2], 1, 2))


def _hit_box(o_l: np.ndarray, d_l: np.ndarray, half: np.ndarray, inside: bool) -> np.ndarray:
    """Slab test in the box frame, rays ``(3, M)``: entry depth (exit when ``inside``), inf on a miss."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1.0 / d_l
        t1 = (-half - o_l)[:, None] * inv
        t2 = (half - o_l)[:, None] * inv
    far = np.maximum(t1, t2)
    t_far = np.minimum(np.minimum(far[0], far[1]), far[2])
    if inside:
        return t_far
    near = np.minimum(t1, t2)
    t_near = np.maximum(np.maximum(near[0], near[1]), near[2])
    # The camera is never inside a body, so a hit has its entry in front of the camera.
    return np.where((t_near <= t_far) & (t_near > 0), t_near, np.inf)


def _hit_sphere(o_l: np.ndarray, d: np.ndarray, radius: float) -> np.ndarray:
    """Nearest positive root of ``|o + t d|^2 = r^2``, rays ``(3, M)`` not normalised; inf on a miss."""
    a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    b = o_l @ d
    c = o_l @ o_l - radius**2
    disc = b * b - a * c
    with np.errstate(invalid="ignore"):
        t = (-b - np.sqrt(disc)) / a
    return np.where((disc >= 0) & (t > 0), t, np.inf)


def _candidates(centre_cam: np.ndarray, radius: float, rays: np.ndarray) -> np.ndarray | slice:
    """Rays that can hit a bounding sphere: those inside its screen rectangle, or all when it is too close.

    The rectangle bounds x/z and y/z over the sphere's bounding cube, whose corners all lie in front of the
    camera; the extremes of x/z over the cube are at its corners, so no hitting ray is dropped.
    """
    x, y, z = centre_cam
    if z - radius <= CULL_NEAR_M:
        return slice(None)
    zs = np.array([z - radius, z + radius])
    xs = np.concatenate([(x - radius) / zs, (x + radius) / zs])
    ys = np.concatenate([(y - radius) / zs, (y + radius) / zs])
    inside = (rays[0] >= xs.min()) & (rays[0] <= xs.max()) & (rays[1] >= ys.min()) & (rays[1] <= ys.max())
    return np.flatnonzero(inside)


def cast(
    bodies: tuple[Body, ...],
    poses: list[tuple[np.ndarray, np.ndarray]],
    pose_c2w: np.ndarray,
    rays: np.ndarray,
    room: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """First hit of each ray from the camera centre.

    ``bodies[0]`` is the room; ``poses[k]`` is body k's (R, centre). ``rays`` (3, N) are camera-frame
    directions with z = 1, in the precision to compute in. Returns the z-depth ``(N,)`` (finite: every ray
    leaves through the room) and the index of the body hit ``(N,)`` int16. With ``room=False`` the room is
    left out (depth inf, index 0 where no other body is hit): enough to test occlusion, as nothing in the
    room can be hidden by its walls.
    """
    dtype = rays.dtype
    R_c2w, origin = pose_c2w[:3, :3], pose_c2w[:3, 3]
    d = R_c2w.astype(dtype) @ rays
    if room:
        R, c = poses[0]
        o_l, d_l = (R.T @ (origin - c)).astype(dtype), R.T.astype(dtype) @ d
        depth = _hit_box(o_l, d_l, bodies[0].half.astype(dtype), True)
    else:
        depth = np.full(rays.shape[1], np.inf, dtype=dtype)
    index = np.zeros(rays.shape[1], dtype=np.int16)
    for k in range(1, len(bodies)):
        body, (R, c) = bodies[k], poses[k]
        sel = _candidates(R_c2w.T @ (c - origin), body.bound_radius, rays)
        d_sel = d[:, sel]
        if d_sel.shape[1] == 0:
            continue
        if body.kind == "sphere":  # rotation-invariant: intersect in world axes
            t = _hit_sphere((origin - c).astype(dtype), d_sel, float(body.half[0]))
        else:
            o_l, d_l = (R.T @ (origin - c)).astype(dtype), R.T.astype(dtype) @ d_sel
            t = _hit_box(o_l, d_l, body.half.astype(dtype), False)
        closer = t < depth[sel]
        rows = np.flatnonzero(closer) if isinstance(sel, slice) else sel[closer]
        depth[rows] = t[closer]
        index[rows] = k
    return depth, index


def surface(body: Body, p_local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward (inward for the room) local normals ``(3, M)`` and face indices ``(M,)`` of surface points
    ``(3, M)`` given in the body frame."""
    cols = np.arange(p_local.shape[1])
    if body.kind == "sphere":
        normal = p_local / body.half[0]
        axis = _argmax3(np.abs(normal))
    else:
        axis = _argmax3(np.abs(p_local) / body.half[:, None].astype(p_local.dtype))
        sign = np.sign(p_local[axis, cols])
        normal = np.zeros_like(p_local)
        normal[axis, cols] = -sign if body.kind == "room" else sign
    positive = p_local[axis, cols] > 0
    return normal, 2 * axis + positive


def distance_to_body(point: np.ndarray, body: Body, t: float = 0.0) -> float:
    """Euclidean distance from a world point to the surface-enclosed volume of a body (0 inside)."""
    R, c = body.path.pose(t)
    p_l = (point - c) @ R
    if body.kind == "sphere":
        return max(0.0, float(np.linalg.norm(p_l)) - float(body.half[0]))
    return float(np.linalg.norm(np.maximum(np.abs(p_l) - body.half, 0.0)))
