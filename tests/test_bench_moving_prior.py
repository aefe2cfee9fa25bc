"""The moving-prior bench: its prior, object split and scores have known answers, and it runs end to end."""

import json

import numpy as np
import pytest
from test_evaluate import temporal_model, write_eval_video

from bench import bench_moving_prior as moving
from videomamba_depth.models import save_student
from videomamba_depth.zarrio import open_store, writing_store


def test_prior_distance_is_the_minimiser_of_the_pixel_weighted_relative_error():
    rng = np.random.default_rng(0)
    depth, pixels = rng.uniform(1.0, 3.5, 200), rng.integers(20, 400, 200).astype(float)
    grid = np.linspace(1.0, 3.5, 2501)
    loss = [np.sum(pixels * np.abs(c / depth - 1)) for c in grid]
    c = moving.prior_distance(depth, pixels)
    assert c in depth
    assert np.sum(pixels * np.abs(c / depth - 1)) <= min(loss) + 1e-9
    # Relative error weighs a near object's miss more: the guess sits below the plain weighted median.
    assert c < np.median(np.repeat(depth, pixels.astype(int)))


def test_objects_are_four_connected_components_above_the_size_floor():
    motion = np.zeros((12, 12), bool)
    motion[1:6, 1:6] = True  # 25 pixels
    motion[6:11, 6:11] = True  # touches the first only at a corner: a second object
    motion[0, 11] = True  # a sliver below MIN_PIXELS
    masks = list(moving.object_masks(motion))
    assert [int(m.sum()) for m in masks] == [25, 25]
    assert not (masks[0] & masks[1]).any()


def test_scores_split_an_objects_error_into_level_and_shape():
    truth = np.full((1, 12, 12), 4.0, np.float32)
    truth[0, :5, :5] = 2.0  # object A, 25 pixels at 2 m
    truth[0, 6:11, 6:11] = np.linspace(1.0, 1.5, 25).reshape(5, 5)  # object B, 25 pixels around 1.25 m
    motion = truth < 3.0
    student = truth.copy()
    student[0, :5, :5] = 4.0  # A drawn twice as far, with the right shape
    rows = moving.score_objects(student, truth, motion, np.ones_like(motion), prior=2.0)
    a, b = sorted(rows, key=lambda r: -r["depth"])
    assert (a["pixels"], a["depth"], a["student"]) == (25, 2.0, 4.0)
    assert a["abs_rel_sum"] == pytest.approx(25.0) and a["level_sum"] == pytest.approx(25.0)
    assert a["shape_sum"] == pytest.approx(0.0) and a["prior_sum"] == pytest.approx(0.0)
    assert b["abs_rel_sum"] == b["level_sum"] == b["shape_sum"] == 0.0
    assert b["prior_sum"] == pytest.approx(25 * abs(2.0 / b["depth"] - 1))
    summary = moving.summarise(rows)
    assert summary["moving_abs_rel"] == pytest.approx(25.0 / 50) and summary["shape"] == pytest.approx(0.0)


def test_passer_flag_is_read_from_the_ground_truth_store_the_prepared_store_names(tmp_path):
    for name, passer in (("with", {"distance_m": 1.2}), ("without", None)):
        gt = tmp_path / f"{name}_gt.zarr.zip"
        with writing_store(gt, "ground_truth", {"scene": {"events": {"passer": passer, "near_wall": None}}}):
            pass
        with writing_store(tmp_path / f"{name}.zarr.zip", "prepared", {"ground_truth": str(gt)}):
            pass
    for name, passer in (("with", True), ("without", False)):
        path = tmp_path / f"{name}.zarr.zip"
        assert moving.has_passer(open_store(path, "prepared"), path) is passer
    with writing_store(tmp_path / "real.zarr.zip", "prepared", {}):
        pass
    with pytest.raises(SystemExit, match=r"real\.zarr\.zip: no ground truth"):
        moving.has_passer(open_store(tmp_path / "real.zarr.zip", "prepared"), tmp_path / "real.zarr.zip")


def test_runs_end_to_end_and_writes_the_table_and_scatter(tmp_path, monkeypatch):
    data = tmp_path / "data"
    held_out = ["scene_06", "scene_07", "scene_08", "scene_09"]  # the first of data/evaluate_videos.yaml
    for seed, name in enumerate(held_out):
        write_eval_video(data, name, seed=seed)
    for seed, name in ((101, "train_a"), (102, "train_b")):
        write_eval_video(data, name, seed=seed)
    (tmp_path / "train.yaml").write_text("videos: [train_a, train_b]\n")
    # The fixtures have no synth store behind them: every odd held-out video is said to have a passer.
    monkeypatch.setattr(moving, "has_passer", lambda group, p: p.name[:8] in held_out[1::2])
    checkpoint = tmp_path / "model.safetensors"
    save_student(checkpoint, temporal_model())
    out = tmp_path / "results"
    results = moving.main(["--checkpoint", str(checkpoint), "--data", str(data), "--train-videos",
                           str(tmp_path / "train.yaml"), "--videos", "4", "--threads", "1",
                           "--results", str(out)])
    assert json.loads((out / "bench_moving_prior.json").read_text()) == json.loads(json.dumps(results))
    assert set(results["groups"]) == {"floating", "with_passer"}
    assert results["train_objects"] > 0 and 0.5 < results["prior_m"] < 10
    for s in results["groups"].values():
        assert s["objects"] > 0 and s["prior_abs_rel"] >= 0 and s["moving_abs_rel"] > 0
        # Rescaling each object to its true median can only leave the shape error.
        assert s["shape"] <= s["moving_abs_rel"] + s["level"] + 1e-9
    assert {v["group"] for v in results["per_video"].values()} == {"floating", "with_passer"}
    assert "| floating |" in (out / "bench_moving_prior.md").read_text()
    assert (out / "bench_moving_prior.png").stat().st_size > 0


def test_bad_arguments_are_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        moving.main(["--checkpoint", str(tmp_path / "none.safetensors"), "--results", str(tmp_path)])
    assert "none.safetensors: no such model file" in capsys.readouterr().err
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    (tmp_path / "empty.yaml").write_text("videos: []\n")
    with pytest.raises(SystemExit):
        moving.main(["--checkpoint", str(checkpoint), "--train-videos", str(tmp_path / "empty.yaml")])
    assert "empty.yaml: needs a non-empty `videos` list" in capsys.readouterr().err
    (tmp_path / "train.yaml").write_text("videos: [train_a]\n")
    with pytest.raises(SystemExit, match=r"missing .*scene_06.zarr.zip and 36 more; run `dvc repro eval"):
        moving.main(["--checkpoint", str(checkpoint), "--data", str(tmp_path), "--train-videos",
                     str(tmp_path / "train.yaml"), "--results", str(tmp_path)])
