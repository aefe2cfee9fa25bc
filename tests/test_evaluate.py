"""The evaluate stage and the streaming predictor: metrics.json on tiny rendered videos, predictor vs model
forward, reset, per-frame ablation, bounded state, keyframe anchoring."""

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import editing_packed, tiny_model_config

from videomamba_depth.camera import ResizePad, relative_pose
from videomamba_depth.evaluation import METHODS, REGION_METRICS, EvaluateConfig, evaluate, load_eval_video
from videomamba_depth.evaluation.pipeline import headline
from videomamba_depth.evaluation.scoring import near_views
from videomamba_depth.inference import AnchoringConfig, StreamingDepth, describe
from videomamba_depth.metrics import depth_edge_band, evaluate_sequence, evaluation_mask, static_jitter
from videomamba_depth.models import build_student, save_student
from videomamba_depth.prepare import resample_nearest, resize_pad
from videomamba_depth.synth import SynthConfig, render_frames, sample_scene
from videomamba_depth.zarrio import StoreError, create_static_array, create_time_array, writing_store

WIDTH, HEIGHT, FRAMES = 48, 36, 10


def _array(group, name, data, dims, units="1"):
    arr = create_time_array(group, name, data.shape[1:], data.dtype, dims=dims, units=units, description=name)
    arr.resize(data.shape)
    arr[:] = data
    return arr


def write_eval_video(
    data: Path, name: str, *, seed: int, gt: bool = True, moving: bool = True, flicker: float = 0.06
) -> None:
    """Stores ``data/{prepared,teacher,flow}/<name>.zarr.zip`` of a tiny rendered room, zero-padded to a
    multiple of 14 (so padding must be excluded): the teacher is the truth times a per-frame scale
    ``exp(N(0, flicker))``; flow, masks and poses come from the renderer. ``moving=False``: the ground
    truth's motion mask is empty (a video without moving objects)."""
    cfg = SynthConfig(width=WIDTH, height=HEIGHT, num_frames=(FRAMES, FRAMES), supersample=1)
    frames = list(render_frames(sample_scene(cfg, seed)))
    geometry = ResizePad.fit(WIDTH, HEIGHT, WIDTH, 14)
    pad = lambda x: resample_nearest(np.stack(x), geometry)  # noqa: E731
    rgb = resize_pad(np.stack([f.rgb for f in frames]), geometry)
    depth = pad([f.depth for f in frames])
    K = geometry.apply_K(np.stack([f.K for f in frames]))
    poses = np.stack([f.pose_c2w for f in frames])
    flow = pad([f.flow_fwd for f in frames[:-1]])
    consistent = pad([f.flow_fwd_valid for f in frames[:-1]])
    static = consistent & ~pad([f.motion_mask for f in frames[:-1]])
    motion = pad([f.motion_mask for f in frames]) & moving
    rel = np.stack([relative_pose(poses[t], poses[t + 1]) for t in range(FRAMES - 1)])
    scale = np.exp(np.random.default_rng(seed).normal(0.0, flicker, FRAMES)).astype(np.float32)
    valid = geometry.valid_mask()
    attrs = {"geometry": geometry.to_attrs()}
    with writing_store(data / "prepared" / f"{name}.zarr.zip", "prepared", attrs) as g:
        _array(g, "rgb", rgb, ("t", "y", "x", "c"))
        create_static_array(g, "valid", valid, dims=("y", "x"), units="bool", description="")
        if gt:
            sub = g.create_group("gt")
            _array(sub, "depth", depth, ("t", "y", "x"), "m")
            _array(sub, "pose_c2w", poses, ("t", "i", "j"), "m")
            _array(sub, "K", K, ("t", "i", "j"), "pixels")
            _array(sub, "motion_mask", motion, ("t", "y", "x"), "bool")
    with writing_store(data / "teacher" / f"{name}.zarr.zip", "teacher", {}) as g:
        _array(g, "depth", (depth * scale[:, None, None]).astype(np.float16), ("t", "y", "x"), "m")
        _array(g, "valid", np.broadcast_to(valid, depth.shape).copy(), ("t", "y", "x"))
        _array(g, "K_used", K, ("t", "i", "j"), "pixels")
    with writing_store(data / "flow" / f"{name}.zarr.zip", "flow", {}) as g:
        _array(g, "flow_fwd", flow.astype(np.float16), ("t", "y", "x", "c"), "pixels")
        _array(g, "consistent", consistent, ("t", "y", "x"))
        _array(g, "static", static, ("t", "y", "x"))
        _array(g, "rel_pose", rel, ("t", "i", "j"), "m")
        _array(g, "pose_valid", np.ones(FRAMES - 1, bool), ("t",))


