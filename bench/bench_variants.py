"""Model variants and objectives side by side: the same pre-training budget, image and held-out video metrics.

``python -m bench.bench_variants [--steps 600] [--videos N] [--variants NAME ...] [--data data]``. Each
variant (:data:`VARIANTS`) is params.yaml's ``pretrain`` section and ``train.model`` with a few overrides. For
each, in a temporary directory:

- pre-training by the library (``pretraining.pretrain``) for ``--steps`` steps on the pipeline's image set
  (``<data>/synth_images``: the ``pretrain`` datasets of params.yaml, moved from ``data/`` to ``--data``),
  with one validation after the last step: AbsRel, δ1, RMSE over the validation images vs ground truth;
- those weights stream through the held-out videos of ``evaluate.videos`` (the evaluate stage's inputs,
  ``<data>/{prepared,teacher,flow}``), scored vs ground truth by the evaluate stage's code at its headline
  alignment (``none``): AbsRel, δ1, RMSE, TAE. A pre-trained model's temporal blocks are the identity, so
  this is the per-frame model; only the student is evaluated (no teacher, per-frame or untrained pass).

Every variant runs the same steps with the same seed (the same images in the same order); the step schedule's
``lr_step_size`` is scaled from the ``pretrain.steps`` run to ``--steps`` (all variants get it; only
``lr_step`` uses it). Training wall time is reported too: the same steps cost more for a ViT than for the CNN.
Results: ``bench/results/bench_variants.{json,md}``. Needs the pipeline's outputs (``dvc repro evaluate``).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from bench.common import PARAMS, RESULTS, write_results
from videomamba_depth.config import load_params, load_section
from videomamba_depth.datasets import ImageDatasetConfig, open_image_dataset
from videomamba_depth.devices import cpu_threads, resolve_device
from videomamba_depth.errors import InputError
from videomamba_depth.evaluation import (
    HEADLINE_ALIGNMENT,
    EvaluateConfig,
    EvalVideo,
    load_eval_video,
    predict_video,
    score,
)
from videomamba_depth.inference import StreamingDepth, load_checkpoint
from videomamba_depth.metrics import aggregate
from videomamba_depth.models import ModelConfig
from videomamba_depth.prepare import PrepareConfig
from videomamba_depth.pretraining import PretrainConfig, pretrain
from videomamba_depth.zarrio import PACKED_SUFFIX

# params.yaml's paths of pipeline outputs start with this folder; --data replaces it.
DATA = Path("data")
# The frozen teacher of the distillation variants: the pipeline's pre-trained default student (under --data).
TEACHER_FILE = Path("pretrain/model_best.safetensors")
# Weight of each objective switched on against the baseline (metric_l1 weighs 1, ssi and grad 0.5).
TERM_WEIGHT = 0.5
# A small timm ViT with random weights (nothing can be downloaded here): ViT-Ti/16, 12 blocks, width 192;
# features after blocks 3, 6, 9 and 12, as the default ViT-S/14's; 16 px patches tile the 128 x 96 images.
VIT = {
    "encoder": "timm",
    "timm_name": "vit_tiny_patch16_224",
    "timm_out_indices": [2, 5, 8, 11],
    "timm_pretrained": False,
    "timm_dynamic_img_size": True,
}
# Validation metrics reported (pretraining.loop's val/<name>) and video metrics (evaluation.score's names).
IMAGE_METRICS = ("abs_rel", "delta1", "rmse")
VIDEO_METRICS = ("abs_rel", "delta1", "rmse", "tae")
# Missing inputs named in the error (the rest counted).
SHOWN = 4


@dataclass(frozen=True)
class Variant:
    """What one variant changes in the default ``pretrain`` params and ``train.model``."""

    changed: str  # for the table
    model: dict[str, Any] = field(default_factory=dict)  # train.model keys
    loss: dict[str, Any] = field(default_factory=dict)  # pretrain.loss keys
    pretrain: dict[str, Any] = field(default_factory=dict)  # other pretrain keys
    distil: bool = False  # teacher: student:<data>/TEACHER_FILE, frozen


OBJECTIVES = ("silog", "hdn", "grad_preserve", "shared_context", "local_global")
VARIANTS = {
    "baseline": Variant("none: CNN encoder, `dpt` head, `rays`, default loss, `cosine`, ground truth"),
    "zoe_bins": Variant("`head: zoe_bins`", model={"head": "zoe_bins"}),
    **{term: Variant(f"`loss.{term}: {TERM_WEIGHT}`", loss={term: TERM_WEIGHT}) for term in OBJECTIVES},
    "distil": Variant(f"`teacher: student:{DATA / TEACHER_FILE}` (feature_align's reference)", distil=True),
    "feature_align": Variant(f"as `distil`, plus `loss.feature_align: {TERM_WEIGHT}`",
                             loss={"feature_align": TERM_WEIGHT}, distil=True),
    "lr_step": Variant("`lr_schedule: step`", pretrain={"lr_schedule": "step"}),
    "rays_vit": Variant("encoder: random ViT-Ti/16 (timm), `camera: rays`", model=VIT),
    "tokens_vit": Variant("encoder: random ViT-Ti/16 (timm), `camera: tokens`",
                          model={**VIT, "camera": "tokens"}),
}


def _in_data(root: str, data: Path) -> str:
    """A params path under ``data/`` (a pipeline output) moved under ``data``; any other path as it is."""
    path = Path(root)
    return str(data / path.relative_to(DATA)) if path.is_relative_to(DATA) else root


def configure(
    variant: Variant, params: dict[str, Any], data: Path, steps: int, threads: int | None
) -> tuple[PretrainConfig, ModelConfig]:
    """The pretrain config (``steps`` steps, one validation at the end, no periodic checkpoints or images,
    no resume) and the model config of ``variant``."""
    defaults = params["pretrain"]
    section = {**defaults, **variant.pretrain, "loss": {**defaults["loss"], **variant.loss}}
    if variant.distil:
        section["teacher"] = f"student:{data / TEACHER_FILE}"
    base = PretrainConfig.from_dict(section, where="params.yaml: pretrain (bench_variants)")

    def moved(datasets: tuple[ImageDatasetConfig, ...]) -> tuple[ImageDatasetConfig, ...]:
        return tuple(replace(d, root=_in_data(d.root, data)) for d in datasets)

    config = replace(
        base,
        datasets=moved(base.datasets),
        val_datasets=moved(base.val_datasets),
        steps=steps,
        val_every=steps,
        image_every=0,
        checkpoint_every=0,
        resume=False,
        # The step recipe at the same fractions of the run as in a pretrain.steps run.
        lr_step_size=max(1, round(base.lr_step_size * steps / base.steps)),
        threads=base.threads if threads is None else threads,
    )
    model = ModelConfig.from_dict({**params["train"]["model"], **variant.model},
                                  where="params.yaml: train.model (bench_variants)")
    return config, model


def held_out_stores(data: Path, name: str) -> tuple[Path, Path, Path]:
    """The evaluate stage's prepared, teacher and flow stores of video ``name``."""
    return tuple(data / kind / f"{name}{PACKED_SUFFIX}" for kind in ("prepared", "teacher", "flow"))


