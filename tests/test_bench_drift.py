"""The long-video drift bench: its per-frame errors have known answers, and it runs end to end."""

import csv
import json
import math

import numpy as np
import pytest
from training_fixtures import tiny_model_config

from bench import bench_drift
from videomamba_depth.evaluation.pipeline import EvaluateConfig
from videomamba_depth.models import build_student, save_student


def test_frame_errors_known_answers():
    gt = np.random.default_rng(0).uniform(1.0, 5.0, (3, 6, 8))
    pred = gt * np.array([1.1, 1.0, 0.5])[:, None, None]
    scored_as = EvaluateConfig(videos=["held_out"])  # the evaluate stage's depth range
    scale, abs_rel = bench_drift.frame_errors(pred.astype(np.float16), gt, scored_as)
    np.testing.assert_allclose(scale, [1 / 1.1, 1.0, 2.0], rtol=2e-3)  # float16 predictions, as stored
    np.testing.assert_allclose(abs_rel, [0.1, 0.0, 0.5], atol=2e-3)


def test_streams_a_rendered_video_and_writes_the_curve(tmp_path):
    checkpoint = tmp_path / "model.safetensors"
    save_student(checkpoint, build_student(tiny_model_config()), {"long_edge": 64, "pad_multiple": 16})
    results = bench_drift.main(["--checkpoint", str(checkpoint), "--frames", "10", "--threads", "1",
                                "--results", str(tmp_path / "results")])
    saved = json.loads((tmp_path / "results" / "bench_drift.json").read_text())
    assert saved == json.loads(json.dumps(results)) and saved["frames"] == 10
    assert all(math.isfinite(saved[k]) for k in ("scale_spread", "abs_rel", "abs_rel_first_10pct",
                                                 "abs_rel_last_10pct"))
    with open(tmp_path / "results" / "bench_drift.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == list(range(10))
    spread = np.std([float(r["scale"]) for r in rows]) / np.mean([float(r["scale"]) for r in rows])
    assert spread == pytest.approx(saved["scale_spread"], rel=1e-3)
    assert (tmp_path / "results" / "bench_drift.png").stat().st_size > 0


def test_missing_model_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_drift.main(["--checkpoint", str(tmp_path / "none.safetensors"), "--results", str(tmp_path)])
    assert "none.safetensors: no such model file (run `make repro` first" in capsys.readouterr().err
