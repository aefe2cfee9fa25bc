"""The temporal-headroom bench: its causal fusions have known answers on a plane, and it runs end to end."""

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from test_evaluate import temporal_model, write_eval_video

from bench import bench_temporal_headroom as headroom
from videomamba_depth.models import save_student

H, W, FRAMES = 24, 32, 12
K = np.array([[40.0, 0.0, 15.5], [0.0, 40.0, 11.5], [0.0, 0.0, 1.0]])


def plane_video(step: np.ndarray) -> SimpleNamespace:
    """What ``fuse`` reads of a video (``image``, ``pose_c2w``, ``K_eval``) whose camera moves by
    ``step`` ``(3,)`` metres per frame, without rotating."""
    poses = np.tile(np.eye(4), (FRAMES, 1, 1))
    poses[:, :3, 3] = np.arange(FRAMES)[:, None] * step
    return SimpleNamespace(image=np.ones((H, W), bool), pose_c2w=poses, K_eval=np.tile(K, (FRAMES, 1, 1)))


def test_motion_compensation_keeps_a_correct_depth_correct():
    # Walking towards a wall 4 m away at 0.2 m per frame: the truth is the wall at 4 - 0.2 t.
    video = plane_video(np.array([0.0, 0.0, 0.2]))
    truth = np.broadcast_to((4.0 - 0.2 * np.arange(FRAMES))[:, None, None], (FRAMES, H, W)).astype(np.float32)
    warped = headroom.fuse(truth, video, 0.7, "gt_pose", "scale")
    np.testing.assert_allclose(warped, truth, rtol=1e-6)
    # Without it the memory of the farther wall drags the depth back: 0.7 of the log change is held back.
    still = headroom.fuse(truth, video, 0.7, "still", "scale")
    assert still[1, 0, 0] == pytest.approx(3.8 * (4.0 / 3.8) ** 0.7, rel=1e-6)
    np.testing.assert_array_equal(headroom.fuse(truth, video, 0.0, "still", "pixel"), truth)


def test_pixel_memory_damps_flicker_to_the_ema_steady_state_and_gates_jumps():
    # Sideways at fx * 0.1 m / 4 m = 1 pixel per frame past a wall 4 m away; the per-frame output flickers
    # by exp(+-0.08) around the truth (within the gate). A per-pixel EMA of weight 0.5 on the previous fused
    # log depth settles at +-0.08 * (1 - 0.5) / (1 + 0.5): a third of the flicker.
    video = plane_video(np.array([0.1, 0.0, 0.0]))
    flicker = 0.08 * (-1.0) ** np.arange(FRAMES)
    depth = (4.0 * np.exp(flicker)[:, None, None] * np.ones((FRAMES, H, W))).astype(np.float32)
    fused = headroom.fuse(depth, video, 0.5, "gt_pose", "pixel")
    # Column c was uncovered W - 1 - c frames ago: the left ones have the whole video as memory.
    error = np.log(fused[-1, :, : W - FRAMES] / 4.0)
    np.testing.assert_allclose(error, flicker[-1] / 3, atol=1e-3)
    np.testing.assert_allclose(np.log(fused[-1, :, -1] / 4.0), flicker[-1], atol=1e-6)  # just uncovered
    # A change beyond the gate (a disocclusion, a moving object) keeps the current output.
    jump = depth.copy()
    jump[-1] *= np.exp(3 * headroom.GATE)
    np.testing.assert_allclose(headroom.fuse(jump, video, 0.5, "gt_pose", "pixel")[-1], jump[-1], rtol=1e-6)


