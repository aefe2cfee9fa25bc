"""Frame-by-frame rendering of a :class:`Scene`: anti-aliased RGB and exact ground truth.

Ground truth (depth, body hit, motion mask, flow) comes from one ray through each pixel centre, exactly as
``K`` maps it (``camera.py`` conventions), so it is consistent with ``camera.backproject``/``project`` to
float precision. Only the RGB is anti-aliased: textures are mip-filtered, silhouettes supersampled.
Frames are produced one at a time from analytic motions, so memory does not grow with the video length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from videomamba_depth.camera import pixel_grid, project
from videomamba_depth.synth.geometry import Body, cast, surface
from videomamba_depth.synth.scene import Scene

# A flow target counts as visible in frame t+1 when it faces camera t+1 and the first hit along the ray
# through it is no nearer than its own depth minus this relative tolerance (float32 casting: ~1e-6).
VISIBILITY_TOL = 1e-4
# Points must be at least this far in front of camera t+1 to be projected.
NEAR_M = 1e-6
# Grazing surfaces stretch a sample's footprint by 1/cos; capped so mip selection does not over-blur.
MIN_COS = 0.2
# Texture axes (u, v) of a face, by the local axis of its normal: v is the up axis on walls.
_TEXTURE_AXES = ((1, 2), (0, 2), (0, 1))


@dataclass(frozen=True)
class Frame:
    """One rendered frame and its ground truth (shapes for an H x W video)."""

    index: int
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32, z-depth in metres, finite and > 0
    pose_c2w: np.ndarray  # (4, 4) float64, camera-to-world
    K: np.ndarray  # (3, 3) float64, pixels
    motion_mask: np.ndarray  # (H, W) bool, the pixel shows an independently moving body
    body: np.ndarray  # (H, W) int16, index into Scene.bodies of the body seen (0: the room)
    flow_fwd: np.ndarray | None  # (H, W, 2) float32 (du, dv) to frame index + 1; None for the last frame
    flow_fwd_valid: np.ndarray | None  # (H, W) bool: lands inside frame index + 1 and is visible there


def camera_rays(K: np.ndarray, u: np.ndarray, v: np.ndarray, dtype: type = np.float64) -> np.ndarray:
    """Camera-frame ray directions ``(x/z, y/z, 1)``, ``(3, N)``, through pixel coordinates ``u, v`` ``(N,)``.

    Integer coordinates are pixel centres (``camera.py`` convention), so these invert ``camera.project``.
    """
    fx, skew, cx, fy, cy = K[0, 0], K[0, 1], K[0, 2], K[1, 1], K[1, 2]
    y = (v - cy) / fy
    x = (u - cx - skew * y) / fx
    return np.stack([x, y, np.ones_like(x)]).astype(dtype)


def _edges(labels: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: pixels whose label differs from a 4-neighbour's."""
    edge = np.zeros(labels.shape, dtype=bool)
    dx = labels[:, 1:] != labels[:, :-1]
    dy = labels[1:] != labels[:-1]
    edge[:, 1:] |= dx
    edge[:, :-1] |= dx
    edge[1:] |= dy
    edge[:-1] |= dy
    return edge


