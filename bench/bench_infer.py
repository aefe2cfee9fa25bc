"""End-to-end ``videomamba-depth infer`` benchmark: decode -> depth store at the original resolution.

Runs the real ``infer_video`` (the code behind ``videomamba-depth infer``) on 960 x 540 H.264 videos that
the bench renders (``LENGTHS`` frames of one synthetic room, rendered at 256 x 192, enlarged, each frame
shifted so no two are equal), and on any clips given with ``--video``: every length without the preview,
the first length (and each clip) with ``--preview`` too. Each pass runs in its own process, so its peak RSS
is its own: equal peaks at 300 and 1,200 frames show that memory does not grow with the video. The student
is the default one: params.yaml's ``train.model`` with random weights and randomised temporal blocks,
saved with params.yaml's ``prepare`` geometry (what ``make repro``'s student is trained with and so what
``infer`` runs it at; 128 / 32: 960 x 540 -> 128 x 72, padded to 128 x 96).

Reports the frames/s of the model step alone (the ceiling: prepared frames in memory, nothing written),
then of the whole pass (first decoded frame to committed outputs; model loading and the
intrinsics assumption excluded), peak RSS, and the busy milliseconds per frame of every pipeline stage
(decode, preprocess, model, upsample, write, points, preview). Stages run in three overlapping threads, so
their sum exceeds the wall time per frame; ``overlap`` = sum / wall shows how much the pipelining buys.

Run: ``python -m bench.bench_infer`` (about a minute; ``--lengths``, ``--threads``, ``--video CLIP ...``).
Results: bench/results/bench_infer.{json,md}. Absolute numbers need a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.bench_stream import RssSampler
from bench.common import call_seconds, default_preprocessing, default_student, write_results
from videomamba_depth.camera import ResizePad
from videomamba_depth.inference import StreamingDepth, load_checkpoint
from videomamba_depth.inference.infer import STAGES, InferConfig, default_threads, infer_video
from videomamba_depth.inference.intrinsics import K_from_hfov
from videomamba_depth.models import save_student
from videomamba_depth.prepare import resize_pad
from videomamba_depth.synth import SynthConfig, render_frames, sample_scene
from videomamba_depth.video.reader import open_video
from videomamba_depth.video.writer import write_mp4

WIDTH, HEIGHT = 960, 540
LENGTHS = (300, 1200)  # frames of the synthetic videos: peak RSS must not grow with the length
MODEL_ONLY_FRAMES = 60  # frames of the model-alone timing (held in memory at the original size)
POOL = 24  # rendered frames cycled (with a growing shift) to make any length
TARGET_FPS = {"depth store": 30.0, "depth store + preview": 20.0}  # issue 14, on the 2-core machine


def synthetic_video(path: Path, frames: int) -> Path:
    """A 960 x 540 H.264 video: rendered frames enlarged, frame ``t`` shifted right by ``t`` pixels."""
    scene = sample_scene(SynthConfig(num_frames=(POOL, POOL), supersample=1), 0)
    pool = [cv2.resize(f.rgb, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR) for f in render_frames(scene)]
    write_mp4(path, (np.roll(pool[t % POOL], t, axis=1) for t in range(frames)), fps=30)
    return path


def run(video: Path, model: Path, out_dir: Path, threads: int | None, preview: bool) -> dict:
    config = InferConfig(device="cpu", threads=threads, hfov_deg=60.0)
    with RssSampler() as sampler:
        result = infer_video(video, model, out_dir / "depth.zarr", config,
                             preview=out_dir / "preview.mp4" if preview else None, force=True)
    per_frame = {k: 1e3 * v / result.num_frames for k, v in result.stage_seconds.items()}
    wall_ms = 1e3 / result.fps
    return {
        "video": video.name,
        "what": "depth store + preview" if preview else "depth store",
        "frames": result.num_frames,
        "fps": result.fps,
        "threads": result.threads,
        "peak_rss_mib": sampler.peak / 2**20,
        "wall_ms_per_frame": wall_ms,
        "stage_ms_per_frame": per_frame,
        "overlap": sum(per_frame.values()) / wall_ms,
    }


def run_child(video: Path, model: Path, out_dir: Path, threads: int | None, preview: bool) -> dict:
    """``run`` in a fresh process, so its peak RSS is its own (not that of an earlier, longer run)."""
    command = [sys.executable, "-m", "bench.bench_infer", "--child", str(video), str(model), str(out_dir)]
    command += ["--threads", str(threads)] if threads else []
    command += ["--preview"] if preview else []
    out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def model_only(video: Path, model: Path, threads: int | None, frames: int = MODEL_ONLY_FRAMES) -> dict:
    """Frames/s of the student step alone on the video's first ``frames`` prepared frames (decoded and
    prepared beforehand, nothing written), with infer's thread setting: the ceiling of the end-to-end rate."""
    torch.set_num_threads(threads or default_threads())
    student_model, info = load_checkpoint(model)
    with open_video(video, "pyav") as source:
        geometry = ResizePad.fit(*source.size, info["preprocessing"]["long_edge"],
                                 info["preprocessing"]["pad_multiple"])
        rgb = next(source.iter_batches(frames))
    prepared = resize_pad(rgb, geometry)
    K = geometry.apply_K(K_from_hfov(*source.size, 60.0))
    predictor = StreamingDepth(student_model)
    seconds = sum(call_seconds(lambda: [predictor(f, K) for f in prepared], 1, warm_up=1))
    return {"video": video.name, "frames": len(prepared), "fps": len(prepared) / seconds,
            "size": list(geometry.padded_size)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS),
                        help="frames of the synthetic videos (the first is also run with --preview)")
    parser.add_argument("--threads", type=int, help="torch threads (default: infer's default)")
    parser.add_argument("--video", nargs="*", default=[], help="also run on these clips")
    parser.add_argument("--child", nargs=3, type=Path, help=argparse.SUPPRESS)  # internal: VIDEO MODEL OUT
    parser.add_argument("--preview", action="store_true", help=argparse.SUPPRESS)  # with --child
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(run(*args.child, args.threads, args.preview)))
        return
    preprocessing = default_preprocessing()
    runs, ceilings = [], []
    with tempfile.TemporaryDirectory(prefix="bench_infer_") as tmp:
        tmp = Path(tmp)
        model = tmp / "student.safetensors"
        save_student(model, default_student(), preprocessing)
        synthetic = [synthetic_video(tmp / f"synthetic_{WIDTH}x{HEIGHT}_{n}.mp4", n) for n in args.lengths]
        # (video, with preview): every synthetic length without; the first length and each clip with too.
        plan = [(v, False) for v in synthetic] + [(synthetic[0], True)]
        plan += [(Path(v), p) for v in args.video for p in (False, True)]
        for video in [synthetic[0], *map(Path, args.video)]:
            ceilings.append(model_only(video, model, args.threads))
            print(f"{video.name} model step alone: {ceilings[-1]['fps']:.1f} frames/s", flush=True)
        for video, preview in plan:
            runs.append(run_child(video, model, tmp, args.threads, preview))
            r = runs[-1]
            print(f"{r['video']} {r['what']}: {r['fps']:.1f} frames/s, {r['threads']} torch thread(s), "
                  f"peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    result = {
        "torch": torch.__version__,
        "cpu_cores": os.cpu_count(),
        "default_threads": default_threads(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "size": [WIDTH, HEIGHT],
        "preprocessing": preprocessing,
        "targets_fps": TARGET_FPS,
        "model_step_alone": ceilings,
        "runs": runs,
    }
    write_results("bench_infer", result, markdown(result))


def markdown(result: dict) -> str:
    header = "| video | outputs | frames | frames/s | target | peak RSS (MiB) | " + " | ".join(STAGES)
    lines = [
        "# bench_infer",
        "",
        f"`videomamba-depth infer` end to end (decode -> float16 depth store at the original resolution), "
        f"torch {result['torch']}, {result['cpu_cores']} cores, load average at start "
        f"{result['load_average_at_start']}; default student at long edge "
        f"{result['preprocessing']['long_edge']}. Stage columns: busy ms per frame (three overlapping "
        "threads: decode + preprocess | model | upsample + write + points + preview).",
        "",
        header + " | wall ms | overlap |",
        "|---|---|---:|---:|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|",
    ]
    for r in result["runs"]:
        target = result["targets_fps"].get(r["what"])
        stages = " | ".join(f"{r['stage_ms_per_frame'][s]:.1f}" for s in STAGES)
        lines.append(
            f"| {r['video']} | {r['what']} | {r['frames']} | {r['fps']:.1f} | "
            f"{'' if target is None else f'>= {target:.0f}'} | {r['peak_rss_mib']:.0f} | {stages} | "
            f"{r['wall_ms_per_frame']:.1f} | {r['overlap']:.2f} |"
        )
    alone = "; ".join(f"{c['video']} {c['fps']:.1f} frames/s at {c['size'][0]} x {c['size'][1]}"
                      for c in result["model_step_alone"])
    lines += ["", "Model step alone (same threads, prepared frames in memory, nothing written), the ceiling "
              f"of the end-to-end rate: {alone}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