def temporal_model(seed: int = 0, scale: float = 0.2, temporal: bool = True):
    """A tiny student with perturbed weights: a fresh model predicts one constant depth (zero-initialised
    head) and its temporal blocks are the identity (zero-initialised output projections); ``temporal=False``
    keeps the latter."""
    torch.manual_seed(seed)
    model = build_student(tiny_model_config())
    with torch.no_grad():
        for name, p in model.named_parameters():
            if temporal or not name.startswith("temporal."):
                p.add_(scale * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    write_eval_video(root / "data", "with_gt", seed=1)
    write_eval_video(root / "data", "no_gt", seed=2, gt=False)
    write_eval_video(root / "data", "no_moving", seed=4, moving=False)
    save_student(root / "model.safetensors", temporal_model())
    # A near-view depth that makes about half of with_gt's frames near views (the region is whole frames).
    video = _load(root, "with_gt")
    far = [np.percentile(d[v], 90) for d, v in zip(video.reference, video.reference_valid, strict=True)]
    cfg = EvaluateConfig(videos=("with_gt", "no_gt", "no_moving"), alignments=("none", "lstsq_disparity"),
                         strip_frames=2, near_view_depth=float(np.median(far)))
    metrics = evaluate(cfg, root / "model.safetensors", data_dir=root / "data", out_dir=root / "out")
    return root, cfg, metrics


def _load(root: Path, name: str):
    stores = (root / "data" / kind / f"{name}.zarr.zip" for kind in ("prepared", "teacher", "flow"))
    return load_eval_video(name, *stores)


def test_metrics_json_schema_and_values(evaluated):
    root, cfg, metrics = evaluated
    videos = metrics["videos"]
    summary = json.loads((root / "out" / "metrics.json").read_text())
    assert summary == {k: v for k, v in metrics.items() if k != "videos"}
    assert json.loads((root / "out" / "videos.json").read_text()) == videos
    assert metrics["reference"] == "ground_truth"
    assert [videos[v]["reference"] for v in cfg.videos] == ["ground_truth", "teacher", "ground_truth"]
    for scope in (metrics["aggregate"], *videos.values()):
        assert set(cfg.alignments) <= set(scope)
        for alignment in cfg.alignments:
            assert set(scope[alignment]) == set(METHODS)
    # The teacher is not scored against itself; the students are (AbsRel vs teacher).
    assert "abs_rel" not in videos["no_gt"]["none"]["teacher"]
    assert "abs_rel" in videos["no_gt"]["none"]["student_stream"]
    # Recompute the teacher's AbsRel on the ground-truth video independently.
    video = _load(root, "with_gt")
    valid = video.reference_valid & video.teacher_valid
    mask = evaluation_mask(video.reference, valid, max_depth=cfg.max_depth)
    assert not mask[:, 0, :].any()  # padding rows are excluded
    expected = evaluate_sequence(video.teacher, video.reference, mask, max_depth=cfg.max_depth)
    expected = expected.mean["abs_rel"]
    assert videos["with_gt"]["none"]["teacher"]["abs_rel"] == pytest.approx(expected)
    # Only ground-truth videos enter the aggregate AbsRel; temporal metrics average over every video.
    agg = metrics["aggregate"]["none"]
    gt_abs_rel = [videos[v]["none"]["teacher"]["abs_rel"] for v in ("with_gt", "no_moving")]
    assert agg["teacher"]["abs_rel"] == pytest.approx(np.mean(gt_abs_rel))
    jitters = [videos[v]["none"]["teacher"]["jitter_static"] for v in cfg.videos]
    assert agg["teacher"]["jitter_static"] == pytest.approx(np.mean(jitters))
    jitter = static_jitter(video.teacher, video.static, valid=mask).mean
    assert videos["with_gt"]["none"]["teacher"]["jitter_static"] == pytest.approx(jitter)
    # The flickering teacher jitters more than its ground truth (the floor).
    assert metrics["aggregate"]["floor"]["jitter_static"] < agg["teacher"]["jitter_static"]
    # The untrained baseline is a fresh student: one constant depth (zero-initialised head), so no flicker.
    assert agg["student_untrained"]["jitter_static"] < 1e-6
    assert metrics["anchoring"]["enabled"] is False


def test_region_metrics(evaluated):
    """Moving-object and depth-edge AbsRel / δ1 against ground truth, recomputed independently; null where a
    video has no ground truth or no moving pixel, and aggregated over the videos that have them."""
    root, cfg, metrics = evaluated
    videos, agg = metrics["videos"], metrics["aggregate"]["none"]
    video = _load(root, "with_gt")
    valid = video.reference_valid & video.teacher_valid
    mask = evaluation_mask(video.reference, valid, max_depth=cfg.max_depth)
    edge = depth_edge_band(video.reference, video.reference_valid, threshold=cfg.edge_threshold,
                           band_px=cfg.edge_band_px)
    shares = videos["with_gt"]["regions"]
    assert shares["moving_pixels"] == pytest.approx((mask & video.motion).sum() / mask.sum())
    assert shares["edge_pixels"] == pytest.approx((mask & edge).sum() / mask.sum())
    assert 0 < shares["moving_pixels"] < 0.5 and 0 < shares["edge_pixels"] < 0.5
    near = near_views(video.reference, mask, cfg.near_view_depth)
    assert 0 < near.sum() < len(near)
    assert shares["near_pixels"] == pytest.approx(mask[near].sum() / mask.sum())
    for region, pixels in (("moving", video.motion), ("edge", edge), ("near", near[:, None, None])):
        expected = evaluate_sequence(video.teacher, video.reference, mask & pixels, max_depth=cfg.max_depth)
        teacher = videos["with_gt"]["none"]["teacher"]
        for metric in ("abs_rel", "delta1"):
            assert teacher[f"{region}_{metric}"] == pytest.approx(expected.mean[metric])
    for method in METHODS:
        scores = videos["with_gt"]["none"][method]
        assert all(math.isfinite(scores[m]) for m in REGION_METRICS), method
        # No moving pixel: null, not NaN (strict JSON), while the edge band is still scored.
        still = videos["no_moving"]["none"][method]
        assert still["moving_abs_rel"] is None and still["moving_delta1"] is None
        assert math.isfinite(still["edge_abs_rel"])
        assert agg[method]["moving_abs_rel"] == pytest.approx(scores["moving_abs_rel"])
        edges = [videos[v]["none"][method]["edge_abs_rel"] for v in ("with_gt", "no_moving")]
        assert agg[method]["edge_abs_rel"] == pytest.approx(np.mean(edges))
    assert videos["no_moving"]["regions"]["moving_pixels"] == 0.0
    # Without ground truth there are no regions: null for the students, absent for the teacher (reference).
    assert videos["no_gt"]["regions"] == {"moving_pixels": None, "edge_pixels": None, "near_pixels": None}
    assert all(videos["no_gt"]["none"]["student_stream"][m] is None for m in REGION_METRICS)
    assert not set(REGION_METRICS) & set(videos["no_gt"]["none"]["teacher"])


def test_headline_targets(evaluated):
    _, cfg, metrics = evaluated
    agg, head = metrics["aggregate"]["none"], metrics["headline"]
    targets = head["targets"]
    stream, reset, teacher = agg["student_stream"], agg["student_reset"], agg["teacher"]
    expected = {
        "abs_rel": (stream["abs_rel"], cfg.target_abs_rel),
        "delta1": (stream["delta1"], cfg.target_delta1),
        "moving_abs_rel": (stream["moving_abs_rel"], cfg.target_moving_abs_rel),
        "tae_vs_teacher": (stream["tae"] / teacher["tae"], cfg.target_tae_ratio),
        "jitter_static_vs_teacher": (stream["jitter_static"] / teacher["jitter_static"],
                                     cfg.target_jitter_ratio),
        "tae_vs_reset": (stream["tae"] / reset["tae"], cfg.target_stream_tae_ratio),
        "jitter_static_vs_reset": (stream["jitter_static"] / reset["jitter_static"],
                                   cfg.target_stream_jitter_ratio),
        "abs_rel_vs_reset": (stream["abs_rel"] / reset["abs_rel"], cfg.target_stream_abs_rel_ratio),
    }
    assert set(targets) == set(expected)
    for name, (value, target) in expected.items():
        entry = targets[name]
        assert entry["value"] == pytest.approx(value) and entry["target"] == target, name
        assert entry["ok"] == (value >= target if entry["rule"] == ">=" else value <= target), name
    assert targets["delta1"]["rule"] == ">=" and targets["abs_rel"]["rule"] == "<="
    assert all(isinstance(t["ok"], bool) for t in targets.values())  # ground truth and moving pixels exist
    assert head["all_ok"] == all(t["ok"] for t in targets.values())
    assert head["vs_teacher"]["student_reset"]["tae"] == pytest.approx(reset["tae"] / teacher["tae"])
    edge_ratio = stream["edge_abs_rel"] / reset["edge_abs_rel"]
    assert head["stream_vs_reset"]["edge_abs_rel"] == pytest.approx(edge_ratio)
    vs_untrained = stream["abs_rel"] / agg["student_untrained"]["abs_rel"]
    assert head["abs_rel_vs_untrained"] == pytest.approx(vs_untrained)


def _scores(abs_rel: float, delta1: float, tae: float, jitter: float) -> dict[str, float]:
    return {"abs_rel": abs_rel, "delta1": delta1, "moving_abs_rel": abs_rel, "tae": tae,
            "jitter_static": jitter}


def test_verdict_needs_accuracy_not_only_stability():
    """A stable but wrong student (the blurred or constant depth of an untrained model) passes every
    flicker ratio and still fails; an accurate one that the temporal module makes steadier passes."""
    cfg = EvaluateConfig(videos=("v",))
    teacher, reset = _scores(0.05, 0.99, 6.0, 0.06), _scores(0.11, 0.9, 2.0, 0.02)
    blurred = {"teacher": teacher, "student_reset": reset, "student_untrained": _scores(0.6, 0.4, 0.2, 0.0),
               "student_stream": _scores(0.5, 0.3, 0.3, 0.001)}
    head = headline(blurred, cfg, has_gt=True)
    flicker = ("tae_vs_teacher", "jitter_static_vs_teacher", "tae_vs_reset", "jitter_static_vs_reset")
    assert all(head["targets"][name]["ok"] for name in flicker)
    assert head["targets"]["abs_rel"]["ok"] is False and head["targets"]["delta1"]["ok"] is False
    assert head["all_ok"] is False
    good = {**blurred, "student_stream": _scores(0.1, 0.9, 1.0, 0.01)}
    assert headline(good, cfg, has_gt=True)["all_ok"] is True
    # Only a moving-object miss, or a temporal module that does not beat the per-frame student, fails too.
    for worse in ({"moving_abs_rel": 0.3}, {"tae": 1.9}):
        missed = {**good, "student_stream": {**good["student_stream"], **worse}}
        assert headline(missed, cfg, has_gt=True)["all_ok"] is False
    # Without ground truth the accuracy targets cannot be judged: null unless something else misses.
    unjudged = headline(good, cfg, has_gt=False)
    assert all(unjudged["targets"][name]["ok"] is None for name in ("abs_rel", "delta1", "abs_rel_vs_reset"))
    assert unjudged["all_ok"] is None
    # So a stable, wrong student is never passed without ground truth either.
    assert headline(blurred | {"student_reset": teacher}, cfg, has_gt=False)["all_ok"] is None
    flickering = good | {"student_stream": _scores(0.1, 0.9, 5.0, 0.01)}
    assert headline(flickering, cfg, has_gt=False)["all_ok"] is False


def test_plots_and_images(evaluated):
    root, cfg, metrics = evaluated
    out = root / "out"
    for curve, x in (("abs_rel", "frame"), ("moving_abs_rel", "frame"), ("jitter", "pair"), ("tae", "pair"),
                     ("drift", "frame"), ("change_histogram", "relative_change")):
        with open(out / "plots" / curve / "with_gt.csv") as f:
            rows = list(csv.DictReader(f))
        assert rows and rows[0].keys() >= {x, "student_stream", "student_reset"}, curve
    with open(out / "plots" / "abs_rel" / "with_gt.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == FRAMES
    assert np.mean([float(r["teacher"]) for r in rows]) == pytest.approx(
        metrics["videos"]["with_gt"]["none"]["teacher"]["abs_rel"])
    # AbsRel on moving pixels per frame: frames without any are empty cells, skipped by the mean.
    with open(out / "plots" / "moving_abs_rel" / "with_gt.csv") as f:
        moving = [float(r["student_stream"]) for r in csv.DictReader(f) if r["student_stream"]]
    assert moving and np.mean(moving) == pytest.approx(
        metrics["videos"]["with_gt"]["none"]["student_stream"]["moving_abs_rel"])
    with open(out / "plots" / "moving_abs_rel" / "no_moving.csv") as f:
        assert all(r["student_stream"] == "" for r in csv.DictReader(f))
    with open(out / "plots" / "change_histogram" / "with_gt.csv") as f:
        fractions = [float(r["ground_truth"]) for r in csv.DictReader(f)]
    assert sum(fractions) == pytest.approx(1.0)
    names = {p.name for p in (out / "images").iterdir()}
    assert names == {f"{v}_{k}.png" for v in cfg.videos for k in ("strip", "xt", "xt_log_ratio")}
    assert not list(out.glob("*.partial-*"))


def test_anchoring_enabled_is_reported(tmp_path):
    write_eval_video(tmp_path / "data", "v", seed=3)
    save_student(tmp_path / "m.safetensors", temporal_model())
    anchoring = AnchoringConfig(enabled=True, interval=2, min_age=2, similarity=-1.0, stability=-1.0)
    cfg = EvaluateConfig(videos=("v",), alignments=("none",), anchoring=anchoring)
    metrics = evaluate(cfg, tmp_path / "m.safetensors", data_dir=tmp_path / "data", out_dir=tmp_path / "out")
    assert metrics["anchoring"]["enabled"] is True
    assert metrics["anchoring"]["restores"] > 0 and metrics["anchoring"]["stable_frames"] > 0


def test_missing_store_names_it_and_writes_nothing(tmp_path):
    save_student(tmp_path / "m.safetensors", temporal_model())
    with pytest.raises(ValueError, match=r"absent\.zarr"):
        evaluate(EvaluateConfig(videos=("absent",)), tmp_path / "m.safetensors", data_dir=tmp_path / "data",
                 out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_ground_truth_without_motion_mask_names_the_store(tmp_path):
    write_eval_video(tmp_path, "v", seed=5)
    prepared = tmp_path / "prepared" / "v.zarr.zip"
    with editing_packed(prepared) as group:
        del group["gt"]["motion_mask"]
    with pytest.raises(StoreError, match=r"v\.zarr\.zip/gt: missing array\(s\) \['motion_mask'\]"):
        load_eval_video("v", prepared, tmp_path / "teacher" / "v.zarr.zip", tmp_path / "flow" / "v.zarr.zip")


# --------------------------------------------------------------------------------------- the predictor
def _clip(seed: int = 0, frames: int = 6, height: int = 28, width: int = 42):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 255, (frames, height, width, 3), dtype=np.uint8)
    K = np.array([[40.0, 0, (width - 1) / 2], [0, 40.0, (height - 1) / 2], [0, 0, 1]])
    return rgb, K


def test_predictor_streaming_equals_model_forward():
    model = temporal_model()
    rgb, K = _clip()
    predictor = StreamingDepth(model)
    streamed = np.stack([predictor(frame, K) for frame in rgb])
    clip = torch.from_numpy(rgb).permute(0, 3, 1, 2)[None]
    Ks = torch.from_numpy(np.broadcast_to(K, (len(rgb), 3, 3)).astype(np.float32).copy())[None]
    with torch.no_grad():
        forward = model(clip, Ks).depth[0].numpy()
    np.testing.assert_allclose(streamed, forward, rtol=1e-5, atol=1e-6)


def test_reset_restarts_the_stream_and_state_size_is_constant():
    predictor = StreamingDepth(temporal_model())
    rgb, K = _clip()
    first, sizes = [], []
    for frame in rgb:
        first.append(predictor(frame, K))
        sizes.append(predictor.state_nbytes())
    assert len(set(sizes)) == 1 and sizes[0] > 0  # memory does not grow with the number of frames
    predictor.reset()
    assert predictor.state_nbytes() == 0
    again = [predictor(frame, K) for frame in rgb]
    np.testing.assert_array_equal(np.stack(first), np.stack(again))


def test_per_frame_ablation_differs_only_with_temporal_weights():
    rgb, K = _clip()
    model = temporal_model()
    streaming, per_frame = StreamingDepth(model), StreamingDepth(model, reset_every_frame=True)
    stream = np.stack([streaming(f, K) for f in rgb])
    reset = np.stack([per_frame(f, K) for f in rgb])
    assert stream.std() > 0.01 * stream.mean()  # not a constant map
    np.testing.assert_allclose(stream[0], reset[0], rtol=1e-6)  # the first frame has no past
    assert np.abs(np.log(stream[1:] / reset[1:])).mean() > 1e-3
    fresh = temporal_model(temporal=False)  # zero-initialised temporal blocks: the identity in time
    streaming, per_frame = StreamingDepth(fresh), StreamingDepth(fresh, reset_every_frame=True)
    np.testing.assert_allclose(np.stack([streaming(f, K) for f in rgb]),
                               np.stack([per_frame(f, K) for f in rgb]), rtol=1e-5)


# ------------------------------------------------------------------------------------------ anchoring
def test_revisit_restores_the_keyframe_states():
    """Frames A (x3), B (x3), A: the last A revisits keyframe 0 and continues from its states."""
    model = temporal_model()
    rgb, K = _clip(frames=2)
    a, b = rgb
    sequence = [a, a, a, b, b, b, a]
    cfg = AnchoringConfig(enabled=True, interval=3, min_age=4, similarity=0.99)
    anchored = StreamingDepth(model, anchoring=cfg)
    out = [anchored(frame, K) for frame in sequence]
    assert anchored.anchor.events == [(6, 0)]
    # Expected: the state after frame 0, then one step with A.
    reference = StreamingDepth(model)
    reference(a, K)
    np.testing.assert_allclose(out[6], reference(a, K), rtol=1e-6)
    plain = StreamingDepth(model)
    assert not np.allclose([plain(f, K) for f in sequence][6], out[6], rtol=1e-4)
    anchored.reset()
    assert anchored.anchor.events == [] and anchored.state_nbytes() == 0


def test_ema_scale_alignment_only_on_stable_views():
    model = temporal_model()
    rgb, K = _clip(frames=6)
    cfg = AnchoringConfig(enabled=True, interval=100, ema_momentum=0.5, stability=0.999)
    still = [rgb[0]] * 6
    anchored, plain = StreamingDepth(model, anchoring=cfg), StreamingDepth(model)
    a = np.stack([anchored(f, K) for f in still])
    p = np.stack([plain(f, K) for f in still])
    assert anchored.anchor.stable_frames == 5
    # Output log scale = EMA of the plain output's median log depth.
    ema = np.median(np.log(p[0]))
    for t in range(1, 6):
        ema = 0.5 * ema + 0.5 * np.median(np.log(p[t]))
        assert np.median(np.log(a[t])) == pytest.approx(ema, abs=1e-5)
    # Random frames never look alike: no smoothing, the output is the plain stream's.
    changing, plain = StreamingDepth(model, anchoring=cfg), StreamingDepth(model)
    smoothed = np.stack([changing(f, K) for f in rgb])
    np.testing.assert_array_equal(smoothed, np.stack([plain(f, K) for f in rgb]))
    assert changing.anchor.stable_frames == 0


def test_descriptor_ignores_padding_and_is_unit_norm():
    rgb, _ = _clip(frames=1)
    padded = np.zeros((40, 60, 3), np.uint8)
    padded[6:34, 9:51] = rgb[0]
    valid = np.zeros((40, 60), bool)
    valid[6:34, 9:51] = True
    for kind in ("thumbnail", "gradient"):
        d = describe(padded, valid, kind)
        assert np.linalg.norm(d) == pytest.approx(1.0)
        np.testing.assert_allclose(d, describe(rgb[0], None, kind), atol=1e-12)


def test_near_views_are_whole_frames_under_the_depth():
    depth = np.full((4, 6, 8), 3.0)
    depth[1] = 1.2  # facing a wall
    depth[2, :, :1] = 1.0  # one near column is not a near view
    depth[3] = 0.5
    mask = np.ones(depth.shape, dtype=bool)
    mask[3] = False  # nothing evaluated: not near
    np.testing.assert_array_equal(near_views(depth, mask, 2.0), [False, True, False, False])
    # The percentile is over the evaluated pixels only.
    only_near = np.zeros(depth.shape, dtype=bool)
    only_near[2, :, :1] = True
    assert near_views(depth, only_near, 2.0)[2]