class Renderer:
    """Renders frames of one scene; holds only the scene and its pixel-centre rays.

    Arrays of points and directions are component-first ``(3, N)``: contiguous per component, which makes
    the per-ray arithmetic several times faster than ``(N, 3)``.

    Anti-aliasing is adaptive: textures are mip-filtered to the pixel footprint, so only pixels on a
    silhouette or crease (the body or face seen changes between neighbours) are re-rendered with a
    ``supersample`` x ``supersample`` grid of rays and averaged. Ground truth always uses the centre ray.
    """

    def __init__(self, scene: Scene) -> None:
        self.scene = scene
        self.pixels = pixel_grid(scene.height, scene.width).reshape(-1, 2)
        # Rays are cast in float32 (2-3x faster, depth good to ~1e-6 relative); the flow is then derived in
        # float64 from exactly the float32 depth that is stored.
        self.rays_px = camera_rays(scene.K, self.pixels[:, 0], self.pixels[:, 1])
        self.rays_px32 = self.rays_px.astype(np.float32)
        s = scene.supersample
        offsets = (np.arange(s) + 0.5) / s - 0.5
        # Sub-pixel sample offsets (du, dv), (s*s, 2), row-major.
        self.subpixel = np.stack(np.meshgrid(offsets, offsets, indexing="xy"), axis=-1).reshape(-1, 2)

    def frame(self, index: int, flow: bool = True) -> Frame:
        """Render frame ``index`` (time ``index / fps``) with its ground truth.

        ``flow=False`` skips the forward flow (``flow_fwd`` None) and with it the motion blur: the
        single-image path, which needs no next frame. Everything else is computed exactly as for a video
        frame, the scene's sensor included (``Scene.sensor``).
        """
        scene = self.scene
        W, H, time = scene.width, scene.height, index / scene.fps
        poses = scene.poses(time)
        pose = scene.camera.pose_c2w(time)
        depth, body = cast(scene.bodies, poses, pose, self.rays_px32)
        colour, face, normal = self._shade(poses, pose, self.rays_px32, depth, body, 1.0)
        linear = self._linear_rgb(poses, pose, colour, face, body)
        flow_fwd = valid = blur_flow = None
        # The last frame's motion (to a frame past the end: motions are analytic) still blurs it.
        if flow and (index + 1 < scene.num_frames or scene.sensor.shutter > 0):
            blur_flow, blur_valid = self._flow(index, poses, pose, depth, body, normal)
            if index + 1 < scene.num_frames:
                flow_fwd, valid = blur_flow, blur_valid
        return Frame(
            index=index,
            rgb=scene.sensor.develop(linear, index, blur_flow),
            depth=depth.reshape(H, W),
            pose_c2w=pose,
            K=scene.K.copy(),
            motion_mask=scene.moving[body].reshape(H, W),
            body=body.reshape(H, W),
            flow_fwd=flow_fwd,
            flow_fwd_valid=valid,
        )

    def _linear_rgb(self, poses: list, pose: np.ndarray, colour: np.ndarray, face: np.ndarray,
                    body: np.ndarray) -> np.ndarray:
        """``(H, W, 3)`` float32 linear colour (1 = white, not clipped) from the pixel-centre shading
        ``colour`` (3, N) and ``face`` (N,), re-rendered with supersampling where the pixel straddles an
        edge; the scene's sensor turns it into the recorded frame."""
        scene, s = self.scene, self.scene.supersample
        if s > 1:
            edge = np.flatnonzero(_edges((body * 6 + face).reshape(scene.height, scene.width)))
            u = (self.pixels[edge, 0, None] + self.subpixel[:, 0]).reshape(-1)
            v = (self.pixels[edge, 1, None] + self.subpixel[:, 1]).reshape(-1)
            rays = camera_rays(scene.K, u, v, np.float32)
            sub, _, _ = self._shade(poses, pose, rays, *cast(scene.bodies, poses, pose, rays), s)
            colour[:, edge] = sub.reshape(3, len(edge), s * s).mean(axis=2)
        colour *= scene.light_colour[:, None].astype(np.float32)
        return np.ascontiguousarray(colour.reshape(3, scene.height, scene.width).transpose(1, 2, 0))

    def _flow(self, index: int, poses: list, pose: np.ndarray, depth: np.ndarray, body: np.ndarray,
              normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Forward flow ``(H, W, 2)`` float32 and its validity ``(H, W)`` bool from frame ``index``, given the
        pixel-centre hits (``depth``, ``body``) and world surface normals ``normal`` (3, N) there."""
        scene = self.scene
        W, H, time = scene.width, scene.height, (index + 1) / scene.fps
        poses_next = scene.poses(time)
        pose_next = scene.camera.pose_c2w(time)
        points = pose[:3, 3, None] + (pose[:3, :3] @ self.rays_px) * depth
        normals = normal.astype(np.float64)
        for k in np.unique(body[scene.moving[body]]):
            sel = np.flatnonzero(body == k)
            (R0, c0), (R1, c1) = poses[k], poses_next[k]
            # Points on moving bodies ride along: body frame at t -> world at t+1.
            points[:, sel] = R1 @ (R0.T @ (points[:, sel] - c0[:, None])) + c1[:, None]
            normals[:, sel] = (R1 @ R0.T) @ normals[:, sel]
        cam = pose_next[:3, :3].T @ (points - pose_next[:3, 3, None])  # world -> camera t+1
        uv, z = project(cam.T, scene.K)
        front = z > NEAR_M
        flow = np.where(front[:, None], uv - self.pixels, 0.0)
        # Inside frame t+1: on the area of one of its pixels, [-0.5, W - 0.5) x [-0.5, H - 0.5).
        inside = front & (uv[:, 0] >= -0.5) & (uv[:, 0] < W - 0.5) & (uv[:, 1] >= -0.5) & (uv[:, 1] < H - 0.5)
        # Bodies are convex, so a point is hidden by its own body exactly when it faces away from the camera
        # (the room's inward normals always face it); other bodies are found by casting the ray through it.
        facing = _dot(normals, pose_next[:3, 3, None] - points) > 0
        rows = np.flatnonzero(inside & facing)
        rays = (cam[:, rows] / z[rows]).astype(np.float32)
        first_hit, _ = cast(scene.bodies, poses_next, pose_next, rays, room=False)
        valid = np.zeros(len(z), dtype=bool)
        valid[rows] = first_hit >= z[rows] * (1 - VISIBILITY_TOL)
        return flow.reshape(H, W, 2).astype(np.float32), valid.reshape(H, W)

    def _shade(self, poses: list, pose: np.ndarray, rays: np.ndarray, depth: np.ndarray, body: np.ndarray,
               samples_per_pixel_side: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Lambertian + ambient colour ``(3, N)`` float32 (before the light's tint), face index ``(N,)`` and
        world normal ``(3, N)`` at the hits of ``rays`` (3, N); ``samples_per_pixel_side`` sets the texture
        footprint."""
        scene = self.scene
        dtype = rays.dtype
        d = pose[:3, :3].astype(dtype) @ rays
        points = pose[:3, 3, None].astype(dtype) + d * depth
        length = np.sqrt(_dot(d, d))
        # Surface length one sample covers per metre along its ray, for a fronto-parallel surface.
        footprint_per_m = 1.0 / (scene.K[0, 0] * samples_per_pixel_side)
        colour = np.empty((3, rays.shape[1]), dtype=np.float32)
        faces = np.empty(rays.shape[1], dtype=np.int64)
        normals = np.empty((3, rays.shape[1]), dtype=dtype)
        for k in np.unique(body):
            sel = np.flatnonzero(body == k)
            R, c = (a.astype(dtype) for a in poses[k])
            p, d_k, n_k = points[:, sel], d[:, sel], length[sel]
            local = R.T @ (p - c[:, None])
            normal_l, face = surface(scene.bodies[k], local)
            normal = R @ normal_l
            cos = np.abs(_dot(normal, d_k)) / n_k
            footprint = depth[sel] * n_k * footprint_per_m / np.maximum(cos, MIN_COS)
            albedo = self._albedo(scene.bodies[k], local, normal_l, face, footprint)
            to_light = scene.light_position[:, None].astype(dtype) - p
            lambert = _dot(normal, to_light) / np.sqrt(_dot(to_light, to_light))
            colour[:, sel] = albedo * (scene.ambient + (1.0 - scene.ambient) * np.maximum(lambert, 0.0))
            faces[sel] = face
            normals[:, sel] = normal
        return colour, faces, normals

    def _albedo(self, body: Body, local: np.ndarray, normal: np.ndarray, face: np.ndarray,
                footprint: np.ndarray) -> np.ndarray:
        """Texture colour ``(3, M)``: planar projection along the face axis for boxes; for spheres a blend of
        the three axis projections weighted by ``n^4`` (triplanar mapping, no seams)."""
        material = np.asarray(body.materials)[face]
        # Texture coordinates start at the body's corner (walls tile from the room corner).
        corner = local + body.half[:, None].astype(local.dtype)
        colour = np.zeros((3, local.shape[1]), dtype=np.float32)
        for axis, (a, b) in enumerate(_TEXTURE_AXES):
            if body.kind == "sphere":
                weight = normal[axis] ** 4 / (normal[0] ** 4 + normal[1] ** 4 + normal[2] ** 4)
                sel = np.flatnonzero(weight > 0)
            else:
                sel = np.flatnonzero(face // 2 == axis)
            if len(sel) == 0:
                continue
            u = corner[a, sel] + body.tex_offset[0]
            v = corner[b, sel] + body.tex_offset[1]
            texel = self.scene.atlas.sample(material[sel], u, v, footprint[sel])
            colour[:, sel] += texel * weight[sel].astype(np.float32) if body.kind == "sphere" else texel
        return colour


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-column dot product of ``(3, M)`` arrays."""
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def render_frames(scene: Scene, start: int = 0, stop: int | None = None) -> Iterator[Frame]:
    """Frames ``start .. stop - 1`` (default: the whole video) of ``scene``, one at a time."""
    renderer = Renderer(scene)
    for index in range(start, scene.num_frames if stop is None else stop):
        yield renderer.frame(index)
