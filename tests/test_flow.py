"""Flow stage: backends, forward–backward consistency, relative pose, static mask, store schema, bad input.

Scenes are analytic and built here with ``camera.py``: a textured back wall, a nearer wall (a depth step that
gives parallax), and a textured board sliding in front of them, seen by a camera that translates and yaws.
Every quantity (depth, poses, flow, motion mask) is exact.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from dvc_project import write_params

from videomamba_depth.camera import IntrinsicsError, make_K, relative_pose
from videomamba_depth.config import ConfigError, load_params, load_section
from videomamba_depth.flow import (
    DISBackend,
    FlowConfig,
    RAFTBackend,
    compute_flow_store,
    estimate_relative_pose,
    forward_backward_consistency,
    import_ptlflow,
    rigid_flow,
    static_mask,
)
from videomamba_depth.zarrio import (
    StoreError,
    create_static_array,
    create_time_array,
    open_store,
    writing_store,
)

ROOT = Path(__file__).resolve().parents[1]
H, W = 96, 128
K = make_K(115.0, 115.0, (W - 1) / 2, (H - 1) / 2)
PAD = (4, 3, 4, 3)  # left, top, right, bottom of the prepared stores written here

# Scene, in metres (world = camera 0, OpenCV axes): back wall z = 4, a nearer wall z = 2.5 left of x = -0.5,
# and a 0.6 m board at z = 3 sliding right by BOARD_STEP per frame.
WALL_Z, NEAR_Z, NEAR_X, BOARD_Z, BOARD_HALF, BOARD_STEP = 4.0, 2.5, -0.5, 3.0, 0.3, 0.06
TEXELS_PER_M, TEXTURE_HALF_M = 100.0, 3.0


def rot_y(deg: float) -> np.ndarray:
    a = np.radians(deg)
    return np.array([[np.cos(a), 0.0, np.sin(a)], [0.0, 1.0, 0.0], [-np.sin(a), 0.0, np.cos(a)]])


def rotation_error_deg(R_a: np.ndarray, R_b: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R_a.T @ R_b) - 1) / 2, -1.0, 1.0))))


def texture(seed: int) -> np.ndarray:
    """``(600, 600, 3)`` float32 smooth multi-scale noise in [0, 255]: texels of 1 cm, blurred so one image
    pixel (about 2-3.5 texels here) never aliases."""
    rng = np.random.default_rng(seed)
    n = int(2 * TEXTURE_HALF_M * TEXELS_PER_M)
    noise = [rng.normal(size=(n, n, 3)).astype(np.float32) for _ in range(3)]
    tex = sum(cv2.GaussianBlur(z, (0, 0), s) * s for z, s in zip(noise, (3, 8, 20), strict=True))
    tex = (tex - tex.mean()) / tex.std()
    return np.clip(128 + 45 * tex, 0, 255).astype(np.float32)


TEXTURES = [texture(s) for s in range(3)]


def pose_c2w(t: int) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rot_y(0.4 * t)
    T[:3, 3] = [0.03 * t, 0.01 * t, 0.02 * t]
    return T


def board_x(t: int) -> float:
    return 0.25 + BOARD_STEP * t


def _cast(t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ray cast frame ``t``: z-depth, world points, surface id (0 wall, 1 near wall, 2 board), local xy."""
    T = pose_c2w(t)
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    d_cam = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)
    d = d_cam @ T[:3, :3].T  # world direction with camera z-component 1: ray parameter = z-depth
    c = T[:3, 3]
    depth = np.full((H, W), np.inf)
    surface = np.zeros((H, W), np.int64)
    for sid, z in ((0, WALL_Z), (1, NEAR_Z), (2, BOARD_Z)):
        s = (z - c[2]) / d[..., 2]
        p = c + s[..., None] * d
        hit = s > 0
        if sid == 1:
            hit &= p[..., 0] < NEAR_X
        if sid == 2:
            hit &= (np.abs(p[..., 0] - board_x(t)) < BOARD_HALF) & (np.abs(p[..., 1]) < BOARD_HALF)
        closer = hit & (s < depth)
        depth[closer], surface[closer] = s[closer], sid
    points = c + depth[..., None] * d
    local = points.copy()
    local[..., 0] -= np.where(surface == 2, board_x(t), 0.0)  # the board's texture moves with it
    return depth, points, surface, local