def test_scale_oracles_remove_the_frame_errors_they_claim():
    # The per-frame output is the truth times exp(a_t): a_t is frame t's scale error, the same on every pixel.
    a = np.array([0.3, -0.1, 0.2, 0.0, 0.4])
    truth = np.linspace(1.0, 5.0, H * W).reshape(H, W)
    reference = np.broadcast_to(truth, (len(a), H, W)).astype(np.float32)
    video = SimpleNamespace(reference=reference, reference_valid=np.ones((len(a), H, W), bool))
    depth = (reference * np.exp(a)[:, None, None]).astype(np.float32)

    def kept_error(oracle: str) -> np.ndarray:
        return np.log(headroom.oracle_scale(depth, video, oracle) / reference).mean(axis=(1, 2))

    np.testing.assert_allclose(kept_error("per-frame"), 0.0, atol=1e-5)
    np.testing.assert_allclose(kept_error("per-video"), a - np.median(a), atol=1e-5)  # the wander is kept
    np.testing.assert_allclose(kept_error("video"), np.full(len(a), a.mean()), atol=1e-5)  # the level is kept
    # Causal: frame t's error becomes the mean of the errors of frames 0..t.
    np.testing.assert_allclose(kept_error("causal"), [0.3, 0.1, 0.4 / 3, 0.1, 0.16], atol=1e-5)
    with pytest.raises(ValueError, match="oracle must be one of"):
        headroom.oracle_scale(depth, video, "future")


def test_unknown_motion_or_mode_is_refused():
    with pytest.raises(ValueError, match="motion must be one of"):
        headroom.fuse(np.ones((2, H, W), np.float32), plane_video(np.zeros(3)), 0.5, "flow", "pixel")


def test_scores_every_variant_and_writes_the_table_and_pictures(tmp_path):
    data = tmp_path / "data"
    for seed, name in ((6, "scene_06"), (7, "scene_07")):  # the first videos of data/evaluate_videos.yaml
        write_eval_video(data, name, seed=seed)
    checkpoint = tmp_path / "model.safetensors"
    save_student(checkpoint, temporal_model())
    out = tmp_path / "results"
    results = headroom.main(["--checkpoint", str(checkpoint), "--data", str(data), "--betas", "0.5",
                             "--videos", "2", "--threads", "1", "--results", str(out)])
    assert json.loads((out / "bench_temporal_headroom.json").read_text()) == json.loads(json.dumps(results))
    labels = ["reset", "stream", *(name for name, *_ in headroom.variant_names([0.5])),
              *(f"gt_scale {oracle}" for oracle in headroom.ORACLES)]
    assert list(results["means"]) == labels and len(labels) == 10
    reset = results["means"]["reset"]
    for metric, ratio in results["ratio_to_reset"]["reset"].items():
        # NaN where there is nothing to compare with: the δ1 of 0 of a random model, a region without pixels
        assert ratio == 1.0 if reset[metric] != 0 and math.isfinite(reset[metric]) else math.isnan(ratio)
    assert results["excess"]["reset"] == {"tae": 1.0, "jitter_static": 1.0}
    assert all(math.isfinite(results["floor"][k]) and results["floor"][k] >= 0 for k in headroom.TEMPORAL)
    table = (out / "bench_temporal_headroom.md").read_text()
    assert "| gt_pose pixel b=0.5 |" in table and "| ground truth (floor) |" in table
    # Every frame's scale taken from the truth cannot be less accurate than the output it corrects.
    assert results["means"]["gt_scale per-frame"]["abs_rel"] <= reset["abs_rel"]
    for picture in ("xt_depth", "xt_log_ratio", "scale"):
        assert (out / f"bench_temporal_headroom_{picture}.png").stat().st_size > 0
    assert set(results["reset_scale_error"]) == {"scene_06", "scene_07"}


def test_bad_arguments_are_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        headroom.main(["--checkpoint", str(tmp_path / "none.safetensors"), "--results", str(tmp_path)])
    assert "none.safetensors: no such model file (run `make repro` first" in capsys.readouterr().err
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    with pytest.raises(SystemExit):
        headroom.main(["--checkpoint", str(checkpoint), "--betas", "1.0", "--results", str(tmp_path)])
    assert "--betas: each must be in [0, 1), got [1.0]" in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r"missing .*scene_06.zarr.zip and 35 more; run `dvc repro eval"):
        headroom.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path), "--results", str(tmp_path)])
