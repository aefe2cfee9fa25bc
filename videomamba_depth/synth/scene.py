"""Random indoor scenes for the synthetic RGB-D videos, all drawn from one seed.

A scene is a textured room (3.5-8 m, walls, floor, ceiling), furniture-sized boxes resting on the floor or
against walls, balls and small boxes on the floor and on furniture, posters on the walls, and 1-3 freely
moving textured objects in front of a hand-held camera. Placement keeps every body clear of the camera's
whole reachable region and of the moving objects' swept volumes, so no frame ever starts inside geometry
and nothing interpenetrates. Motions are sums of sinusoids, so they are smooth and stay bounded however
long the video is, and the layout does not depend on the number of frames.

Two events of real footage that a single frame cannot resolve, each in a drawn share of the videos
(their own random stream, so a video without them is laid out exactly as before): a person-sized box that
walks across the view close to the camera, hiding most of the scene for a moment (``passers``), and a camera
that stands by a plain wall and turns to face it from a view of the room (``near_wall``): close to a
featureless wall the view alone does not tell the scale.

Moving objects are framed the way a filmed subject is: their size and speed are drawn relative to the view
(a share of the image width, a share of the field of view per second) at the distance where they are
placed, and they travel around elliptical loops facing the camera at near-constant speed. So they are
never momentarily still (a sinusoid back and forth stops at each turn) and always cover a fair share of
the image when in view, like the people, pets and cars that move in real videos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from videomamba_depth.camera import make_K
from videomamba_depth.config import StageConfig
from videomamba_depth.manifest import check_name
from videomamba_depth.synth.geometry import (
    Body,
    CameraPath,
    RigidPath,
    Sinusoids,
    distance_to_body,
    yaw_rotation,
)
from videomamba_depth.synth.sensor import Sensor
from videomamba_depth.synth.textures import TextureAtlas, make_texture

# Gap between the camera's reachable sphere and any static body: nothing fills the view from point-blank.
CAMERA_CLEARANCE_M = 0.8
# Gap between the camera's and a moving object's reachable spheres.
CAMERA_MOVING_GAP_M = 0.5
# How far the camera's reachable region stays from the walls.
CAMERA_WALL_MARGIN_M = 0.4
# Laps per second of a moving object's loop: one lap takes 1.7-4 s, about one per video.
MOVING_HZ = (0.25, 0.6)
# Later placement attempts tighten a loop (more laps per second at the same speed, so a smaller loop) by up
# to this factor to fit the room.
MAX_TIGHTEN = 2.0
# Minor / major semi-axis of a loop, and the largest tilt of its minor axis from vertical towards the
# camera. The loop faces the camera, so the speed across the image never falls below ~0.6 of its mean.
LOOP_ASPECT = (0.6, 1.0)
LOOP_TILT_DEG = 30.0
# Passers: person-sized boxes (along their walk, across it, height; metres) walking on the floor across the
# view at a peak speed drawn from PASSER_SPEED_MPS, crossing the middle of the view at a drawn share of the
# video. They come no closer to the camera's reachable sphere than PASSER_CAMERA_GAP_M, and their straight
# path is checked against the other bodies as boxes placed every PASSER_STEP_M along it.
PASSER_SIZE_M = ((0.25, 0.4), (0.4, 0.56), (1.5, 1.9))
PASSER_SPEED_MPS = (0.8, 1.5)
PASSER_CAMERA_GAP_M = 0.35
PASSER_EXTRA_DISTANCE_M = (0.0, 0.5)
PASSER_CROSSING = (0.2, 0.8)
PASSER_STEP_M = 0.15
# Near-wall videos: the camera stands this far beyond its wall margin from a plain (non-accent) wall, a
# share of the wall's length from a corner, looks into the room along the wall at the start, and has turned
# to face the wall (within NEAR_WALL_SQUINT_DEG of square-on) at a drawn share of the video.
NEAR_WALL_GAP_M = (0.1, 0.5)
NEAR_WALL_ALONG = (0.15, 0.35)
NEAR_WALL_INTO_ROOM_DEG = (5.0, 25.0)
NEAR_WALL_SQUINT_DEG = 15.0
NEAR_WALL_TURNED = (0.6, 1.0)
# Box edges of a moving box, as fractions of its drawn size (so it looks about as large as a ball would).
MOVING_BOX_EDGES = (0.7, 1.0)
# Spin of moving objects about a random axis: the speed of their surface about their centre, as a share of
# their speed around the loop. Kept well below 1, so no surface point ever stands still (as the contact
# point of a rolling ball does) and every visible point moves with the object.
MOVING_SPIN_SHARE = (0.1, 0.3)
# Height of a moving object's loop centre: the camera's mean line of sight at its distance, give or take
# this share of the half-height of the view there (so it is framed, not left out of the image).
MOVING_HEIGHT_SPREAD = 0.4
# Furniture boxes (width, depth, height ranges in metres) and how many placements to try per body.
FURNITURE_W, FURNITURE_D, FURNITURE_H = (0.4, 1.8), (0.35, 0.8), (0.45, 2.0)
ATTEMPTS = 40
# Bodies may touch (an item on a table) but not overlap by more than this.
TOUCH_TOL_M = 1e-3
# Least gap between a moving object's swept sphere and any other body.
GAP_M = 0.05


class SceneLayoutError(RuntimeError):
    """The scene of a seed cannot be laid out with the config's ranges (no moving object fits its room)."""