def render_scene(num_frames: int) -> dict[str, np.ndarray]:
    """rgb (T,H,W,3) uint8, depth (T,H,W), pose_c2w (T,4,4), motion_mask (T,H,W), flow (T-1,H,W,2)."""
    rgb, depth, motion, flow = [], [], [], []
    for t in range(num_frames):
        z, points, surface, local = _cast(t)
        img = np.zeros((H, W, 3), np.float32)
        for sid, tex in enumerate(TEXTURES):
            map_xy = ((local[..., :2] + TEXTURE_HALF_M) * TEXELS_PER_M).astype(np.float32)
            sampled = cv2.remap(tex, map_xy[..., 0], map_xy[..., 1], cv2.INTER_LINEAR, cv2.BORDER_REFLECT)
            img[surface == sid] = sampled[surface == sid]
        rgb.append(np.clip(img + 0.5, 0, 255).astype(np.uint8))
        depth.append(z.astype(np.float32))
        motion.append(surface == 2)
        if t + 1 < num_frames:
            moved = points + np.where(surface == 2, BOARD_STEP, 0.0)[..., None] * np.array([1.0, 0.0, 0.0])
            cam = (moved - pose_c2w(t + 1)[:3, 3]) @ pose_c2w(t + 1)[:3, :3]
            uv = cam[..., :2] / cam[..., 2:] * [K[0, 0], K[1, 1]] + K[:2, 2]
            flow.append((uv - np.stack(np.mgrid[0:H, 0:W][::-1], -1)).astype(np.float32))
    return {
        "rgb": np.stack(rgb),
        "depth": np.stack(depth),
        "pose_c2w": np.stack([pose_c2w(t) for t in range(num_frames)]),
        "motion_mask": np.stack(motion),
        "flow": np.stack(flow) if flow else np.zeros((0, H, W, 2), np.float32),
    }


@pytest.fixture(scope="module")
def scene() -> dict[str, np.ndarray]:
    return render_scene(6)


def pad(frames: np.ndarray) -> np.ndarray:
    left, top, right, bottom = PAD
    widths = [(0, 0), (top, bottom), (left, right)] + [(0, 0)] * (frames.ndim - 3)
    return np.pad(frames, widths)


def padded_K() -> np.ndarray:
    out = K.copy()
    out[0, 2] += PAD[0]
    out[1, 2] += PAD[1]
    return out


def write_prepared(path: Path, rgb: np.ndarray, K_given: np.ndarray | None) -> None:
    """A minimal prepared store: padded rgb, valid mask and (when given) K, as the prepare stage writes."""
    frames = pad(rgb)
    with writing_store(path, "prepared", {"intrinsics": "missing" if K_given is None else "given"}) as g:
        arr = create_time_array(g, "rgb", frames.shape[1:], np.uint8, dims=("t", "y", "x", "c"), units="1",
                                description="rgb", length=len(frames))
        arr[...] = frames
        create_static_array(g, "valid", pad(np.ones((1, H, W), bool))[0], dims=("y", "x"), units="1",
                            description="image pixels")
        if K_given is not None:
            k = create_time_array(g, "K", (3, 3), np.float64, dims=("t", "i", "j"), units="pixels",
                                  description="K", length=len(frames))
            k[...] = K_given


def write_teacher(
    path: Path, depth: np.ndarray, K_used: np.ndarray | None, valid: np.ndarray | None = None
) -> None:
    """A minimal teacher store: padded float16 depth (0 where invalid), valid, confidence, K_used, K_pred."""
    depth = pad(depth)
    valid = depth > 0 if valid is None else pad(valid)
    with writing_store(path, "teacher", {}) as g:
        for name, data, dtype in (("depth", depth, np.float16), ("valid", valid, bool),
                                  ("confidence", valid.astype(np.float16), np.float16)):
            arr = create_time_array(g, name, data.shape[1:], dtype, dims=("t", "y", "x"), units="1",
                                    description=name, length=len(data))
            arr[...] = data
        if K_used is not None:
            for name in ("K_used", "K_pred"):
                arr = create_time_array(g, name, (3, 3), np.float64, dims=("t", "i", "j"), units="pixels",
                                        description=name, length=len(K_used))
                arr[...] = K_used


