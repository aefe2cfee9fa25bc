"""Training throughput: optimizer steps/s of the default config, data-loader samples/s, peak memory.

``python -m bench.bench_train``. Builds its own inputs with the real pipeline (two short synthetic videos
through synth -> decode -> prepare -> teacher -> flow, in a temporary directory), then times:

- the data loader alone (clips/s, num_workers 0 and 2): it must deliver clips faster than training uses them;
- training steps of the default ``train`` params (model, loss, batch, clip length, chunked BPTT);
- peak resident memory of the training process.

Results: ``bench/results/bench_train.{json,md}``.
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
from torch.utils.data import DataLoader

from bench.common import write_results
from videomamba_depth.config import load_params, load_section
from videomamba_depth.decode import DecodeConfig, decode_video
from videomamba_depth.flow import FlowConfig, compute_flow_store
from videomamba_depth.manifest import VideoEntry, store_path
from videomamba_depth.prepare import PrepareConfig, prepare_video
from videomamba_depth.synth import SynthConfig
from videomamba_depth.synth.export import GT_STORE, write_synth_video
from videomamba_depth.teacher import TeacherConfig, run_teacher
from videomamba_depth.training import ClipDataset, StepPlan, TrainConfig, collate, find_videos, train

VIDEOS = ("bench_a", "bench_b")


def build_inputs(params: dict, frames: int) -> None:
    """Render and process ``VIDEOS`` into ``data/`` of the current directory with the pipeline's params."""
    synth = SynthConfig.from_dict(
        {**params["synth"], "num_frames": [frames, frames], "videos": {v: i for i, v in enumerate(VIDEOS)}},
        "synth",
    )
    for name in VIDEOS:
        source = write_synth_video(Path("data/synth") / name, synth, name)
        entry = VideoEntry(
            str(source / "video.mp4"), str(source / "intrinsics.json"), str(source / GT_STORE)
        )
        decode_video(
            entry, store_path("frames", name), load_section(DecodeConfig, "decode", params), name=name
        )
        prepare_video(
            store_path("frames", name),
            store_path("prepared", name),
            load_section(PrepareConfig, "prepare", params),
            ground_truth=entry.ground_truth,
            name=name,
        )
        run_teacher(
            load_section(TeacherConfig, "teacher", params),
            store_path("prepared", name),
            store_path("teacher", name),
            video=name,
        )
        compute_flow_store(
            store_path("prepared", name),
            store_path("teacher", name),
            store_path("flow", name),
            load_section(FlowConfig, "flow", params),
            video=name,
        )


def loader_rate(cfg: TrainConfig, workers: int, batches: int) -> float:
    """Clips per second delivered by the DataLoader alone (no model)."""
    videos = find_videos(cfg.videos, cfg.val_frames)
    plan = StepPlan(
        videos,
        clip_len=cfg.clip_len,
        clip_stride=cfg.clip_stride,
        batch_size=cfg.batch_size,
        p_single_frame=0.0,
        seed=0,
        steps=batches,
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
    )
    loader = DataLoader(
        ClipDataset(videos, with_flow=cfg.loss.warp > 0),  # what training reads
        batch_sampler=plan,
        collate_fn=collate,
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )
    start = time.perf_counter()
    count = sum(batch["rgb"].shape[0] for batch in loader)
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps (after 5 warm-up steps)")
    parser.add_argument("--frames", type=int, default=40, help="frames per synthetic video")
    args = parser.parse_args(argv)
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    base = replace(
        load_section(TrainConfig, "train", params),
        videos=VIDEOS,
        image_every=0,
        checkpoint_every=0,
        resume=False,
        p_single_frame=0.0,
    )
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            start = time.perf_counter()
            build_inputs(params, args.frames)
            setup_s = time.perf_counter() - start
            first = find_videos(base.videos, base.val_frames)[0]
            frame_size = f"{first.width}x{first.height}"
            rates = {f"loader_clips_per_s_workers_{w}": loader_rate(base, w, 30) for w in (0, 2)}
            warm = replace(base, steps=5, val_every=5, log_every=5)
            start = time.perf_counter()
            train(warm, out_dir=Path("warm"))
            warm_s = time.perf_counter() - start
            timed = replace(base, steps=5 + args.steps, val_every=5 + args.steps, log_every=5 + args.steps)
            start = time.perf_counter()
            train(timed, out_dir=Path("timed"))
            timed_s = time.perf_counter() - start
        finally:
            os.chdir(cwd)
    # The timed run repeats the warm-up run's 5 steps; the difference isolates the per-step cost.
    step_s = (timed_s - warm_s) / args.steps
    clips_per_step = base.batch_size
    results = {
        "config": {
            "batch_size": base.batch_size,
            "clip_len": base.clip_len,
            "chunk_size": base.chunk_size,
            "frame_size": frame_size,
            "threads": torch.get_num_threads(),
            "timed_steps": args.steps,
        },
        "steps_per_s": 1.0 / step_s,
        "clips_per_s_training": clips_per_step / step_s,
        **rates,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "default_run_estimate_s": base.steps * step_s,
        "input_build_s": setup_s,
    }
    md = "\n".join(
        [
            "# bench_train",
            "",
            f"Default `train` params: batch {base.batch_size} clips x {base.clip_len} frames at "
            f"{frame_size}, chunks of {base.chunk_size}, {torch.get_num_threads()} CPU threads.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| training steps/s | {results['steps_per_s']:.2f} |",
            f"| clips/s consumed by training | {results['clips_per_s_training']:.1f} |",
            f"| loader clips/s, in-process (num_workers 0) | {rates['loader_clips_per_s_workers_0']:.1f} |",
            f"| loader clips/s, 2 workers | {rates['loader_clips_per_s_workers_2']:.1f} |",
            f"| peak RSS | {results['peak_rss_mib']:.0f} MiB |",
            f"| default run ({base.steps} steps), training only "
            f"| {results['default_run_estimate_s'] / 60:.1f} min |",
            "",
        ]
    )
    write_results("bench_train", results, md)


if __name__ == "__main__":
    main()