def check_inputs(configs: Sequence[PretrainConfig], data: Path, videos: Sequence[str]) -> None:
    """Raise one error naming every missing input, and what makes them."""
    paths = [Path(d.root) / d.split for c in configs for d in (*c.datasets, *c.val_datasets)]
    paths += [Path(c.student_teacher) for c in configs if c.student_teacher is not None]
    paths += [store for name in videos for store in held_out_stores(data, name)]
    missing = [str(p) for p in dict.fromkeys(paths) if not p.exists()]
    if missing:
        more = f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else ""
        raise InputError(f"bench_variants needs the pipeline's outputs under {data}: missing "
                         f"{', '.join(missing[:SHOWN])}{more}; run `dvc repro evaluate` (or pass --data DIR "
                         "holding them)")


def score_videos(checkpoint: Path, videos: Sequence[EvalVideo], config: EvaluateConfig) -> dict[str, dict]:
    """Video name -> the streaming student's :data:`VIDEO_METRICS` vs ground truth at the headline
    alignment, as the evaluate stage computes them for ``student_stream``."""
    if config.device != "cuda":
        torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
    model, _ = load_checkpoint(checkpoint, resolve_device(config.device, "evaluate.device"))
    streaming = StreamingDepth(model, anchoring=config.anchoring)
    scores = {}
    for video in videos:
        means = score(predict_video(streaming, video, "student"), video, HEADLINE_ALIGNMENT,
                      config.settings()).means
        scores[video.name] = {name: means[name] for name in VIDEO_METRICS}
    return scores


def run_variant(
    config: PretrainConfig,
    model: ModelConfig,
    geometry: dict[str, int],
    videos: Sequence[EvalVideo],
    evaluation: EvaluateConfig,
    out_dir: Path,
) -> dict[str, Any]:
    """Pre-train, validate and score one variant: wall seconds of training, image and video metrics."""
    start = time.perf_counter()
    result = pretrain(config, model, geometry, out_dir)
    train_s = time.perf_counter() - start
    # One validation, after the last step: model_best holds the weights the image metrics are of.
    per_video = score_videos(result.best, videos, evaluation)
    return {
        "steps": result.steps,
        "train_s": train_s,
        "image": {name: result.last_validation[f"val/{name}"] for name in IMAGE_METRICS},
        "video": aggregate(list(per_video.values())),
        "per_video": per_video,
    }


