"""ONNX export benchmark: onnxruntime vs PyTorch per-frame latency of the streaming step (CPU), and parity.

The default student (``ModelConfig()``, zero-initialised projections randomised as in ``bench_model``) is
exported at the prepared size 224 x 168 (``export.export_onnx``, fixed size) and both runtimes stream the same
200-frame synthetic video (a texture panning a pixel a frame), carrying their states, with the same number of
threads, interleaved frame by frame (so a busy machine slows both alike). One thread by default: on a shared
2-core machine two threads per runtime oversubscribe the cores and the timings become noise. Reported:
export time, median / mean step latency after 5 warm-up frames, and the largest depth
difference over all frames (metres, and relative to the largest depth).

Run: ``python -m bench.bench_export`` (about a minute). Results go to bench/results/bench_export.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.bench_model import randomised_model
from bench.common import write_results
from videomamba_depth.export import OnnxStreamingDepth, export_onnx
from videomamba_depth.models import ModelConfig

HEIGHT, WIDTH = 168, 224
WARM_UP = 5


def video(frames: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (HEIGHT, WIDTH + frames, 3), dtype=np.uint8)
    rgb = np.stack([texture[:, t : t + WIDTH] for t in range(frames)])
    K = np.array([[170.0, 0.0, (WIDTH - 1) / 2], [0.0, 170.0, (HEIGHT - 1) / 2], [0.0, 0.0, 1.0]], np.float32)
    return rgb, K


def interleaved(steps: dict[str, Callable[[np.ndarray], np.ndarray]], rgb: np.ndarray) -> dict[str, tuple]:
    """Each runtime's depths of every frame, and its seconds per call after the warm-up; the runtimes take
    turns on every frame."""
    depths: dict[str, list] = {name: [] for name in steps}
    times: dict[str, list] = {name: [] for name in steps}
    for t, frame in enumerate(rgb):
        for name, step in steps.items():
            start = time.perf_counter()
            depths[name].append(step(frame))
            if t >= WARM_UP:
                times[name].append(time.perf_counter() - start)
    return {name: (np.stack(depths[name]), times[name]) for name in steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--frames", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = randomised_model(ModelConfig()).eval()
    rgb, K = video(args.frames)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "step.onnx"
        start = time.perf_counter()
        export_onnx(model, path, height=HEIGHT, width=WIDTH)
        export_s = time.perf_counter() - start
        onnx_bytes = path.stat().st_size
        runner = OnnxStreamingDepth(path, threads=args.threads)
        K_t = torch.from_numpy(K)[None]
        state = {"s": None}

        @torch.inference_mode()
        def torch_step(frame: np.ndarray) -> np.ndarray:
            depth, state["s"] = model.step(torch.from_numpy(frame).permute(2, 0, 1)[None], K_t, state["s"])
            return depth[0].numpy()

        runs = interleaved({"torch": torch_step, "onnx": lambda frame: runner(frame, K)}, rgb)
    (torch_depth, torch_times), (onnx_depth, onnx_times) = runs["torch"], runs["onnx"]
    diff = np.abs(onnx_depth - torch_depth)
    result = {
        "torch": torch.__version__,
        "onnxruntime": runner.session.get_providers(),
        "threads": args.threads,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "frames": args.frames,
        "size_hw": [HEIGHT, WIDTH],
        "export_s": export_s,
        "onnx_bytes": onnx_bytes,
        "torch_step_ms_median": 1e3 * statistics.median(torch_times),
        "torch_step_ms_mean": 1e3 * statistics.mean(torch_times),
        "onnx_step_ms_median": 1e3 * statistics.median(onnx_times),
        "onnx_step_ms_mean": 1e3 * statistics.mean(onnx_times),
        "onnx_over_torch_median": statistics.median(onnx_times) / statistics.median(torch_times),
        "max_abs_depth_diff_m": float(diff.max()),
        "max_rel_depth_diff": float(diff.max() / np.abs(torch_depth).max()),
    }
    r = result
    md = "\n".join([
        "# bench_export",
        "",
        f"Default student, streaming step at {WIDTH} x {HEIGHT}, {args.frames} frames, {args.threads} "
        f"thread(s) each, torch {r['torch']}, load average at start {r['load_average_at_start']}. Export "
        f"{r['export_s']:.1f} s, {r['onnx_bytes'] / 2**20:.2f} MiB.",
        "",
        "| runtime | step median / mean |",
        "|---|---:|",
        f"| PyTorch (`model.step`) | {r['torch_step_ms_median']:.1f} / {r['torch_step_ms_mean']:.1f} ms |",
        f"| onnxruntime (CPU) | {r['onnx_step_ms_median']:.1f} / {r['onnx_step_ms_mean']:.1f} ms |",
        "",
        f"onnxruntime / PyTorch median step time: {r['onnx_over_torch_median']:.2f}.",
        "",
        f"Parity over {args.frames} frames, states carried: max |depth difference| "
        f"{r['max_abs_depth_diff_m']:.2e} m ({r['max_rel_depth_diff']:.2e} of the largest depth).",
        "",
    ])
    write_results("bench_export", result, md)


if __name__ == "__main__":
    main()
