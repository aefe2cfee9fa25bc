"""Image pre-training throughput: images/s of the default ``pretrain`` params, rendering and loading, memory.

``python -m bench.bench_pretrain``. Builds its own inputs with the real stage code (a small synthetic image
set rendered by ``synth_images`` with the pipeline's ``synth`` params, in a temporary directory), then times:

- rendering of the image set (images/s, ``synth_images.processes`` workers);
- the loader alone: samples/s of ``MixedImageDataset`` (read, resize + pad, augment) and batches/s with
  ``collate_images``, in-process;
- pre-training steps of the default ``pretrain`` params at ``prepare``'s image size (``train.model``), as
  images/s: a 5-step run (model build, one validation) subtracted from a (5 + N)-step one, after an untimed
  run that pays the one-time costs;
- peak resident memory of the process.

Results: ``bench/results/bench_pretrain.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.common import call_seconds, write_results
from videomamba_depth.config import load_params, load_section
from videomamba_depth.datasets import MixedImageDataset, collate_images, open_image_dataset
from videomamba_depth.datasets.mixing import ImageKey
from videomamba_depth.models import ModelConfig
from videomamba_depth.prepare import PrepareConfig
from videomamba_depth.pretraining import PretrainConfig, pretrain
from videomamba_depth.synth.images import SynthImagesConfig, write_synth_images
from videomamba_depth.synth.scene import SynthConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed pre-training steps (after 5 warm-up)")
    parser.add_argument("--images", type=int, default=96, help="training images rendered")
    args = parser.parse_args(argv)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    synth = load_section(SynthConfig, "synth", params)
    images = replace(load_section(SynthImagesConfig, "synth_images", params), count=args.images, val_count=8)
    prepare = load_section(PrepareConfig, "prepare", params)
    geometry = {"long_edge": prepare.long_edge, "pad_multiple": prepare.pad_multiple}
    model = ModelConfig.from_dict(params["train"]["model"], where="params.yaml: train.model")
    base = load_section(PretrainConfig, "pretrain", params)
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            start = time.perf_counter()
            write_synth_images(images, synth, Path("data/synth_images"))
            render_s = time.perf_counter() - start
            dataset = open_image_dataset(base.datasets[0], **geometry)
            mixed = MixedImageDataset([dataset], hflip=base.hflip, color_jitter=base.color_jitter, seed=0)
            keys = [ImageKey(0, i, 0) for i in range(len(dataset))]
            sample_s = min(call_seconds(lambda: [mixed[k] for k in keys], repeats=3)) / len(keys)
            batch = [mixed[k] for k in keys[: base.batch_size]]
            collate_s = min(call_seconds(lambda: collate_images(batch), repeats=5))
            frame_size = "x".join(str(s) for s in reversed(dataset[0]["rgb"].shape[-2:]))
            config = replace(base, image_every=0, checkpoint_every=0, resume=False, log_every=5)
            warm = replace(config, steps=5, val_every=5)
            pretrain(warm, model, geometry, Path("first"))  # one-time costs (kernels, allocator) untimed
            start = time.perf_counter()
            pretrain(warm, model, geometry, Path("warm"))
            warm_s = time.perf_counter() - start
            timed = replace(config, steps=5 + args.steps, val_every=5 + args.steps)
            start = time.perf_counter()
            pretrain(timed, model, geometry, Path("timed"))
            timed_s = time.perf_counter() - start
        finally:
            os.chdir(cwd)
    # The timed run repeats the warm-up run's 5 steps and its one validation: the difference is the steps.
    step_s = (timed_s - warm_s) / args.steps
    results = {
        "config": {
            "batch_size": base.batch_size,
            "frame_size": frame_size,
            "threads": torch.get_num_threads(),
            "timed_steps": args.steps,
            "render_processes": images.processes,
        },
        "render_images_per_s": (images.count + images.val_count) / render_s,
        "loader_samples_per_s": 1.0 / sample_s,
        "collate_ms": 1000 * collate_s,
        "steps_per_s": 1.0 / step_s,
        "images_per_s_training": base.batch_size / step_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "default_run_estimate_s": base.steps * step_s,
    }
    md = "\n".join(
        [
            "# bench_pretrain",
            "",
            f"Default `pretrain` params: batch {base.batch_size} images at {frame_size} (prepare long edge "
            f"{prepare.long_edge}, pad {prepare.pad_multiple}), {torch.get_num_threads()} CPU threads.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| synthetic image rendering, {images.processes} processes | "
            f"{results['render_images_per_s']:.1f} images/s |",
            f"| loader (read, resize + pad, augment), in-process | {results['loader_samples_per_s']:.0f} "
            "samples/s |",
            f"| collate a batch of {base.batch_size} | {results['collate_ms']:.2f} ms |",
            f"| pre-training | {results['steps_per_s']:.2f} steps/s, "
            f"{results['images_per_s_training']:.1f} images/s |",
            f"| peak RSS | {results['peak_rss_mib']:.0f} MiB |",
            f"| default run ({base.steps} steps), training only | "
            f"{results['default_run_estimate_s'] / 60:.1f} min |",
            "",
        ]
    )
    write_results("bench_pretrain", results, md)


if __name__ == "__main__":
    main()
