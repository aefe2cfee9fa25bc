"""Streaming inference benchmark: fps and peak memory over video length, and student vs teacher cost.

1. Streaming: 100, 2,000 and 10,000 frames through the one streaming predictor
   (``inference.StreamingDepth``, the default student: params.yaml's ``train.model`` with randomised
   temporal blocks) and into a sharded Zarr depth store (``zarrio.TimeWriter``), each length in its own
   process so its peak RSS is its own. Frames are generated on the fly cheaply: a pool of ``POOL`` frames of
   one synthetic room is rendered once (``synth.render_frames``, 256 x 192, prepared at params.yaml's
   ``prepare`` geometry, 128 x 96 by default, with the prepare stage's ``resize_pad``), and frame ``t`` is
   pool frame ``t % POOL`` rolled right by ``t // POOL`` pixels, so no two cycles repeat. RSS is sampled with
   psutil every 20 ms. Memory rises while the first output shard fills (``TimeWriter`` buffers one whole
   shard, up to 64 MiB raw, before compressing and writing it), then must stay flat: the slope of peak RSS
   over the lengths of at least one shard (least squares, MiB per 1,000 frames) and the slope of RSS within
   the longest run after its first shard show whether memory grows with length.
2. Per-frame cost, batch 1, each model at its own working resolution, calls alternated (medians): the
   student ``step`` on the prepared frame vs the teacher on that frame. UniDepthV2 resizes every image to
   0.2-0.6 MP (``teacher.resolution_level`` in params.yaml; 518 x 392 at level 0 for 4:3), so the teacher
   is timed there: UniDepthV2 itself when the ``unidepth`` package is installed; otherwise a PROXY with
   random weights: the ViT/14 encoder of the configured ``teacher.weights`` (vits14: width 384, depth 12, 6
   heads; vitb14; vitl14; plain ``torch.nn``), which is only the teacher's backbone (UniDepthV2 adds a
   decoder and camera module, so the real ratio is larger). For the end-to-end ``infer`` numbers see
   ``bench_infer``.

Run: ``python -m bench.bench_stream`` (a few minutes; ``--lengths 100 2000`` for a quick look). Results:
bench/results/bench_stream.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import torch
from torch import nn

from bench.common import default_preprocessing, default_student, write_results
from videomamba_depth.camera import ResizePad
from videomamba_depth.config import load_section
from videomamba_depth.inference import StreamingDepth
from videomamba_depth.inference.intrinsics import unidepth_available
from videomamba_depth.prepare import resize_pad
from videomamba_depth.synth import SynthConfig, render_frames, sample_scene
from videomamba_depth.teacher import TeacherConfig
from videomamba_depth.zarrio import TimeWriter, create_time_array, writing_store

LENGTHS = (100, 2_000, 10_000)  # two of them past the first output shard (1,024 frames at 128 x 96)
POOL = 24  # rendered frames cycled to make any length
SAMPLE_S = 0.02  # RSS sampling period
COST_PAIRS = 15  # timed student/teacher call pairs of the per-frame cost comparison (after 3 warm-up pairs)


def frame_pool() -> tuple[np.ndarray, np.ndarray, ResizePad]:
    """``POOL`` prepared frames ``(POOL, H, W, 3)`` at params.yaml's prepare geometry (256 x 192 rendered ->
    128 x 96 by default), their prepared K ``(3, 3)`` and the geometry."""
    scene = sample_scene(SynthConfig(num_frames=(POOL, POOL), supersample=1), 0)
    frames = list(render_frames(scene))
    rgb = np.stack([f.rgb for f in frames])
    prepare = default_preprocessing()
    geometry = ResizePad.fit(rgb.shape[2], rgb.shape[1], prepare["long_edge"], prepare["pad_multiple"])
    return resize_pad(rgb, geometry), geometry.apply_K(frames[0].K), geometry


def synthetic_frame(pool: np.ndarray, t: int) -> np.ndarray:
    """Frame ``t`` of an endless video: pool frame ``t % POOL`` rolled right by ``t // POOL`` pixels."""
    return np.roll(pool[t % len(pool)], t // len(pool), axis=1)


class RssSampler:
    """Samples this process's RSS every ``SAMPLE_S`` seconds in a thread; ``peak`` in bytes."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def run_length(length: int) -> dict:
    """Stream ``length`` frames through the predictor into a Zarr store (child process body)."""
    pool, K, geometry = frame_pool()
    predictor = StreamingDepth(default_student())
    height, width = pool.shape[1:3]
    rss_curve = []
    with tempfile.TemporaryDirectory() as tmp, RssSampler() as sampler:
        with writing_store(Path(tmp) / "depth.zarr", "depth", {}) as group:
            array = create_time_array(group, "depth", (height, width), "float16", dims=("t", "y", "x"),
                                      units="m", description="benchmark depth")
            with TimeWriter(array) as writer:
                start = time.perf_counter()
                for t in range(length):
                    writer.append(predictor(synthetic_frame(pool, t), K)[None])
                    if t % 100 == 99:
                        rss_curve.append((t + 1, sampler.process.memory_info().rss))
                seconds = time.perf_counter() - start
    return {
        "shard_frames": array.shards[0],
        "frames": length,
        "seconds": seconds,
        "fps": length / seconds,
        "peak_rss_mib": sampler.peak / 2**20,
        "state_bytes": predictor.state_nbytes(),
        "rss_every_100_frames_mib": [[t, rss / 2**20] for t, rss in rss_curve],
        "geometry": geometry.to_attrs(),
    }


# ViT encoders of the UniDepthV2 weights (name -> width, depth, heads), patch 14, MLP 4x (DINOv2 sizes).
VIT_SIZES = {"vits14": (384, 12, 6), "vitb14": (768, 12, 12), "vitl14": (1024, 24, 16)}
# UniDepthV2 resizes every image to an area in this range (pixels), picked by ``resolution_level`` 0..9.
TEACHER_AREA = (0.2e6, 0.6e6)


def teacher_input_size(width: int, height: int, resolution_level: int) -> tuple[int, int]:
    """(W, H) UniDepthV2 runs a ``width`` x ``height`` frame at: the aspect ratio kept, the area the
    ``resolution_level``-th tenth of ``TEACHER_AREA``, both sides rounded to the patch size 14
    (320 x 240 at level 0 -> 518 x 392, as UniDepth documents)."""
    area = TEACHER_AREA[0] + (TEACHER_AREA[1] - TEACHER_AREA[0]) * resolution_level / 10
    h = math.sqrt(area * height / width)
    return 14 * round(h * width / height / 14), 14 * round(h / 14)


class ViTProxy(nn.Module):
    """ViT/14 encoder with random weights (teacher-cost proxy): width, depth and heads of ``size``."""

    def __init__(self, size: str, height: int, width: int) -> None:
        super().__init__()
        dim, depth, heads = VIT_SIZES[size]
        self.patch = nn.Conv2d(3, dim, kernel_size=14, stride=14)
        tokens = (height // 14) * (width // 14) + 1
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        x = torch.cat([self.cls.expand(len(x), -1, -1), x], dim=1) + self.pos
        return self.norm(self.blocks(x))


def interleaved_medians(student: Callable[[], object], teacher: Callable[[], object]) -> dict[str, float]:
    """Median wall and CPU times (ms; CPU = this process's user + system time over all its threads) of
    ``student`` and ``teacher`` calls made alternately, ``COST_PAIRS`` of each after 3 warm-up pairs: a
    change in machine load during the run hits both sides alike."""
    wall: dict[str, list[float]] = {"student": [], "teacher": []}
    cpu: dict[str, list[float]] = {"student": [], "teacher": []}
    for i in range(COST_PAIRS + 3):
        for name, fn in (("student", student), ("teacher", teacher)):
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            if i >= 3:
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    return {f"{name}_{kind}_ms": 1e3 * statistics.median(values[name])
            for kind, values in (("wall", wall), ("cpu", cpu)) for name in ("student", "teacher")}


def per_frame_cost() -> dict:
    """Student step at its working resolution vs the teacher at its own (each as it runs in the pipeline)."""
    pool, K, _ = frame_pool()
    height, width = pool.shape[1:3]
    predictor = StreamingDepth(default_student())
    frames = iter(range(10**9))

    def student_step() -> None:
        predictor(synthetic_frame(pool, next(frames)), K)

    teacher_cfg = load_section(TeacherConfig, "teacher")
    teacher_size = teacher_input_size(width, height, teacher_cfg.resolution_level)
    if unidepth_available():
        from videomamba_depth.teacher.unidepth import UniDepthTeacher

        cfg = TeacherConfig(**{**teacher_cfg.to_dict(), "backend": "unidepth", "device": "cpu"})
        teacher = UniDepthTeacher.from_config(cfg, None)
        teacher_name = f"UniDepthV2 ({teacher.weights}), resizes internally"
        times = interleaved_medians(student_step, lambda: teacher.predict(pool[:1], K[None], np.arange(1)))
    else:
        match = re.search(r"vit[sbl]14", teacher_cfg.weights)
        if match is None:
            raise ValueError(f"params.yaml teacher.weights {teacher_cfg.weights!r}: no ViT size (vits14, "
                             "vitb14, vitl14) in the name to build a cost proxy for")
        size = match.group()
        torch.manual_seed(0)
        vit = ViTProxy(size, teacher_size[1], teacher_size[0]).eval()
        x = torch.rand(1, 3, teacher_size[1], teacher_size[0])
        teacher_name = (f"PROXY: ViT-{size[3].upper()}/14 encoder forward at {teacher_size[0]} x "
                        f"{teacher_size[1]}, random weights, for teacher.weights {teacher_cfg.weights} "
                        "(unidepth not installed; the real teacher adds a decoder and camera module, so it "
                        "costs more)")
        with torch.inference_mode():
            times = interleaved_medians(student_step, lambda: vit(x))
    return {"student_resolution": [width, height], "teacher_resolution": list(teacher_size),
            "threads": torch.get_num_threads(), "teacher": teacher_name, **times,
            "teacher_over_student_wall": times["teacher_wall_ms"] / times["student_wall_ms"],
            "teacher_over_student_cpu": times["teacher_cpu_ms"] / times["student_cpu_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # internal: run one length, print JSON
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child is not None:
        print(json.dumps(run_length(args.child)))
        return
    runs = []
    for length in args.lengths:
        command = [sys.executable, "-m", "bench.bench_stream", "--child", str(length),
                   "--threads", str(args.threads)]
        out = subprocess.run(command, check=True, capture_output=True, text=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{length:>6} frames: {runs[-1]['fps']:.1f} fps, peak RSS {runs[-1]['peak_rss_mib']:.1f} MiB",
              flush=True)
    shard = runs[0]["shard_frames"]
    settled = [r for r in runs if r["frames"] >= shard]
    lengths_k = np.array([r["frames"] for r in settled]) / 1000.0
    peaks = np.array([r["peak_rss_mib"] for r in settled])
    slope = float(np.polyfit(lengths_k, peaks, 1)[0]) if len(settled) > 1 else float("nan")
    longest = max(runs, key=lambda r: r["frames"])
    curve = np.array([p for p in longest["rss_every_100_frames_mib"] if p[0] > shard])
    within = float(np.polyfit(curve[:, 0] / 1000.0, curve[:, 1], 1)[0]) if len(curve) > 1 else float("nan")
    # Cost = CPU time with one thread each (no thread spin-waits for work); latency also at --threads.
    costs = []
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        costs.append(per_frame_cost())
    cost = costs[0]
    result = {
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "frame_source": f"pool of {POOL} rendered frames cycled with a 1 px roll per cycle",
        "runs": runs,
        "peak_rss_slope_mib_per_1000_frames": slope,
        "rss_slope_within_longest_mib_per_1000_frames": within,
        "per_frame_cost": costs,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    width, height = cost["student_resolution"]
    md = [
        "# bench_stream",
        "",
        f"torch {result['torch']}, {args.threads} thread(s), load average at start "
        f"{result['load_average_at_start']}. Default student, {width} x {height} prepared frames, "
        f"`StreamingDepth` + Zarr `TimeWriter` (float16 depth); frames: {result['frame_source']}.",
        "",
        "| frames | fps | peak RSS (MiB) | state (MiB) |",
        "|---:|---:|---:|---:|",
        *(f"| {r['frames']:,} | {r['fps']:.1f} | {r['peak_rss_mib']:.1f} | {r['state_bytes'] / 2**20:.2f} |"
          for r in runs),
        "",
        f"Output shards hold {shard} frames; memory rises while the first one fills. Peak RSS slope over "
        f"the runs of at least one shard (least squares): {slope:+.2f} MiB per 1,000 frames; RSS slope "
        f"within the {longest['frames']:,}-frame run after its first shard: {within:+.2f} MiB per 1,000 "
        "frames.",
        "",
        f"Per-frame cost, batch 1, calls alternated (medians), each model at its own working resolution: "
        f"student step at {width} x {height}, teacher at {cost['teacher_resolution'][0]} x "
        f"{cost['teacher_resolution'][1]} ({cost['teacher']}).",
        "",
        "| torch threads | student wall (ms) | student CPU (ms) | teacher wall (ms) | teacher CPU (ms) | "
        "teacher / student, CPU | teacher / student, wall |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {c['threads']} | {c['student_wall_ms']:.1f} | {c['student_cpu_ms']:.1f} | "
          f"{c['teacher_wall_ms']:.1f} | {c['teacher_cpu_ms']:.1f} | {c['teacher_over_student_cpu']:.0f}x | "
          f"{c['teacher_over_student_wall']:.0f}x |" for c in costs),
        "",
        f"The cost per frame (CPU time, one thread each) is {cost['teacher_over_student_cpu']:.0f}x lower "
        "for the student (goal: >= 50x). With more threads the student's CPU time includes OpenMP threads "
        "spin-waiting: its step is too small to keep them busy.",
        "",
    ]
    write_results("bench_stream", result, "\n".join(md))


if __name__ == "__main__":
    main()
