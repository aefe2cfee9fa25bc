"""Temporal SSM benchmark: sequence fast path vs per-frame loop, streaming step latency, state memory.

- Throughput (tokens/s = tokens x frames / s) at N = 8, 64, 512 frames, in one run: the chunked fast path
  (``ssd_scan``, and a whole ``TemporalMambaScale.forward``) against the per-frame reference
  (``ssd_scan_ref``, and a loop of ``TemporalMambaScale.step``), on the coarsest feature scale of a 2-video
  batch (2 x 12 x 16 = 384 tokens). Best of 3 repeats up to N = 64 (robust to other processes on a shared
  machine), one timing at N = 512.
- Step latency: stream 10,000 frames through ``step`` and compare the latency of frames 10-109 with frames
  9,900-9,999 (constant cost per frame: the state does not grow); then, to cancel drifts in machine load,
  time steps from the frame-10 state and from the frame-10,000 state alternately.
- State memory per token (bytes) of a scale, split into conv window and SSM state.

Run: ``python -m bench.bench_ssm`` (about 1.5 minutes on one idle core). Results go to
bench/results/bench_ssm.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bench.common import call_seconds, write_results
from videomamba_depth.ssm import TemporalMambaScale, ssd_scan, ssd_scan_ref

NUM_TOKENS = 2 * 12 * 16  # batch 2, coarsest feature map 12 x 16
SCALE_ARGS = {"dim": 64, "num_blocks": 2, "d_state": 16, "expand": 2, "headdim": 32}  # 4 heads of 32
STREAM_ARGS = {"dim": 32, "num_blocks": 2, "d_state": 16, "expand": 2, "headdim": 16}
STREAM_TOKENS = 64
EARLY_FRAME = 10


def best_seconds(fn: Callable[[], object], repeats: int, warm_up: bool = True) -> float:
    """Minimum wall time of ``repeats`` calls, after one warm-up call if ``warm_up``."""
    return min(call_seconds(fn, repeats, warm_up=int(warm_up)))


def scan_inputs(num_frames: int, nheads: int, headdim: int, d_state: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    shape = (NUM_TOKENS, num_frames)
    return (
        torch.randn(*shape, nheads, headdim, generator=gen),
        F.softplus(torch.randn(*shape, nheads, generator=gen) - 2.0),
        -torch.linspace(1.0, 16.0, nheads),
        torch.randn(*shape, 1, d_state, generator=gen),
        torch.randn(*shape, 1, d_state, generator=gen),
        torch.ones(nheads),
        torch.zeros(NUM_TOKENS, nheads, headdim, d_state),
    )


def random_scale(**args) -> TemporalMambaScale:
    """A scale with non-zero output projections (a fresh one skips nothing, but is the identity)."""
    torch.manual_seed(0)
    scale = TemporalMambaScale(**args)
    with torch.no_grad():
        for block in scale.blocks:
            torch.nn.init.normal_(block.mixer.out_proj.weight, std=0.02)
            torch.nn.init.normal_(block.ffn[-1].weight, std=0.02)
    return scale.eval()


def throughput(frames: list[int], repeats: int) -> list[dict]:
    scale = random_scale(**SCALE_ARGS)
    mixer = scale.blocks[0].mixer
    rows = []
    for num_frames in frames:
        tokens = NUM_TOKENS * num_frames
        inputs = scan_inputs(num_frames, mixer.nheads, mixer.headdim, mixer.d_state)
        x = torch.randn(NUM_TOKENS, num_frames, scale.dim)

        def step_loop(x: torch.Tensor = x) -> None:
            state = None
            for t in range(x.shape[1]):
                _, state = scale.step(x[:, t], state)

        # Long sequences are timed once without a separate warm-up, to keep the run short: they repeat the
        # same per-chunk / per-frame work many times over, which warms them up on the way.
        short = num_frames <= 64
        timing = {"repeats": repeats if short else 1, "warm_up": short}
        with torch.no_grad():
            scan_fast = best_seconds(
                lambda inputs=inputs: ssd_scan(*inputs, chunk_size=mixer.chunk_size), **timing
            )
            scan_ref = best_seconds(lambda inputs=inputs: ssd_scan_ref(*inputs), **timing)
            scale_fast = best_seconds(lambda x=x: scale(x), **timing)
            scale_ref = best_seconds(step_loop, **timing)
        rows.append(
            {
                "num_frames": num_frames,
                "scan_fast_tokens_per_s": tokens / scan_fast,
                "scan_ref_tokens_per_s": tokens / scan_ref,
                "scan_speedup": scan_ref / scan_fast,
                "scale_fast_tokens_per_s": tokens / scale_fast,
                "scale_step_loop_tokens_per_s": tokens / scale_ref,
                "scale_speedup": scale_ref / scale_fast,
            }
        )
        row = rows[-1]
        print(
            f"N={num_frames:4d}  scan: fast {row['scan_fast_tokens_per_s']:9.0f} tok/s, "
            f"ref {row['scan_ref_tokens_per_s']:9.0f} tok/s (x{row['scan_speedup']:.1f})  "
            f"scale: forward {row['scale_fast_tokens_per_s']:9.0f} tok/s, "
            f"step loop {row['scale_step_loop_tokens_per_s']:9.0f} tok/s (x{row['scale_speedup']:.1f})",
            flush=True,
        )
    return rows


def step_latency(num_frames: int, ab_calls: int = 300) -> dict:
    """Stream ``num_frames`` steps, timing each; then time steps from the frame-10 and the final state,
    interleaved (A/B), so that changes in machine load hit both sides alike."""
    scale = random_scale(**STREAM_ARGS)
    gen = torch.Generator().manual_seed(1)
    frame = torch.randn(STREAM_TOKENS, scale.dim, generator=gen)
    state = scale.init_state(STREAM_TOKENS)
    latencies = []
    with torch.no_grad():
        for t in range(num_frames):
            if t == EARLY_FRAME:
                early_state = state.clone()
            start = time.perf_counter()
            _, state = scale.step(frame, state)
            latencies.append(time.perf_counter() - start)
        ab = {"early": [], "late": []}
        for _ in range(ab_calls):
            for name, from_state in (("early", early_state), ("late", state)):
                start = time.perf_counter()
                scale.step(frame, from_state)
                ab[name].append(time.perf_counter() - start)
    result = {
        "num_tokens": STREAM_TOKENS,
        "frames_streamed": num_frames,
        "state_bytes_initial": scale.init_state(STREAM_TOKENS).nbytes,
        "state_bytes_at_end": state.nbytes,
        "interleaved_calls": ab_calls,
    }
    # Frames 10-109 (after warm-up) against the last 100 frames of the stream.
    windows = {"early": (EARLY_FRAME, EARLY_FRAME + 100), "late": (num_frames - 100, num_frames)}
    for name, (start, stop) in windows.items():
        result[name] = {
            "frames": [start, stop - 1],
            "stream_mean_ms": 1e3 * statistics.fmean(latencies[start:stop]),
            "stream_median_ms": 1e3 * statistics.median(latencies[start:stop]),
            "interleaved_median_ms": 1e3 * statistics.median(ab[name]),
        }
    early, late = result["early"], result["late"]
    print(
        f"step latency ({STREAM_TOKENS} tokens), median while streaming: frames {early['frames']} "
        f"{early['stream_median_ms']:.3f} ms, frames {late['frames']} {late['stream_median_ms']:.3f} ms; "
        f"interleaved from the frame-{EARLY_FRAME} / frame-{num_frames} states: "
        f"{early['interleaved_median_ms']:.3f} / {late['interleaved_median_ms']:.3f} ms",
        flush=True,
    )
    return result


def state_memory() -> list[dict]:
    rows = []
    for dim in (64, 128, 256):
        args = {**SCALE_ARGS, "dim": dim}
        state = TemporalMambaScale(**args).init_state(1)
        conv = sum(b.conv.numel() * b.conv.element_size() for b in state.blocks)
        rows.append(
            {
                **args,
                "state_bytes_per_token": state.nbytes,
                "conv_bytes": conv,
                "ssm_bytes": state.nbytes - conv,
            }
        )
    for row in rows:
        print(f"state per token, dim={row['dim']}: {row['state_bytes_per_token']} bytes", flush=True)
    return rows


def markdown(results: dict) -> str:
    lines = [
        "# bench_ssm",
        "",
        f"torch {results['torch']}, {results['threads']} thread(s), load average at start / end "
        f"{results['load_average_at_start']} / {results['load_average_at_end']}. "
        f"Tokens/s = tokens x frames / s, {NUM_TOKENS} tokens, scale {SCALE_ARGS}.",
        "",
        "| N | scan fast (tok/s) | scan per-frame ref (tok/s) | speed-up | scale forward (tok/s) "
        "| scale step loop (tok/s) | speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["throughput"]:
        lines.append(
            f"| {r['num_frames']} | {r['scan_fast_tokens_per_s']:.0f} | {r['scan_ref_tokens_per_s']:.0f} "
            f"| x{r['scan_speedup']:.1f} | {r['scale_fast_tokens_per_s']:.0f} "
            f"| {r['scale_step_loop_tokens_per_s']:.0f} | x{r['scale_speedup']:.1f} |"
        )
    s = results["step_latency"]
    lines += [
        "",
        f"Step latency, {s['num_tokens']} tokens, scale {STREAM_ARGS}, "
        f"{s['frames_streamed']} frames streamed:",
        "",
        "| frames | mean while streaming (ms) | median while streaming (ms) | median, interleaved A/B (ms) |",
        "|---|---:|---:|---:|",
    ]
    for window in (s["early"], s["late"]):
        first, last = window["frames"]
        lines.append(
            f"| {first}-{last} | {window['stream_mean_ms']:.3f} | {window['stream_median_ms']:.3f} "
            f"| {window['interleaved_median_ms']:.3f} |"
        )
    lines += [
        "",
        f"State bytes: {s['state_bytes_initial']} at the start, {s['state_bytes_at_end']} at the end.",
        "",
        "| dim | state bytes per token | conv window | SSM state |",
        "|---:|---:|---:|---:|",
    ]
    for r in results["state_memory"]:
        lines.append(f"| {r['dim']} | {r['state_bytes_per_token']} | {r['conv_bytes']} | {r['ssm_bytes']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, nargs="+", default=[8, 64, 512], help="sequence lengths N")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats up to N = 64 (best is kept)")
    parser.add_argument("--stream", type=int, default=10_000, help="frames streamed for the step latency")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "num_tokens": NUM_TOKENS,
        "scale": SCALE_ARGS,
        "throughput": throughput(args.frames, args.repeats),
        "step_latency": step_latency(args.stream),
        "state_memory": state_memory(),
    }
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_results("bench_ssm", results, markdown(results))


if __name__ == "__main__":
    main()
