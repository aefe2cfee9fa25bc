"""The evaluate stage and the streaming predictor: metrics.json on tiny rendered videos, predictor vs model
forward, reset, per-frame ablation, bounded state, keyframe anchoring."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from training_fixtures import tiny_model_config

from videomamba_depth.camera import ResizePad, relative_pose
from videomamba_depth.evaluation import METHODS, EvaluateConfig, evaluate, load_eval_video
from videomamba_depth.inference import AnchoringConfig, StreamingDepth, describe
from videomamba_depth.metrics import evaluate_sequence, evaluation_mask, static_jitter
from videomamba_depth.models import build_student, save_student
from videomamba_depth.prepare import resample_nearest, resize_pad
from videomamba_depth.synth import SynthConfig, render_frames, sample_scene
from videomamba_depth.zarrio import create_static_array, create_time_array, writing_store

WIDTH, HEIGHT, FRAMES = 48, 36, 10


def _array(group, name, data, dims, units="1"):
    arr = create_time_array(group, name, data.shape[1:], data.dtype, dims=dims, units=units, description=name)
    arr.resize(data.shape)
    arr[:] = data
    return arr


def write_eval_video(data: Path, name: str, *, seed: int, gt: bool = True, flicker: float = 0.06) -> None:
    """Stores ``data/{prepared,teacher,flow}/<name>.zarr`` of a tiny rendered room, zero-padded to a
    multiple of 14 (so padding must be excluded): the teacher is the truth times a per-frame scale
    ``exp(N(0, flicker))``; flow, masks and poses come from the renderer."""
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
    rel = np.stack([relative_pose(poses[t], poses[t + 1]) for t in range(FRAMES - 1)])
    scale = np.exp(np.random.default_rng(seed).normal(0.0, flicker, FRAMES)).astype(np.float32)
    valid = geometry.valid_mask()
    attrs = {"geometry": geometry.to_attrs()}
    with writing_store(data / "prepared" / f"{name}.zarr", "prepared", attrs) as g:
        _array(g, "rgb", rgb, ("t", "y", "x", "c"))
        create_static_array(g, "valid", valid, dims=("y", "x"), units="bool", description="")
        if gt:
            sub = g.create_group("gt")
            _array(sub, "depth", depth, ("t", "y", "x"), "m")
            _array(sub, "pose_c2w", poses, ("t", "i", "j"), "m")
            _array(sub, "K", K, ("t", "i", "j"), "pixels")
    with writing_store(data / "teacher" / f"{name}.zarr", "teacher", {}) as g:
        _array(g, "depth", (depth * scale[:, None, None]).astype(np.float16), ("t", "y", "x"), "m")
        _array(g, "valid", np.broadcast_to(valid, depth.shape).copy(), ("t", "y", "x"))
        _array(g, "K_used", K, ("t", "i", "j"), "pixels")
    with writing_store(data / "flow" / f"{name}.zarr", "flow", {}) as g:
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
    save_student(root / "model.safetensors", temporal_model())
    cfg = EvaluateConfig(videos=("with_gt", "no_gt"), alignments=("none", "lstsq_disparity"), strip_frames=2)
    metrics = evaluate(cfg, root / "model.safetensors", data_dir=root / "data", out_dir=root / "out")
    return root, cfg, metrics


def test_metrics_json_schema_and_values(evaluated):
    root, cfg, metrics = evaluated
    summary = json.loads((root / "out" / "metrics.json").read_text())
    assert summary == {k: v for k, v in metrics.items() if k != "videos"}
    assert json.loads((root / "out" / "videos.json").read_text()) == metrics["videos"]
    assert metrics["reference"] == "ground_truth"
    assert metrics["videos"]["with_gt"]["reference"] == "ground_truth"
    assert metrics["videos"]["no_gt"]["reference"] == "teacher"
    for scope in (metrics["aggregate"], metrics["videos"]["with_gt"], metrics["videos"]["no_gt"]):
        assert set(cfg.alignments) <= set(scope)
        for alignment in cfg.alignments:
            assert set(scope[alignment]) == set(METHODS)
    # The teacher is not scored against itself; the students are (AbsRel vs teacher).
    assert "abs_rel" not in metrics["videos"]["no_gt"]["none"]["teacher"]
    assert "abs_rel" in metrics["videos"]["no_gt"]["none"]["student_stream"]
    # Recompute the teacher's AbsRel on the ground-truth video independently.
    stores = (root / "data" / kind / "with_gt.zarr" for kind in ("prepared", "teacher", "flow"))
    video = load_eval_video("with_gt", *stores)
    valid = video.reference_valid & video.teacher_valid
    mask = evaluation_mask(video.reference, valid, max_depth=cfg.max_depth)
    assert not mask[:, 0, :].any()  # padding rows are excluded
    expected = evaluate_sequence(video.teacher, video.reference, mask, max_depth=cfg.max_depth)
    expected = expected.mean["abs_rel"]
    assert metrics["videos"]["with_gt"]["none"]["teacher"]["abs_rel"] == pytest.approx(expected)
    # Only ground-truth videos enter the aggregate AbsRel; temporal metrics average over both videos.
    agg = metrics["aggregate"]["none"]
    assert agg["teacher"]["abs_rel"] == pytest.approx(expected)
    jitters = [metrics["videos"][v]["none"]["teacher"]["jitter_static"] for v in ("with_gt", "no_gt")]
    assert agg["teacher"]["jitter_static"] == pytest.approx(np.mean(jitters))
    jitter = static_jitter(video.teacher, video.static, valid=mask).mean
    assert metrics["videos"]["with_gt"]["none"]["teacher"]["jitter_static"] == pytest.approx(jitter)
    # The flickering teacher jitters more than its ground truth (the floor).
    assert metrics["aggregate"]["floor"]["jitter_static"] < agg["teacher"]["jitter_static"]
    head = metrics["headline"]
    assert head["tae_ratio"] == pytest.approx(agg["student_stream"]["tae"] / agg["teacher"]["tae"])
    abs_rel = {m: agg[m]["abs_rel"] for m in METHODS}
    assert head["abs_rel_ratio"] == pytest.approx(abs_rel["student_stream"] / abs_rel["teacher"])
    assert head["reset_abs_rel_ratio"] == pytest.approx(abs_rel["student_reset"] / abs_rel["teacher"])
    vs_untrained = abs_rel["student_stream"] / abs_rel["student_untrained"]
    assert head["abs_rel_vs_untrained"] == pytest.approx(vs_untrained)
    # The untrained baseline is a fresh student: one constant depth (zero-initialised head), so no flicker.
    assert agg["student_untrained"]["jitter_static"] < 1e-6
    for metric in ("tae", "jitter_static", "abs_rel"):
        assert head[f"{metric}_ok"] == (head[f"{metric}_ratio"] <= head[f"{metric}_target"])
    assert head["all_ok"] == all(head[f"{m}_ok"] for m in ("tae", "jitter_static", "abs_rel"))
    assert metrics["anchoring"]["enabled"] is False


def test_plots_and_images(evaluated):
    root, _, metrics = evaluated
    out = root / "out"
    for curve, x in (("abs_rel", "frame"), ("jitter", "pair"), ("tae", "pair"), ("drift", "frame"),
                     ("change_histogram", "relative_change")):
        with open(out / "plots" / curve / "with_gt.csv") as f:
            rows = list(csv.DictReader(f))
        assert rows and rows[0].keys() >= {x, "student_stream", "student_reset"}, curve
    with open(out / "plots" / "abs_rel" / "with_gt.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == FRAMES
    assert np.mean([float(r["teacher"]) for r in rows]) == pytest.approx(
        metrics["videos"]["with_gt"]["none"]["teacher"]["abs_rel"])
    with open(out / "plots" / "change_histogram" / "with_gt.csv") as f:
        fractions = [float(r["ground_truth"]) for r in csv.DictReader(f)]
    assert sum(fractions) == pytest.approx(1.0)
    names = {p.name for p in (out / "images").iterdir()}
    assert names == {f"{v}_{k}.png" for v in ("with_gt", "no_gt") for k in ("strip", "xt", "xt_log_ratio")}
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
