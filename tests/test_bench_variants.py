"""bench.bench_variants: the whole command on tiny pipeline outputs (2 steps), and its missing-data error."""

import importlib.util
import json
import math

import pytest
from test_evaluate import write_eval_video
from test_pretrain import write_image_set
from training_fixtures import tiny_model_config

from bench import bench_variants
from videomamba_depth.errors import InputError
from videomamba_depth.models import build_student, save_student

# A CNN variant, the distillation one (teacher file, feature projector) and, where timm imports, a ViT.
NAMES = ["baseline", "feature_align"] + (["tokens_vit"] if importlib.util.find_spec("timm") else [])


def test_one_row_per_variant_with_finite_image_and_video_metrics(tmp_path):
    data = tmp_path / "data"
    write_image_set(data / "synth_images", count=10, seed=0)  # 8 training images (one batch), 2 validation
    write_eval_video(data, "scene_06", seed=6)  # the first of data/evaluate_videos.yaml
    write_eval_video(data, "scene_07", seed=7)
    save_student(data / "pretrain" / "model_best.safetensors", build_student(tiny_model_config()))
    argv = ["--data", str(data), "--steps", "2", "--videos", "1", "--threads", "1", "--results",
            str(tmp_path / "results"), "--variants", *NAMES]
    bench_variants.main(argv)

    results = json.loads((tmp_path / "results" / "bench_variants.json").read_text())
    assert list(results["variants"]) == NAMES
    assert results["config"]["videos"] == ["scene_06"] and results["config"]["validation_images"] == 2
    for name, row in results["variants"].items():
        assert row["steps"] == 2 and row["train_s"] > 0, name
        assert set(row["per_video"]) == {"scene_06"}, name
        values = [*row["image"].values(), *row["video"].values()]
        assert len(values) == 7 and all(math.isfinite(v) for v in values), (name, values)
    teacher = f"student:{data / 'pretrain' / 'model_best.safetensors'}"
    assert results["variants"]["feature_align"]["overrides"]["teacher"] == teacher
    assert results["variants"]["baseline"]["overrides"]["teacher"] == "none"
    table = (tmp_path / "results" / "bench_variants.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in table if line.startswith("| ")] == [
        "| variant", *(f"| {n}" for n in NAMES)
    ]


def test_missing_pipeline_outputs_name_what_to_run(tmp_path):
    with pytest.raises(InputError, match=r"synth_images/train.txt.*dvc repro evaluate"):
        bench_variants.main(["--data", str(tmp_path / "none"), "--variants", "baseline", "--results",
                             str(tmp_path / "results")])
    assert not (tmp_path / "results").exists()
