"""Student model benchmark (default ``ModelConfig``) on the CPU training budget of 2 threads.

- Parameter counts, total and per part (encoder, camera rays, temporal SSM, decoder).
- Training step cost: forward + backward of a (2, 8, 3, 168, 224) clip in train mode (the prepared size
  224 x 168), best of 5 after a warm-up.
- Clip inference: forward of the same clip without gradients.
- Streaming: ``step`` latency of one 224 x 168 frame (batch 1), mean and median over 50 frames after 5
  warm-up frames; state memory per stream.
- The same for the student with a timm DINOv2 ViT-S/14 encoder (``encoder: timm``, random weights: cost
  does not depend on them), where timm imports.

The temporal blocks' zero-initialised projections are randomised first, so the timed model does the same
work as a trained one. Run: ``python -m bench.bench_model`` (about 2 min). Results go to
bench/results/bench_model.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable

import torch

from bench.common import call_seconds, randomised_student, write_results
from videomamba_depth.models import ModelConfig, VideoMambaDepth, require_timm

CLIP = (2, 8, 3, 168, 224)  # batch, frames, channels, height, width
FOCAL = 170.0  # px, a typical focal of the prepared synthetic frames


def best_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``repeats`` calls after one warm-up call."""
    return min(call_seconds(fn, repeats))


def inputs(batch: int, frames: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (batch, frames, 3, height, width), dtype=torch.uint8, generator=gen)
    K = torch.tensor([[FOCAL, 0.0, (width - 1) / 2], [0.0, FOCAL, (height - 1) / 2], [0.0, 0.0, 1.0]])
    return rgb, K.expand(batch, frames, 3, 3).clone()


def measure(model: VideoMambaDepth, repeats: int) -> dict:
    """Parameters, train fwd + bwd and inference time of ``CLIP``, streaming step latency, state bytes."""
    params = {name: sum(p.numel() for p in part.parameters()) for name, part in model.named_children()}
    params["total"] = sum(p.numel() for p in model.parameters())
    rgb, K = inputs(*CLIP[:2], *CLIP[3:])

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        model(rgb, K).depth.log().mean().backward()

    model.train()
    train_s = best_seconds(train_step, repeats)
    model.eval()
    with torch.no_grad():
        forward_s = best_seconds(lambda: model(rgb, K), repeats)
        frame, K1 = inputs(1, 1, *CLIP[3:])
        states = None
        latencies = []
        for t in range(55):
            start = time.perf_counter()
            _, states = model.step(frame[:, 0], K1[:, 0], states)
            if t >= 5:
                latencies.append(time.perf_counter() - start)
    return {
        "encoder": model.backends["encoder"],
        "params": params,
        "train_forward_backward_s": train_s,
        "train_frames_per_s": CLIP[0] * CLIP[1] / train_s,
        "inference_forward_s": forward_s,
        "step_latency_ms_mean": 1e3 * statistics.mean(latencies),
        "step_latency_ms_median": 1e3 * statistics.median(latencies),
        "state_bytes_per_stream": states.nbytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {
        "torch": torch.__version__,
        "threads": args.threads,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "clip": list(CLIP),
        **measure(randomised_student(ModelConfig()), args.repeats),
    }
    try:
        require_timm()
    except ImportError as exc:
        result["vit_s_encoder"] = {"skipped": f"timm not importable ({exc.__cause__})"}
    else:
        vit = randomised_student(ModelConfig(encoder="timm", timm_pretrained=False))
        result["vit_s_encoder"] = measure(vit, args.repeats)
    print(json.dumps(result, indent=2))
    params = result["params"]
    parts = ", ".join(f"{k} {v / 1e6:.3f} M" for k, v in params.items() if k != "total")
    md = [
        "# bench_model",
        "",
        f"torch {result['torch']}, {args.threads} thread(s), load average at start "
        f"{result['load_average_at_start']}. Default ModelConfig: {params['total'] / 1e6:.3f} M parameters "
        f"({parts}).",
        "",
        "| measurement | default (CNN encoder) | timm ViT-S/14 encoder |",
        "|---|---:|---:|",
    ]
    vit = result["vit_s_encoder"]

    def row(title: str, fmt: Callable[[dict], str]) -> str:
        return f"| {title} | {fmt(result)} | {'n/a' if 'skipped' in vit else fmt(vit)} |"

    md += [
        row("parameters", lambda r: f"{r['params']['total'] / 1e6:.2f} M"),
        row(f"train forward + backward, clip {tuple(CLIP)}",
            lambda r: f"{r['train_forward_backward_s']:.3f} s ({r['train_frames_per_s']:.1f} frames/s)"),
        row("inference forward (no grad), same clip", lambda r: f"{r['inference_forward_s']:.3f} s"),
        row("streaming step, 1 x 3 x 168 x 224, mean / median",
            lambda r: f"{r['step_latency_ms_mean']:.1f} / {r['step_latency_ms_median']:.1f} ms"),
        row("state per stream", lambda r: f"{r['state_bytes_per_stream'] / 2**20:.2f} MiB"),
        "",
    ]
    if "skipped" in vit:
        md.insert(-1, f"ViT-S/14 encoder: {vit['skipped']}.")
    write_results("bench_model", result, "\n".join(md))


if __name__ == "__main__":
    main()