def stores(tmp_path: Path, scene: dict, *, given_K: bool = True, depth_scale: np.ndarray | None = None,
           num_frames: int | None = None) -> tuple[Path, Path]:
    T = len(scene["rgb"]) if num_frames is None else num_frames
    Ks = np.broadcast_to(padded_K(), (T, 3, 3))
    scale = np.ones(T) if depth_scale is None else depth_scale
    write_prepared(tmp_path / "prep.zarr", scene["rgb"][:T], Ks if given_K else None)
    write_teacher(tmp_path / "teach.zarr", scene["depth"][:T] * scale[:, None, None], Ks)
    return tmp_path / "prep.zarr", tmp_path / "teach.zarr"


CFG = FlowConfig()


# --- config --------------------------------------------------------------------------------------------


def test_params_flow_section_loads_and_dvc_lists_every_leaf() -> None:
    params = load_params(ROOT / "params.yaml")
    cfg = load_section(FlowConfig, "flow", params)
    assert set(params["flow"]) == set(cfg.to_dict()), "params.yaml flow: must set every FlowConfig key"
    stage = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["flow"]
    assert sorted(stage["params"]) == sorted(f"flow.{k}" for k in cfg.to_dict())
    deps = stage["deps"]
    for dep in ("data/index/prepared.json", "data/index/teacher.json", "stages/flow.py"):
        assert dep in deps
    assert "videomamba_depth/flow" in deps