def compare(names: Sequence[str], params: dict[str, Any], data: Path, steps: int, videos: int | None,
            threads: int | None, work: Path) -> dict[str, Any]:
    """Run ``names`` of :data:`VARIANTS` (module docstring); returns the results (config and variants)."""
    configs = {name: configure(VARIANTS[name], params, data, steps, threads) for name in names}
    evaluation = load_section(EvaluateConfig, "evaluate", params)
    held_out = evaluation.videos[:videos]
    check_inputs([config for config, _ in configs.values()], data, held_out)
    loaded = [load_eval_video(name, *held_out_stores(data, name)) for name in held_out]
    without_truth = [v.name for v in loaded if v.reference_kind != "ground_truth"]
    if without_truth:
        raise InputError(f"held-out videos {without_truth} have no ground truth in {data / 'prepared'}: this "
                         "bench scores against ground truth (the synthetic set)")
    prepare = load_section(PrepareConfig, "prepare", params)
    geometry = {"long_edge": prepare.long_edge, "pad_multiple": prepare.pad_multiple}
    baseline = configs[names[0]][0]
    image = open_image_dataset(baseline.datasets[0], **geometry)[0]["rgb"]
    results: dict[str, Any] = {
        "config": {
            "steps": steps,
            "batch_size": baseline.batch_size,
            "image_size": f"{image.shape[-1]}x{image.shape[-2]}",
            "lr_step_size": baseline.lr_step_size,
            "train_device": resolve_device(baseline.device, "pretrain.device").type,
            "train_threads": baseline.threads or cpu_threads(1),
            "validation_images": sum(len(open_image_dataset(d, **geometry)) for d in baseline.val_datasets),
            "videos": list(held_out),
            "video_frames": sum(v.num_frames for v in loaded),
            "eval_threads": evaluation.threads or len(os.sched_getaffinity(0)),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs"
            + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
            "torch": torch.__version__,
        },
        "variants": {},
    }
    # One-time costs (lazy initialisation, the image files' first read) paid untimed: not the first variant's.
    first, model = configs[names[0]]
    pretrain(replace(first, steps=1, val_every=1), model, geometry, work / "warm_up")
    for name, (config, model) in configs.items():
        variant = VARIANTS[name]
        results["variants"][name] = {
            "changed": variant.changed,
            "overrides": {"model": variant.model, "loss": variant.loss, "pretrain": variant.pretrain,
                          "teacher": config.teacher},
            **run_variant(config, model, geometry, loaded, evaluation, work / name),
        }
    return results


def markdown(results: dict[str, Any]) -> str:
    """One table, a row per variant, and the budget and machine."""
    c = results["config"]
    rows = [
        "# bench_variants",
        "",
        "| variant | what changed | steps | train s | image AbsRel | δ1 | RMSE | video AbsRel | δ1 | RMSE "
        "| TAE |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["variants"].items():
        image, video = r["image"], r["video"]
        rows.append(
            f"| {name} | {r['changed']} | {r['steps']} | {r['train_s']:.0f} | {image['abs_rel']:.3f} | "
            f"{image['delta1']:.3f} | {image['rmse']:.3f} | {video['abs_rel']:.3f} | {video['delta1']:.3f} | "
            f"{video['rmse']:.3f} | {video['tae']:.2f} |"
        )
    rows += [
        "",
        f"Budget: {c['steps']} pre-training steps of {c['batch_size']} images at {c['image_size']} per "
        f"variant (seed and image order shared; `lr_step_size` {c['lr_step_size']}), on {c['train_device']} "
        f"with {c['train_threads']} threads; image metrics over the {c['validation_images']} validation "
        f"images, video metrics over {len(c['videos'])} held-out videos ({c['video_frames']} frames, "
        f"streamed with {c['eval_threads']} thread(s)), vs ground truth, alignment none, RMSE in m, TAE in "
        "%. `train s` is the wall time of each pre-training run (its steps and one validation): the same "
        "steps are not the same time, a ViT step costs more than a CNN step. Machine: "
        f"{c['machine']}, torch {c['torch']}.",
        "",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA, help="the pipeline's outputs (default: data)")
    parser.add_argument("--steps", type=int, default=600, help="pre-training steps of every variant")
    parser.add_argument("--videos", type=int, default=None,
                        help="the first N of evaluate.videos (default: all)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        metavar="NAME", help=f"any of {', '.join(VARIANTS)} (default: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads for training (default: pretrain.threads; 0: all cores)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the results files")
    args = parser.parse_args(argv)
    if args.steps < 1 or (args.videos is not None and args.videos < 1):
        parser.error("--steps and --videos must be at least 1")
    with tempfile.TemporaryDirectory() as work:
        results = compare(list(dict.fromkeys(args.variants)), load_params(PARAMS), args.data, args.steps,
                          args.videos, args.threads, Path(work))
    write_results("bench_variants", results, markdown(results), args.results)


if __name__ == "__main__":
    from videomamba_depth.errors import run_main

    run_main(main)