@dataclass(frozen=True)
class SynthConfig(StageConfig):
    """Parameters of the synthetic videos (``synth`` section of params.yaml).

    Pairs are [low, high] ranges drawn uniformly per video from its seed.
    """

    videos: dict[str, int] = field(default_factory=dict)  # video name -> seed
    width: int = 256  # frame size in pixels (even: H.264 yuv420p)
    height: int = 192
    fps: int = 24
    num_frames: tuple[int, int] = (48, 64)  # frames per video (inclusive range)
    supersample: int = 2  # RGB anti-aliasing: supersample x supersample rays per pixel (1 = none)
    crf: tuple[int, int] = (20, 30)  # H.264 constant rate factor of video.mp4 (lower = better quality)
    hfov_deg: tuple[float, float] = (45.0, 90.0)  # horizontal field of view
    principal_offset: float = 0.02  # max |principal point - image centre| as a fraction of width/height
    room_size_m: tuple[float, float] = (3.5, 8.0)  # room length and width (each drawn separately)
    room_height_m: tuple[float, float] = (2.4, 3.2)
    camera_height_m: tuple[float, float] = (1.2, 1.8)  # mean camera height above the floor
    camera_speed_mps: tuple[float, float] = (0.2, 0.6)  # RMS translation speed (less in small rooms)
    camera_yaw_deg: tuple[float, float] = (8.0, 20.0)  # amplitude of the heading oscillation
    camera_pitch_deg: tuple[float, float] = (-20.0, 0.0)  # mean pitch (negative looks down)
    motion_hz: tuple[float, float] = (0.1, 0.35)  # frequencies of the camera's sinusoidal motion
    furniture: tuple[int, int] = (3, 7)  # furniture boxes per room
    moving_objects: tuple[int, int] = (1, 3)  # independently moving objects per video
    moving_view_size: tuple[float, float] = (0.2, 0.35)  # apparent size of moving objects, share of the width
    moving_view_speed: tuple[float, float] = (0.2, 0.4)  # their angular speed, fields of view per second
    moving_distance_m: tuple[float, float] = (1.5, 3.2)  # distance from the camera when placed
    ambient: float = 0.5  # ambient share of the lighting (the rest is Lambertian from a ceiling light)
    # The camera after the lens (synth/sensor.py), per video; every effect 0 gives the clean render.
    sensor_noise: tuple[float, float] = (0.005, 0.02)  # read + shot noise std at mid-grey (full scale = 1)
    exposure_flicker: tuple[float, float] = (0.0, 0.06)  # std of the per-frame log exposure gain
    white_balance_flicker: tuple[float, float] = (0.0, 0.02)  # std of the per-frame per-channel log gain
    shutter: tuple[float, float] = (0.0, 0.5)  # exposure time, share of the frame interval (motion blur)
    # Events a single frame cannot resolve: share of the videos that get each (0 = never, 1 = every video).
    passers: float = 0.4  # a person-sized box walks across the view, 0.6-2 m from the camera
    near_wall: float = 0.25  # the camera stands by a plain wall and turns to face it

    def __post_init__(self) -> None:
        for name in self.videos:
            check_name(name, "videos: name")
        if self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2:
            raise ValueError(f"width and height must be positive and even, got {self.width}x{self.height}")
        if self.fps <= 0 or self.supersample < 1 or not (0 <= self.crf[0] and self.crf[1] <= 51):
            raise ValueError("fps must be > 0, supersample >= 1 and crf within [0, 51]")
        if min(*self.sensor_noise, *self.exposure_flicker, *self.white_balance_flicker, *self.shutter) < 0:
            raise ValueError("sensor_noise, exposure_flicker, white_balance_flicker and shutter must be >= 0")
        if self.shutter[1] > 1:
            raise ValueError(f"shutter is a share of the frame interval, at most 1, got {self.shutter}")
        for name in ("crf", "sensor_noise", "exposure_flicker", "white_balance_flicker", "shutter",
                     "num_frames", "hfov_deg", "room_size_m", "room_height_m", "camera_height_m",
                     "camera_speed_mps", "camera_yaw_deg", "camera_pitch_deg", "motion_hz", "furniture",
                     "moving_objects", "moving_view_size", "moving_view_speed", "moving_distance_m"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name}: low {low} > high {high}")
        if self.num_frames[0] < 2:
            raise ValueError("num_frames: a video needs at least 2 frames (flow is between frames)")
        if not (0 < self.hfov_deg[0] and self.hfov_deg[1] < 170):
            raise ValueError(f"hfov_deg must lie in (0, 170), got {self.hfov_deg}")
        if self.room_size_m[0] < 3.0 or self.room_height_m[0] < self.camera_height_m[1] + 0.5:
            raise ValueError("rooms must be >= 3 m wide and >= 0.5 m taller than the highest camera")
        if self.moving_objects[0] < 1:
            raise ValueError("moving_objects: every video needs at least one moving object")
        if self.moving_view_size[0] <= 0 or self.moving_view_speed[0] <= 0 or self.moving_distance_m[0] <= 0:
            raise ValueError("moving_view_size, moving_view_speed and moving_distance_m must be > 0")
        for name in ("ambient", "passers", "near_wall"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def seed(self, name: str) -> int:
        """The seed of video ``name``; a clear error when it is not listed."""
        if name not in self.videos:
            raise KeyError(f"data/synth_videos.yaml has no video '{name}'; known: {sorted(self.videos)}")
        return self.videos[name]


@dataclass(frozen=True, eq=False)
class Scene:
    """Everything needed to render one video, frame by frame.

    ``bodies[0]`` is the room, then static bodies, then the moving ones (``num_static`` counts room and
    static bodies), passers last. ``K`` (3, 3) is the same for every frame. ``events`` describes the video's
    passer and near-wall turn (``None`` where it has none), for the ground truth's attributes.
    """

    seed: int
    width: int
    height: int
    fps: int
    num_frames: int
    supersample: int
    hfov_deg: float
    K: np.ndarray
    bodies: tuple[Body, ...]
    num_static: int
    camera: CameraPath
    atlas: TextureAtlas
    patterns: tuple[str, ...]
    light_position: np.ndarray
    light_colour: np.ndarray
    ambient: float
    sensor: Sensor
    events: dict

    @property
    def moving(self) -> np.ndarray:
        """``(num_bodies,)`` bool: which bodies move independently of the room."""
        return np.arange(len(self.bodies)) >= self.num_static

    def poses(self, t: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """Every body's (R, centre) at time ``t`` seconds."""
        return [b.path.pose(t) for b in self.bodies]

    def summary(self) -> dict:
        """JSON-serialisable description for the ground-truth store's attributes."""
        room = self.bodies[0]
        return {
            "world": "metres; z up; floor z=0; room spans [0, Lx] x [0, Ly] x [0, Lz]",
            "room_m": (2 * room.half).round(4).tolist(),
            "hfov_deg": round(self.hfov_deg, 4),
            "static_bodies": [b.kind for b in self.bodies[1 : self.num_static]],
            "moving_bodies": [
                {
                    "kind": b.kind,
                    "half_extents_m": b.half.round(4).tolist(),
                    "reach_m": round(b.path.offset.reach(), 4),
                    "spin_deg_s": round(math.degrees(b.path.spin_rad_s), 2),
                }
                for b in self.bodies[self.num_static :]
            ],
            "camera": {
                "centre_m": self.camera.centre.round(4).tolist(),
                "reach_m": round(self.camera.offset.reach(), 4),
                "base_yaw_pitch_roll_deg": np.degrees(self.camera.base_angles).round(3).tolist(),
                "offset": self.camera.offset.to_attrs(),
                "angles": self.camera.angles.to_attrs(),
            },
            "textures": list(self.patterns),
            "ambient": self.ambient,
            "sensor": self.sensor.to_attrs(),
            "events": self.events,
        }


class _Materials:
    """Texture recipes collected while laying out a scene; generated at the end from their own stream."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.recipes: list[tuple[str, tuple[float, float, float]]] = []

    def add(self, pattern: str, hsv: tuple[float, float, float]) -> int:
        self.recipes.append((pattern, hsv))
        return len(self.recipes) - 1

    def pick(self, patterns: list[str], h: tuple[float, float], s: tuple[float, float],
             v: tuple[float, float]) -> int:
        """A new material: a random pattern of ``patterns`` in a colour drawn from the HSV ranges."""
        rng = self.rng
        pattern = patterns[rng.integers(len(patterns))]
        return self.add(pattern, (rng.uniform(*h), rng.uniform(*s), rng.uniform(*v)))

    def atlas(self, rng: np.random.Generator) -> TextureAtlas:
        return TextureAtlas([make_texture(rng, p, hsv) for p, hsv in self.recipes])


def _uniform(rng: np.random.Generator, pair: tuple[float, float]) -> float:
    return float(rng.uniform(*pair))


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(3)
    return v / np.linalg.norm(v)


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.standard_normal(4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def _amplitudes_for_speed(directions: np.ndarray, freqs: np.ndarray, speed: float) -> np.ndarray:
    """Amplitudes ``(K, 3)`` along ``directions`` (K, 3) (relative weights) whose sinusoids at ``freqs`` move
    with RMS speed ``speed``: the velocity of sum_k a_k sin(2 pi f_k t + phi_k) has mean square
    sum_k |2 pi f_k a_k|^2 / 2 (distinct frequencies, or equal ones a quarter period apart along orthogonal
    directions: an elliptical loop)."""
    amplitudes = directions / (2 * np.pi * freqs)[:, None]
    rms = np.sqrt(np.sum(np.linalg.norm(amplitudes * (2 * np.pi * freqs)[:, None], axis=1) ** 2) / 2)
    return amplitudes * (speed / rms)


def _exit_distance(origin: np.ndarray, direction: np.ndarray, size: np.ndarray) -> float:
    """Distance from a point inside the floor rectangle [0, size] to its boundary along a 2-D direction."""
    with np.errstate(divide="ignore"):
        t = np.where(direction > 0, (size - origin) / direction, -origin / direction)
    return float(np.min(np.where(direction != 0, t, np.inf)))


def _yaw(R: np.ndarray) -> float:
    return math.atan2(R[1, 0], R[0, 0])


def _overlap(a: Body, b: Body) -> bool:
    """Whether two static bodies overlap (touching allowed). Boxes only ever rotate about z."""
    if a.kind == "sphere" or b.kind == "sphere":
        sphere, other = (a, b) if a.kind == "sphere" else (b, a)
        return distance_to_body(sphere.path.centre, other) < sphere.half[0] - TOUCH_TOL_M
    za, zb = a.path.centre[2], b.path.centre[2]
    if za + a.half[2] <= zb - b.half[2] + TOUCH_TOL_M or zb + b.half[2] <= za - a.half[2] + TOUCH_TOL_M:
        return False
    # Separating-axis test of the two floor rectangles.
    delta = b.path.centre[:2] - a.path.centre[:2]
    frames = [yaw_rotation(_yaw(body.path.R0))[:2, :2] for body in (a, b)]
    for axis in (*frames[0].T, *frames[1].T):
        ra = sum(a.half[i] * abs(axis @ frames[0][:, i]) for i in range(2))
        rb = sum(b.half[i] * abs(axis @ frames[1][:, i]) for i in range(2))
        if abs(axis @ delta) >= ra + rb - TOUCH_TOL_M:
            return False
    return True


def _swept_boxes(body: Body) -> list[Body]:
    """The volume a passer sweeps, as static copies of its box every PASSER_STEP_M along its line, each grown
    by half a step (covering the motion between copies) and GAP_M (the gap other bodies keep)."""
    (amplitude,) = body.path.offset.amplitudes  # one sinusoid: a straight line through the centre
    length = float(np.linalg.norm(amplitude))
    steps = max(1, math.ceil(2 * length / PASSER_STEP_M))
    half = body.half + length / steps + GAP_M
    return [Body("box", half, RigidPath.static(body.path.centre + s * amplitude, body.path.R0),
                 body.materials, body.tex_offset) for s in np.linspace(-1, 1, steps + 1)]


class _Layout:
    """Places bodies one by one, rejecting any that would overlap, leave the room or crowd the camera."""

    def __init__(self, room: np.ndarray, camera_centre: np.ndarray, camera_reach: float) -> None:
        self.room = room
        self.camera_centre, self.camera_reach = camera_centre, camera_reach
        self.static: list[Body] = []
        self.moving: list[Body] = []
        self.passers: list[Body] = []
        self._swept: list[Body] = []  # the passers' paths as static boxes, to test the others against

    def fits_static(self, body: Body) -> bool:
        R, c = body.path.R0, body.path.centre
        extent = body.half if body.kind == "sphere" else np.abs(R) @ body.half  # half size of the AABB
        if (c - extent < -TOUCH_TOL_M).any() or (c + extent > self.room + TOUCH_TOL_M).any():
            return False
        if distance_to_body(self.camera_centre, body) < self.camera_reach + CAMERA_CLEARANCE_M:
            return False
        for m in self.moving:
            if distance_to_body(m.path.centre, body) < m.path.offset.reach() + m.bound_radius + GAP_M:
                return False
        return not any(_overlap(body, other) for other in (*self.static, *self._swept))

    def drop_passers(self) -> None:
        self.passers, self._swept = [], []

    def fits_passer(self, body: Body) -> bool:
        """A passer (an upright box translating along one line) against the room, the camera and the bodies
        placed so far; on success it joins the layout and later static bodies keep clear of its path."""
        swept = _swept_boxes(body)
        for box in swept:
            c, extent = box.path.centre, np.abs(box.path.R0) @ body.half
            if (c[:2] - extent[:2] < 0.05).any() or (c[:2] + extent[:2] > self.room[:2] - 0.05).any():
                return False
            if distance_to_body(self.camera_centre, box) < self.camera_reach + PASSER_CAMERA_GAP_M:
                return False
            for m in self.moving:
                if distance_to_body(m.path.centre, box) < m.path.offset.reach() + m.bound_radius:
                    return False
            if any(_overlap(box, other) for other in self.static):
                return False
        self.passers.append(body)
        self._swept.extend(swept)
        return True

    def fits_moving(self, body: Body) -> bool:
        path, r = body.path, body.bound_radius
        # Per-axis reach: the centre stays within centre +- sum_k |a_k| on each axis.
        reach_axes = np.abs(path.offset.amplitudes).sum(axis=0) + r
        margin = np.array([0.05, 0.05, 0.02])
        if (path.centre - reach_axes < margin).any() or (path.centre + reach_axes > self.room - margin).any():
            return False
        reach = path.offset.reach() + r  # the body never leaves this sphere about path.centre
        if np.linalg.norm(path.centre - self.camera_centre) < reach + self.camera_reach + CAMERA_MOVING_GAP_M:
            return False
        for m in self.moving:
            other = m.path.offset.reach() + m.bound_radius
            if np.linalg.norm(path.centre - m.path.centre) < reach + other + GAP_M:
                return False
        return all(distance_to_body(path.centre, box) >= reach for box in self._swept)


def _camera_path(config: SynthConfig, rng: np.random.Generator, room: np.ndarray) -> CameraPath:
    """A hand-held camera near one side of the room, looking across it, swaying and turning smoothly."""
    speed = _uniform(rng, config.camera_speed_mps)
    freqs = rng.uniform(*config.motion_hz, size=2)
    heading = rng.uniform(0, 2 * np.pi)
    d1 = np.array([np.cos(heading), np.sin(heading), 0.0])
    d2 = _random_unit(rng) * np.array([1.0, 1.0, 0.3])
    amplitudes = _amplitudes_for_speed(np.stack([d1, d2]), freqs, speed)
    # Small rooms get a smaller sway: the camera must stay clear of walls and furniture.
    max_reach = 0.12 * room[:2].min() + 0.15
    reach = np.linalg.norm(amplitudes, axis=1).sum()
    amplitudes *= min(1.0, max_reach / reach)
    offset = Sinusoids(amplitudes, freqs, rng.uniform(0, 2 * np.pi, size=2))
    reach = offset.reach()

    yaw0 = rng.uniform(0, 2 * np.pi)
    forward = np.array([np.cos(yaw0), np.sin(yaw0)])
    lateral = np.array([-forward[1], forward[0]])
    centre_xy = room[:2] / 2
    span = _exit_distance(centre_xy, forward, room[:2]) + _exit_distance(centre_xy, -forward, room[:2])
    span_lat = _exit_distance(centre_xy, lateral, room[:2]) + _exit_distance(centre_xy, -lateral, room[:2])
    xy = centre_xy - forward * rng.uniform(0.2, 0.32) * span + lateral * rng.uniform(-0.12, 0.12) * span_lat
    margin = reach + CAMERA_WALL_MARGIN_M
    xy = np.clip(xy, margin, room[:2] - margin)
    centre = np.array([*xy, _uniform(rng, config.camera_height_m)])

    yaw_amp = math.radians(_uniform(rng, config.camera_yaw_deg))
    share = rng.uniform(0.55, 0.85)
    angle_amps = np.array([[share, rng.uniform(-0.35, 0.35), rng.uniform(-0.1, 0.1)],
                           [1 - share, rng.uniform(-0.35, 0.35), rng.uniform(-0.1, 0.1)]]) * yaw_amp
    angles = Sinusoids(angle_amps, rng.uniform(*config.motion_hz, size=2), rng.uniform(0, 2 * np.pi, size=2))
    base = np.array([yaw0, math.radians(_uniform(rng, config.camera_pitch_deg)), 0.0])
    return CameraPath(centre, offset, base, angles)


def _near_wall(camera: CameraPath, rng: np.random.Generator, room: np.ndarray, accent: int,
               duration: float) -> tuple[CameraPath, float, dict]:
    """``camera`` moved next to a plain wall (any but the ``accent`` wall), looking into the room along it at
    t = 0 and turned to face it at a drawn share of ``duration`` seconds, by one more yaw sinusoid (so the
    turn repeats in a longer video). Returns the camera, its starting heading (radians) and a description."""
    wall = [w for w in range(4) if w != accent][rng.integers(3)]
    axis, far = divmod(wall, 2)  # room face index 2 * axis + far: the wall at x or y = 0 (far 0) or = size
    inward, along = np.zeros(2), np.zeros(2)
    inward[axis] = -1.0 if far else 1.0
    along[1 - axis] = rng.choice([-1.0, 1.0])
    reach = camera.offset.reach()
    margin = reach + CAMERA_WALL_MARGIN_M
    gap = margin + _uniform(rng, NEAR_WALL_GAP_M)
    xy = np.zeros(2)
    xy[axis] = room[axis] - gap if far else gap
    share = _uniform(rng, NEAR_WALL_ALONG)  # from the corner behind the camera
    xy[1 - axis] = share * room[1 - axis] if along[1 - axis] > 0 else (1 - share) * room[1 - axis]
    xy = np.clip(xy, margin, room[:2] - margin)

    into = math.radians(_uniform(rng, NEAR_WALL_INTO_ROOM_DEG))
    start = along * math.cos(into) + inward * math.sin(into)
    start_yaw = math.atan2(start[1], start[0])
    face_yaw = math.atan2(-inward[1], -inward[0]) + math.radians(rng.uniform(-1, 1) * NEAR_WALL_SQUINT_DEG)
    turn = (face_yaw - start_yaw + math.pi) % (2 * math.pi) - math.pi
    turned_at = _uniform(rng, NEAR_WALL_TURNED) * duration
    freq = 1 / (2 * turned_at)
    # yaw(t) = start + turn / 2 * (1 + sin(2 pi freq t - pi / 2)): start at t = 0, start + turn at turned_at.
    base = camera.base_angles.copy()
    base[0] = start_yaw + turn / 2
    angles = camera.angles
    angles = Sinusoids(np.vstack([angles.amplitudes, [turn / 2, 0.0, 0.0]]), np.append(angles.freqs_hz, freq),
                       np.append(angles.phases, -math.pi / 2))
    centre = np.array([*xy, camera.centre[2]])
    event = {"wall_face": int(wall), "distance_m": round(float(abs(xy[axis] - far * room[axis])), 4),
             "turn_deg": round(math.degrees(turn), 3), "turned_at_s": round(turned_at, 4)}
    return CameraPath(centre, camera.offset, base, angles), start_yaw, event


def _passer(rng: np.random.Generator, room: np.ndarray, camera: CameraPath, heading: float, hfov: float,
            duration: float, material: int) -> tuple[Body, dict] | None:
    """A person-sized upright box walking across the view, out of it at both ends of its line, crossing the
    middle at a drawn share of ``duration`` seconds (and back and forth in a longer video); and a
    description of it. ``None`` where the room is too narrow for its walk."""
    half = np.array([_uniform(rng, r) for r in PASSER_SIZE_M]) / 2  # along its walk, across it, height
    view = np.array([math.cos(heading), math.sin(heading), 0.0])
    lateral = np.array([-view[1], view[0], 0.0])
    # Its near face clears the camera's reachable sphere by the gap, the half step and GAP_M that
    # Layout.fits_passer's swept boxes add, and a drawn extra distance.
    distance = (camera.offset.reach() + half[1] + PASSER_CAMERA_GAP_M + PASSER_STEP_M / 2 + GAP_M
                + _uniform(rng, PASSER_EXTRA_DISTANCE_M))
    centre = camera.centre + view * distance
    centre[2] = half[2]  # on the floor
    # Out of view at both ends (the view is 2 tan(hfov / 2) metres wide per metre of depth at its far face),
    # with room for the camera's sway; or it turns back short of the walls, but crosses at least most of the
    # view.
    wanted = (distance + half[1]) * math.tan(hfov / 2) + half[0] + 0.3
    room_span = min(_exit_distance(centre[:2], sign * lateral[:2], room[:2]) for sign in (-1, 1)) - 0.1
    amplitude = min(wanted, room_span - float(np.linalg.norm(half[:2])))
    if not math.isfinite(room_span) or amplitude < 0.7 * wanted:
        return None
    freq = _uniform(rng, PASSER_SPEED_MPS) / (2 * math.pi * amplitude)  # peak speed of the sinusoid
    crossing = _uniform(rng, PASSER_CROSSING) * duration
    offset = Sinusoids(rng.choice([-1.0, 1.0]) * amplitude * lateral[None], np.array([freq]),
                       np.array([-2 * math.pi * freq * crossing]))
    path = RigidPath(centre, yaw_rotation(heading + math.pi / 2), offset, np.array([0.0, 0.0, 1.0]), 0.0)
    event = {"half_extents_m": half.round(4).tolist(), "distance_m": round(float(distance), 4),
             "amplitude_m": round(float(amplitude), 4), "crossing_s": round(crossing, 4)}
    return Body("box", half, path, (material,) * 6, rng.uniform(0, 1, size=2)), event


def _moving_body(config: SynthConfig, rng: np.random.Generator, camera: CameraPath, heading: float,
                 hfov: float, tighten: float, material: int) -> Body:
    """A box or ball circling an elliptical loop that faces the camera (looking along ``heading``), while
    spinning; ``tighten`` (>= 1) multiplies its laps per second at the same speed, shrinking the loop."""
    distance = _uniform(rng, config.moving_distance_m)
    # Its diameter spans a drawn share of the image width at this distance (the image is 2 tan(hfov/2)
    # metres wide per metre of depth), so wide-angle views get larger objects than telephoto ones.
    size = 2 * distance * math.tan(hfov / 2) * _uniform(rng, config.moving_view_size)
    if rng.random() < 0.5:
        kind, half = "sphere", np.full(3, size / 2)
    else:
        kind, half = "box", size / 2 * rng.uniform(*MOVING_BOX_EDGES, size=3)
    # Angular speed (fields of view per second) times distance: metres per second across the view.
    speed = _uniform(rng, config.moving_view_speed) * hfov * distance
    freq = _uniform(rng, MOVING_HZ) * tighten
    bearing = heading + rng.uniform(-0.22, 0.22) * hfov
    view = np.array([np.cos(bearing), np.sin(bearing), 0.0])
    lateral = np.array([-view[1], view[0], 0.0])
    # Major axis across the view, minor axis up, tilted towards or away from the camera (depth changes too).
    tilt = math.radians(rng.uniform(-LOOP_TILT_DEG, LOOP_TILT_DEG))
    minor = np.array([0.0, 0.0, math.cos(tilt)]) + view * math.sin(tilt)
    directions = np.stack([lateral, minor * _uniform(rng, LOOP_ASPECT)])
    amplitudes = _amplitudes_for_speed(directions, np.array([freq, freq]), speed)
    # The minor term a quarter lap after the major one: an ellipse, travelled either way round.
    phase, turn = rng.uniform(0, 2 * np.pi), rng.choice([-1.0, 1.0]) * np.pi / 2
    offset = Sinusoids(amplitudes, np.array([freq, freq]), np.array([phase, phase + turn]))
    radius = float(half[0]) if kind == "sphere" else float(np.linalg.norm(half))
    centre = camera.centre + view * distance
    half_height = distance * math.tan(hfov / 2) * config.height / config.width  # of the view at distance
    sight = centre[2] + distance * math.tan(camera.base_angles[1])
    # Clear of the floor; the ceiling is checked by the layout.
    z_low = radius + np.abs(amplitudes[:, 2]).sum() + 0.05
    centre[2] = max(z_low, sight + rng.uniform(-1, 1) * MOVING_HEIGHT_SPREAD * half_height)
    spin = _uniform(rng, MOVING_SPIN_SHARE) * speed / radius * rng.choice([-1.0, 1.0])
    path = RigidPath(centre, _random_rotation(rng), offset, _random_unit(rng), spin)
    return Body(kind, half, path, (material,) * 6, rng.uniform(0, 1, size=2))


def _box(centre: np.ndarray, half: np.ndarray, yaw: float, materials: tuple,
         rng: np.random.Generator) -> Body:
    return Body("box", np.asarray(half, float), RigidPath.static(centre, yaw_rotation(yaw)), materials,
                rng.uniform(0, 1, size=2))


def _sphere(centre: np.ndarray, radius: float, material: int, rng: np.random.Generator) -> Body:
    path = RigidPath.static(centre, _random_rotation(rng))
    return Body("sphere", np.full(3, radius), path, (material,) * 6, rng.uniform(0, 1, size=2))


def _against_wall(rng: np.random.Generator, room: np.ndarray, width: float, depth: float, height: float,
                  z: float, gap: float) -> tuple[np.ndarray, np.ndarray]:
    """Centre and half extents of an axis-aligned box with its back ``gap`` from a random wall."""
    wall = rng.integers(4)
    along, across = (1, 0) if wall < 2 else (0, 1)  # axis along the wall, axis into the room
    half = np.zeros(3)
    half[along], half[across], half[2] = width / 2, depth / 2, height / 2
    centre = np.zeros(3)
    centre[along] = rng.uniform(width / 2 + 0.05, max(width / 2 + 0.05, room[along] - width / 2 - 0.05))
    centre[across] = depth / 2 + gap if wall % 2 == 0 else room[across] - depth / 2 - gap
    centre[2] = z
    return centre, half


def sample_scene(config: SynthConfig, seed: int) -> Scene:
    """Draw a scene from ``seed``: same config and seed, same scene (and, rendered, identical bytes)."""
    # Separate streams: adding a stream (the sensor's, the events') changes neither the layout nor the
    # textures of a video that draws no event.
    layout_seq, texture_seq, sensor_seq, events_seq = np.random.SeedSequence(seed).spawn(4)
    rng, events = np.random.default_rng(layout_seq), np.random.default_rng(events_seq)
    has_passer, has_wall = events.random() < config.passers, events.random() < config.near_wall
    W, H = config.width, config.height
    num_frames = int(rng.integers(config.num_frames[0], config.num_frames[1] + 1))
    duration = num_frames / config.fps
    hfov = math.radians(_uniform(rng, config.hfov_deg))
    # The image spans W pixels edge to edge, i.e. from u = -0.5 to W - 0.5 around the ideal centre.
    f = W / (2 * math.tan(hfov / 2))
    cx = (W - 1) / 2 + rng.uniform(-1, 1) * config.principal_offset * W
    cy = (H - 1) / 2 + rng.uniform(-1, 1) * config.principal_offset * H
    K = make_K(f, f, cx, cy)

    room = np.array([_uniform(rng, config.room_size_m), _uniform(rng, config.room_size_m),
                     _uniform(rng, config.room_height_m)])
    mats = _Materials(rng)
    wall = mats.pick(["plaster", "plaster", "stripes"], (0, 1), (0.05, 0.3), (0.6, 0.88))
    accent = mats.pick(["bricks", "stripes", "plaster", "tiles"], (0, 1), (0.1, 0.5), (0.5, 0.85))
    floor = mats.pick(["planks", "planks", "tiles", "fabric"], (0.04, 0.12), (0.25, 0.7), (0.35, 0.75))
    ceiling = mats.pick(["plaster"], (0, 1), (0.0, 0.08), (0.78, 0.92))
    walls = [wall] * 4
    accent_wall = int(rng.integers(4))
    walls[accent_wall] = accent
    room_body = Body("room", room / 2, RigidPath.static(room / 2, np.eye(3)), (*walls, floor, ceiling),
                     np.zeros(2))

    camera = _camera_path(config, rng, room)
    heading, scene_events = float(camera.base_angles[0]), {"passer": None, "near_wall": None}
    if has_wall:
        camera, heading, scene_events["near_wall"] = _near_wall(camera, events, room, accent_wall, duration)
    layout = _Layout(room, camera.centre, camera.offset.reach())

    if has_passer:
        material = mats.add(["fabric", "stripes", "blotches"][events.integers(3)],
                            (events.uniform(0, 1), events.uniform(0.2, 0.7), events.uniform(0.3, 0.8)))
        for _attempt in range(ATTEMPTS):
            drawn = _passer(events, room, camera, heading, hfov, duration, material)
            if drawn is not None and layout.fits_passer(drawn[0]):
                scene_events["passer"] = drawn[1]
                break

    def place_moving(material: int) -> None:
        for attempt in range(ATTEMPTS):
            # Later attempts tighten the loop (up to MAX_TIGHTEN), sweeping less volume at the same speed.
            body = _moving_body(config, rng, camera, heading, hfov, min(MAX_TIGHTEN, 1.03**attempt), material)
            if layout.fits_moving(body):
                layout.moving.append(body)
                return

    moving_materials = []
    for _ in range(rng.integers(config.moving_objects[0], config.moving_objects[1] + 1)):
        moving_materials.append(mats.pick(["blotches", "checker"], (0, 1), (0.5, 0.9), (0.55, 0.95)))
        place_moving(moving_materials[-1])
    if not layout.moving and layout.passers:
        # The passer's path leaves no room for the moving objects (about 1 passer in 5): the video goes
        # without it.
        layout.drop_passers()
        scene_events["passer"] = None
        for material in moving_materials:
            place_moving(material)
    if not layout.moving:
        raise SceneLayoutError(f"seed {seed}: no moving object fits this room; widen synth.room_size_m or "
                               "shrink synth.moving_view_size / moving_distance_m")

    furniture_mats = [mats.pick(["planks", "fabric", "plaster", "checker"], (0, 1), (0.15, 0.7), (0.4, 0.85))
                      for _ in range(3)]
    for _ in range(rng.integers(config.furniture[0], config.furniture[1] + 1)):
        material = furniture_mats[rng.integers(3)]
        for _attempt in range(ATTEMPTS):
            w, d, h = (_uniform(rng, r) for r in (FURNITURE_W, FURNITURE_D, FURNITURE_H))
            if rng.random() < 0.75:
                centre, half = _against_wall(rng, room, w, d, h, h / 2, 0.01)
                body = _box(centre, half, 0.0, (material,) * 6, rng)
            else:
                centre = np.array([*rng.uniform(0, 1, 2) * room[:2], h / 2])
                body = _box(centre, np.array([w, d, h]) / 2, rng.uniform(0, np.pi), (material,) * 6, rng)
            if layout.fits_static(body):
                layout.static.append(body)
                break

    # Things on furniture tops and balls on the floor.
    for support in [b for b in layout.static if b.half[2] * 2 <= 1.3]:
        if rng.random() < 0.4:
            continue
        material = mats.pick(["blotches", "checker", "stripes", "fabric"], (0, 1), (0.3, 0.9), (0.4, 0.95))
        top = support.path.centre[2] + support.half[2]
        for _attempt in range(ATTEMPTS // 4):
            spot = support.path.centre + support.path.R0 @ (rng.uniform(-0.7, 0.7, 3) * support.half)
            if rng.random() < 0.5:
                r = rng.uniform(0.07, min(0.22, support.half[:2].min()))
                body = _sphere(np.array([spot[0], spot[1], top + r]), r, material, rng)
            else:
                half = rng.uniform(0.05, 0.2, 3)
                body = _box(np.array([spot[0], spot[1], top + half[2]]), half, rng.uniform(0, np.pi),
                            (material,) * 6, rng)
            if layout.fits_static(body):
                layout.static.append(body)
                break
    for _ in range(rng.integers(0, 3)):
        material = mats.pick(["blotches", "checker", "stripes"], (0, 1), (0.4, 0.9), (0.5, 0.95))
        for _attempt in range(ATTEMPTS // 4):
            r = rng.uniform(0.1, 0.3)
            body = _sphere(np.array([*(r + rng.uniform(0, 1, 2) * (room[:2] - 2 * r)), r]), r, material, rng)
            if layout.fits_static(body):
                layout.static.append(body)
                break

    # Posters and doors: thin boxes on the walls.
    for _ in range(rng.integers(1, 4)):
        material = mats.pick(["blotches", "checker", "stripes", "planks"], (0, 1), (0.3, 0.9), (0.4, 0.95))
        for _attempt in range(ATTEMPTS // 4):
            w, h = rng.uniform(0.4, 1.2), rng.uniform(0.3, 1.0)
            z = rng.uniform(0.9, max(0.9, room[2] - h / 2 - 0.15))
            centre, half = _against_wall(rng, room, w, 0.03, h, z, 0.005)
            body = _box(centre, half, 0.0, (material,) * 6, rng)
            if layout.fits_static(body):
                layout.static.append(body)
                break

    light_position = np.array([*rng.uniform(0.3, 0.7, 2) * room[:2], room[2] - 0.6])
    light_colour = (1.0 + rng.uniform(-0.06, 0.06, 3)) * rng.uniform(0.95, 1.1)
    bodies = (room_body, *layout.static, *layout.moving, *layout.passers)
    return Scene(
        seed=seed,
        width=W,
        height=H,
        fps=config.fps,
        num_frames=num_frames,
        supersample=config.supersample,
        hfov_deg=math.degrees(hfov),
        K=K,
        bodies=bodies,
        num_static=1 + len(layout.static),
        camera=camera,
        atlas=mats.atlas(np.random.default_rng(texture_seq)),
        patterns=tuple(p for p, _ in mats.recipes),
        light_position=light_position,
        light_colour=light_colour,
        ambient=config.ambient,
        sensor=_sensor(config, seed, np.random.default_rng(sensor_seq)),
        events=scene_events,
    )


def _sensor(config: SynthConfig, seed: int, rng: np.random.Generator) -> Sensor:
    """The video's camera, its magnitudes drawn from the config's ranges."""
    return Sensor(
        seed=seed,
        noise=_uniform(rng, config.sensor_noise),
        exposure_flicker=_uniform(rng, config.exposure_flicker),
        white_balance_flicker=_uniform(rng, config.white_balance_flicker),
        shutter=_uniform(rng, config.shutter),
        crf=int(rng.integers(config.crf[0], config.crf[1] + 1)),
    )