@pytest.mark.parametrize(
    ("values", "message"),
    [({"backend": "farneback"}, "not one of"), ({"fb_alpha": -1.0}, ">= 0"), ({"pose_stride": 0}, "positive"),
     ({"pnp_confidence": 1.0}, "(0, 1)"), ({"static_px": 1.0}, "unknown key"),
     ({"dis_finest_scale": -1}, ">= 0 or null")],
)
def test_config_rejects_bad_values(values: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FlowConfig.from_dict(values, "flow")


# --- backends ------------------------------------------------------------------------------------------


def test_dis_recovers_a_known_translation_both_ways(scene: dict) -> None:
    a = scene["rgb"][0]
    # warpAffine maps src(x) to dst(x + (-2.5, 1.25)): the content moves by (-2.5, 1.25) px.
    b = cv2.warpAffine(a, np.float32([[1, 0, -2.5], [0, 1, 1.25]]), (W, H), borderMode=cv2.BORDER_REFLECT)
    dis = DISBackend("medium")
    flows = dis.flow(np.stack([a, b]), np.stack([b, a]))
    assert flows.shape == (2, H, W, 2) and flows.dtype == np.float32
    inner = (slice(10, -10), slice(10, -10))
    np.testing.assert_allclose(np.median(flows[0][inner].reshape(-1, 2), axis=0), [-2.5, 1.25], atol=0.1)
    np.testing.assert_allclose(np.median(flows[1][inner].reshape(-1, 2), axis=0), [2.5, -1.25], atol=0.1)
    assert dis.describe() == {
        "name": "dis", "library": "opencv", "version": cv2.__version__, "preset": "medium", "finest_scale": 0,
        "patch_size": 8, "patch_stride": 3, "refine_iters": 5,
    }
    tuned = DISBackend("medium", patch_size=4, patch_stride=3, refine_iters=10).describe()
    assert (tuned["patch_size"], tuned["patch_stride"], tuned["refine_iters"]) == (4, 3, 10)
    with pytest.raises(ValueError, match="patch_stride <= patch_size"):
        DISBackend("medium", patch_size=2, patch_stride=3)
    assert DISBackend("medium", finest_scale=None).describe()["finest_scale"] == 1  # the preset's own


def test_backend_rejects_mismatched_batches() -> None:
    dis = DISBackend("ultrafast")
    with pytest.raises(ValueError, match="equal shape"):
        dis.flow(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((1, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        dis.flow(np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, 8, 8, 3), np.float32))
    assert dis.flow(np.zeros((0, 8, 8, 3), np.uint8), np.zeros((0, 8, 8, 3), np.uint8)).shape == (0, 8, 8, 2)


def test_raft_import_error_is_actionable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ptlflow", None)  # makes `import ptlflow` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'videomamba-depth\[raft\]'.*local \.ckpt path"):
        import_ptlflow()
    with pytest.raises(ImportError, match=r"flow\.backend=raft"):
        RAFTBackend(ckpt=None)


# --- forward-backward consistency ----------------------------------------------------------------------


def test_consistency_flags_disagreement_exits_and_padding() -> None:
    h, w = 20, 30
    fwd = np.zeros((h, w, 2), np.float32)
    fwd[..., 0] = 2.0
    bwd = np.zeros((h, w, 2), np.float32)
    bwd[..., 0] = -2.0
    bwd[5:10, 12:17] = [3.0, 3.0]  # frame-(t+1) pixels whose backward flow contradicts the forward flow
    region = np.ones((h, w), bool)
    region[:, :2] = False  # padding columns
    ok = forward_backward_consistency(fwd, bwd, region, alpha=0.01, beta=0.5)
    expected = region.copy()
    expected[:, w - 2 :] = False  # targets leave the image
    expected[5:10, 10:15] = False  # their targets land on the contradicting backward flow
    np.testing.assert_array_equal(ok, expected)
    fwd[0, 5] = np.nan
    assert not forward_backward_consistency(fwd, bwd, region, 0.01, 0.5)[0, 5]


# --- pose, rigid flow, static mask ----------------------------------------------------------------------

POSE_ARGS = {"stride": 4, "max_points": 2000, "reproj_px": 1.0, "iterations": 200, "confidence": 0.999,
             "min_inliers": 50}


@pytest.mark.parametrize("depth_scale", [1.0, 1.4])
def test_pose_and_static_mask_from_exact_flow(scene: dict, depth_scale: float) -> None:
    """Exact flow and depth: the pose is exact, and a global depth scale error (teacher scale jitter) scales
    only the translation, leaving rigid flow and the static mask unchanged."""
    depth, flow, moving = scene["depth"][2] * depth_scale, scene["flow"][2], scene["motion_mask"][2]
    pose = estimate_relative_pose(depth, K, K, flow, np.ones((H, W), bool), **POSE_ARGS)
    gt = relative_pose(scene["pose_c2w"][2], scene["pose_c2w"][3])
    assert pose.ok and pose.reason == ""
    assert rotation_error_deg(pose.T[:3, :3], gt[:3, :3]) < 0.01
    np.testing.assert_allclose(pose.T[:3, 3], depth_scale * gt[:3, 3], atol=1e-3)
    assert pose.num_inliers >= 0.9 * (~moving[2::4, 2::4]).sum()  # the board is the outlier set
    rigid, parallax = rigid_flow(depth, K, K, pose.T)
    np.testing.assert_allclose(rigid[~moving], flow[~moving], atol=0.02)
    assert parallax.max() > 0.5  # the camera translates: the test below exercises the parallax tolerance
    static = static_mask(flow, rigid, parallax, np.ones((H, W), bool), abs_px=0.5, rel=0.1)
    np.testing.assert_array_equal(static, ~moving)


def test_pose_unknown_when_too_few_points(scene: dict) -> None:
    mask = np.zeros((H, W), bool)
    mask[40:44, 40:44] = True
    pose = estimate_relative_pose(scene["depth"][0], K, K, scene["flow"][0], mask, **POSE_ARGS)
    assert not pose.ok and pose.num_inliers == 0 and "need 50" in pose.reason
    np.testing.assert_array_equal(pose.T, np.eye(4))


def test_rigid_flow_is_nan_without_depth() -> None:
    depth = np.full((8, 8), 2.0, np.float32)
    depth[0, 0], depth[1, 1] = 0.0, np.nan
    rigid, _ = rigid_flow(depth, K, K, np.eye(4))
    assert np.isnan(rigid[0, 0]).all() and np.isnan(rigid[1, 1]).all()
    np.testing.assert_allclose(rigid[2:], 0.0, atol=1e-6)
    assert not static_mask(rigid, rigid, np.zeros((8, 8)), np.ones((8, 8), bool), abs_px=1.0, rel=0.1)[0, 0]


# --- the store --------------------------------------------------------------------------------------------


def test_store_schema_padding_and_quality(tmp_path: Path, scene: dict) -> None:
    prep, teach = stores(tmp_path, scene)
    summary = compute_flow_store(prep, teach, tmp_path / "flow.zarr", CFG, video="analytic")
    g = open_store(tmp_path / "flow.zarr", kind="flow")
    T = len(scene["rgb"])
    Hp, Wp = H + PAD[1] + PAD[3], W + PAD[0] + PAD[2]
    expected = {"flow_fwd": ((T - 1, Hp, Wp, 2), np.float16), "flow_bwd": ((T - 1, Hp, Wp, 2), np.float16),
                "consistent": ((T - 1, Hp, Wp), np.bool_), "static": ((T - 1, Hp, Wp), np.bool_),
                "rel_pose": ((T - 1, 4, 4), np.float64), "pose_valid": ((T - 1,), np.bool_),
                "pose_inliers": ((T - 1,), np.int32)}
    for name, (shape, dtype) in expected.items():
        assert g[name].shape == shape and g[name].dtype == dtype, name
        assert g[name].metadata.dimension_names[0] == "t" and g[name].attrs["description"], name
    assert g.attrs["num_pairs"] == T - 1 and g.attrs["size"] == [Wp, Hp]
    assert g.attrs["backend"]["name"] == "dis"
    assert g.attrs["provenance"]["params"] == CFG.to_dict() and g.attrs["provenance"]["stage"] == "flow"
    assert g.attrs["pose"]["known_pairs"] == T - 1 and summary["pose"] == g.attrs["pose"]
    assert g.attrs["teacher_bad_depth_pixels"] == 0
    assert "/" not in g.attrs["inputs"]["prepared"]  # names, not (absolute) paths

    fwd, consistent, static = g["flow_fwd"][...], g["consistent"][...], g["static"][...]
    padding = ~pad(np.ones((1, H, W), bool))[0]
    assert not fwd[:, padding].any() and not consistent[:, padding].any() and not static[:, padding].any()
    crop = (slice(None), slice(PAD[1], PAD[1] + H), slice(PAD[0], PAD[0] + W))
    fwd, consistent, static = fwd[crop].astype(np.float32), consistent[crop], static[crop]
    gt_moving = scene["motion_mask"][:-1]
    epe = np.linalg.norm(fwd - scene["flow"], axis=-1)
    assert np.median(epe[consistent]) < 0.25
    assert consistent.mean() > 0.8
    for t in range(T - 1):
        gt = relative_pose(scene["pose_c2w"][t], scene["pose_c2w"][t + 1])
        assert rotation_error_deg(g["rel_pose"][t][:3, :3], gt[:3, :3]) < 0.3
    moving = consistent & ~static
    assert (moving & gt_moving).sum() / (moving | gt_moving).sum() > 0.8
    static_gt = consistent & ~gt_moving
    assert (static & static_gt).sum() / (static | static_gt).sum() > 0.95


def test_store_is_deterministic_and_independent_of_teacher_scale(tmp_path: Path, scene: dict) -> None:
    """Same inputs, same bytes; per-frame teacher scale jitter leaves flow, masks and rotations unchanged."""
    prep, teach = stores(tmp_path, scene)
    compute_flow_store(prep, teach, tmp_path / "a.zarr", CFG, video="v")
    compute_flow_store(prep, teach, tmp_path / "b.zarr", CFG, video="v")
    (tmp_path / "jit").mkdir()
    jitter = np.array([1.0, 1.3, 0.8, 1.1, 0.9, 1.2])
    prep_j, teach_j = stores(tmp_path / "jit", scene, depth_scale=jitter)
    compute_flow_store(prep_j, teach_j, tmp_path / "c.zarr", CFG, video="v")
    a, b, c = (open_store(tmp_path / n, kind="flow") for n in ("a.zarr", "b.zarr", "c.zarr"))
    for name in ("flow_fwd", "flow_bwd", "consistent", "static", "rel_pose"):
        np.testing.assert_array_equal(a[name][...], b[name][...])
    for name in ("flow_fwd", "consistent"):
        np.testing.assert_array_equal(a[name][...], c[name][...])
    # float16 depth rounding differs between scales, so a handful of pixels near the tolerance may flip.
    assert (a["static"][...] != c["static"][...]).mean() < 1e-3
    for t in range(len(jitter) - 1):
        assert rotation_error_deg(a["rel_pose"][t][:3, :3], c["rel_pose"][t][:3, :3]) < 0.01
        np.testing.assert_allclose(c["rel_pose"][t][:3, 3], jitter[t] * a["rel_pose"][t][:3, 3], rtol=0.02,
                                   atol=1e-4)


def test_one_frame_video_has_zero_pairs(tmp_path: Path, scene: dict) -> None:
    prep, teach = stores(tmp_path, scene, num_frames=1)
    summary = compute_flow_store(prep, teach, tmp_path / "flow.zarr", CFG, video="still")
    g = open_store(tmp_path / "flow.zarr", kind="flow")
    assert summary["num_pairs"] == 0 and g.attrs["num_pairs"] == 0 and g.attrs["num_frames"] == 1
    assert g["flow_fwd"].shape[0] == 0 and g["static"].shape[0] == 0 and g["rel_pose"].shape == (0, 4, 4)
    assert g.attrs["pose"]["known_pairs"] == 0


# --- bad input -------------------------------------------------------------------------------------------


def test_teacher_shape_mismatch_names_both_stores(tmp_path: Path, scene: dict) -> None:
    write_prepared(tmp_path / "prep.zarr", scene["rgb"], None)
    write_teacher(tmp_path / "teach.zarr", scene["depth"][:4], np.broadcast_to(padded_K(), (4, 3, 3)))
    with pytest.raises(StoreError, match=r"teach\.zarr.*prep\.zarr.*re-run the teacher"):
        compute_flow_store(tmp_path / "prep.zarr", tmp_path / "teach.zarr", tmp_path / "flow.zarr", CFG, "v")
    assert not (tmp_path / "flow.zarr").exists()


def test_missing_and_inconsistent_intrinsics(tmp_path: Path, scene: dict) -> None:
    T = len(scene["rgb"])
    write_prepared(tmp_path / "prep.zarr", scene["rgb"], np.broadcast_to(padded_K(), (T, 3, 3)))
    out = tmp_path / "flow.zarr"
    write_teacher(tmp_path / "t1.zarr", scene["depth"], None)
    with pytest.raises(StoreError, match=r"t1\.zarr: missing array\(s\) \['K_used'\]"):
        compute_flow_store(tmp_path / "prep.zarr", tmp_path / "t1.zarr", out, CFG, "v")
    bad = np.broadcast_to(padded_K(), (T, 3, 3)).copy()
    bad[2, 0, 0] = np.nan
    write_teacher(tmp_path / "t2.zarr", scene["depth"], bad)
    with pytest.raises(IntrinsicsError, match=r"t2\.zarr/K_used: intrinsics contain NaN"):
        compute_flow_store(tmp_path / "prep.zarr", tmp_path / "t2.zarr", out, CFG, "v")
    other = np.broadcast_to(padded_K(), (T, 3, 3)).copy()
    other[:, 0, 0] *= 1.1
    write_teacher(tmp_path / "t3.zarr", scene["depth"], other)
    with pytest.raises(IntrinsicsError, match=r"inconsistent intrinsics: .*prep\.zarr/K .*t3\.zarr/K_used"):
        compute_flow_store(tmp_path / "prep.zarr", tmp_path / "t3.zarr", out, CFG, "v")
    write_teacher(tmp_path / "t4.zarr", scene["depth"], np.broadcast_to(padded_K(), (T - 1, 3, 3)))
    with pytest.raises(IntrinsicsError, match=r"K_used has shape \(5, 3, 3\), expected \(6, 3, 3\)"):
        compute_flow_store(tmp_path / "prep.zarr", tmp_path / "t4.zarr", out, CFG, "v")
    assert not out.exists()


def test_teacher_nan_depth_is_masked_counted_and_makes_pose_unknown(tmp_path: Path, scene: dict) -> None:
    """NaN depth flagged valid: those pixels are unknown (not consistent, not static) and counted in the
    attributes; a frame with no usable depth makes its pair unknown (identity pose, pose_valid False,
    consistent and static all False) while its flow is kept."""
    T = len(scene["rgb"])
    depth = scene["depth"].copy()
    depth[1, 10:20, 10:20] = np.nan
    depth[3] = np.nan
    write_prepared(tmp_path / "prep.zarr", scene["rgb"], None)
    write_teacher(tmp_path / "teach.zarr", depth, np.broadcast_to(padded_K(), (T, 3, 3)),
                  valid=np.ones((T, H, W), bool))
    summary = compute_flow_store(tmp_path / "prep.zarr", tmp_path / "teach.zarr", tmp_path / "f.zarr", CFG,
                                 "v")
    g = open_store(tmp_path / "f.zarr", kind="flow")
    assert summary["teacher_bad_depth_pixels"] == 100 + H * W
    nan_box = (1, slice(PAD[1] + 10, PAD[1] + 20), slice(PAD[0] + 10, PAD[0] + 20))
    assert not g["static"][nan_box].any() and not g["consistent"][nan_box].any()
    assert g["static"][1].any()
    np.testing.assert_array_equal(g["pose_valid"][...], [True, True, True, False, True])
    assert not g["static"][3].any() and not g["consistent"][3].any() and np.abs(g["flow_fwd"][3]).max() > 0
    np.testing.assert_array_equal(g["rel_pose"][3], np.eye(4))
    assert g.attrs["pose"]["unknown_pairs"] == [{"pair": 3, "reason": "0 usable correspondences, need 50"}]


# --- the DVC stage ---------------------------------------------------------------------------------------


def test_stage_main_writes_the_store(tmp_path: Path, scene: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from stages import flow as stage

    (tmp_path / "data" / "prepared").mkdir(parents=True)
    (tmp_path / "data" / "teacher").mkdir(parents=True)
    T = 3
    write_prepared(tmp_path / "data/prepared/clip.zarr.zip", scene["rgb"][:T], None)
    K_used = np.broadcast_to(padded_K(), (T, 3, 3))
    write_teacher(tmp_path / "data/teacher/clip.zarr.zip", scene["depth"][:T], K_used)
    write_params(tmp_path, {"videos": {"clip": {"video": "clip.mp4"}},
                            "flow": {"backend": "dis", "dis_preset": "fast"}})
    monkeypatch.chdir(tmp_path)
    stage.main(["clip"])
    g = open_store(tmp_path / "data/flow/clip.zarr.zip", kind="flow")
    assert g.attrs["num_pairs"] == T - 1 and g.attrs["backend"]["preset"] == "fast"
    with pytest.raises(ConfigError, match="no video named 'other'"):
        stage.main(["other"])


# --- RAFT (only where ptlflow imports) ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def raft_small() -> RAFTBackend:
    try:
        import_ptlflow()
    except ImportError as exc:
        pytest.skip(f"ptlflow not importable here: {exc.__cause__}")
    return RAFTBackend(model="raft_small", ckpt=None, iters=2, batch_pairs=2)


def test_raft_random_weights_shapes_and_batching(raft_small: RAFTBackend, scene: dict) -> None:
    """The real ptlflow RAFT class with random weights: shapes, finite values, batching changes nothing."""
    # Not a multiple of 8 (ptlflow pads) and below RAFT's 128 px minimum (the backend pads: without it the
    # coarsest correlation level has 1 cell and every flow is NaN).
    a, b = scene["rgb"][:3, :90, :124], scene["rgb"][1:4, :90, :124]
    assert raft_small.min_side == 128
    flows = raft_small.flow(a, b)
    assert flows.shape == (3, 90, 124, 2) and flows.dtype == np.float32 and np.isfinite(flows).all()
    one_by_one = np.concatenate([raft_small.flow(a[i : i + 1], b[i : i + 1]) for i in range(3)])
    np.testing.assert_allclose(flows, one_by_one, atol=1e-3)
    info = raft_small.describe()
    assert info["name"] == "raft" and info["weights"]["kind"] == "random" and info["iters"] == 2


def test_raft_backend_writes_a_flow_store(raft_small: RAFTBackend, tmp_path: Path, scene: dict) -> None:
    prep, teach = stores(tmp_path, scene, num_frames=3)
    cfg = FlowConfig(backend="raft", raft_ckpt=None, raft_iters=2)
    compute_flow_store(prep, teach, tmp_path / "flow.zarr", cfg, video="v", backend=raft_small)
    g = open_store(tmp_path / "flow.zarr", kind="flow")
    assert g["flow_fwd"].shape == (2, H + 6, W + 8, 2) and g.attrs["backend"]["library"] == "ptlflow"
    assert "ptlflow" in g.attrs["provenance"]["versions"]


def test_raft_flow_stage_end_to_end_has_the_dis_store_layout(
    raft_small: RAFTBackend, tmp_path: Path, scene: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``python -m stages.flow`` with ``backend: raft`` (random weights, from params.yaml) on a tiny prepared
    video: the same arrays, shapes, dtypes, chunking and attributes as with DIS; flow, masks and poses
    are filled in, and the backend is recorded."""
    from stages import flow as stage

    T = 4
    write_prepared(tmp_path / "data/prepared/clip.zarr.zip", scene["rgb"][:T], None)
    K_used = np.broadcast_to(padded_K(), (T, 3, 3))
    write_teacher(tmp_path / "data/teacher/clip.zarr.zip", scene["depth"][:T], K_used)
    monkeypatch.chdir(tmp_path)
    layouts, stores_ = {}, {}
    for backend in ("dis", "raft"):
        params = {"videos": {"clip": {"video": "clip.mp4"}},
                  "flow": {"backend": backend, "raft_ckpt": None, "raft_iters": 2, "raft_batch_pairs": 2}}
        write_params(tmp_path, params)
        stage.main(["clip"])
        (tmp_path / "data/flow/clip.zarr.zip").rename(tmp_path / f"{backend}.zarr.zip")
        g = open_store(tmp_path / f"{backend}.zarr.zip", kind="flow")
        stores_[backend] = g
        layouts[backend] = {name: (a.shape, a.dtype, a.chunks) for name, a in g.arrays()}
    assert layouts["raft"] == layouts["dis"]
    assert layouts["raft"]["flow_fwd"][0] == (T - 1, H + 6, W + 8, 2)
    dis, raft = stores_["dis"], stores_["raft"]
    assert set(raft.attrs) == set(dis.attrs) and raft.attrs["num_pairs"] == T - 1
    assert raft.attrs["backend"]["name"] == "raft" and raft.attrs["backend"]["weights"]["kind"] == "random"
    assert raft.attrs["backend"]["iters"] == 2
    image = (slice(None), slice(PAD[1], PAD[1] + H), slice(PAD[0], PAD[0] + W))
    fwd = raft["flow_fwd"][...]
    assert np.isfinite(fwd[image]).all() and not np.array_equal(fwd, dis["flow_fwd"][...])
    assert raft["rel_pose"].shape == (T - 1, 4, 4) and np.isfinite(raft["rel_pose"][...]).all()
    # Random weights give arbitrary flow: masks are whatever the checks decide, but never outside the image.
    for name in ("consistent", "static"):
        mask = raft[name][...]
        assert mask.dtype == bool and not mask[:, : PAD[1]].any() and not mask[:, :, : PAD[0]].any()
    assert not (raft["static"][...] & ~raft["consistent"][...]).any()
