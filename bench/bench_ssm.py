"""Temporal SSM benchmark: sequence fast paths vs per-frame loop, streaming step latency, state memory.

- Throughput (tokens/s = tokens x frames / s) at N = 8, 64, 512 frames, in one run: the two sequence fast
  paths, the chunked torch scan (``ssd_scan``) and the fused CPU kernel (``ssd_scan_numba``, the ``numba``
  backend), and whole ``TemporalMambaScale.forward`` calls on each backend, against the per-frame reference
  (``ssd_scan_ref``, and a loop of ``TemporalMambaScale.step``), on the coarsest feature scale of a 2-video
  batch (2 x 12 x 16 = 384 tokens). Best of 3 interleaved rounds up to N = 64 (every method once per round,
  so a change of load on a shared machine hits all of them), one timing at N = 512. Up to N = 64, also
  training-like calls (forward, then gradients to every input) on each scan. The target: a sequence scan
  >= 5x the per-frame loop at N = 64 (``TARGET_SPEEDUP``), printed and written with the results.
- Step latency: stream 10,000 frames through ``step`` and compare the latency of frames 10-109 with frames
  9,900-9,999 (constant cost per frame: the state does not grow); then, to cancel drifts in machine load,
  time steps from the frame-10 state and from the frame-10,000 state alternately.
- State memory per token (bytes) of a scale, split into conv window and SSM state.

Run: ``python -m bench.bench_ssm`` (about 2 minutes on one idle core). Results go to
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
from videomamba_depth.ssm import TemporalMambaScale, ssd_scan, ssd_scan_numba, ssd_scan_ref

NUM_TOKENS = 2 * 12 * 16  # batch 2, coarsest feature map 12 x 16
SCALE_ARGS = {"dim": 64, "num_blocks": 2, "d_state": 16, "expand": 2, "headdim": 32}  # 4 heads of 32
STREAM_ARGS = {"dim": 32, "num_blocks": 2, "d_state": 16, "expand": 2, "headdim": 16}
STREAM_TOKENS = 64
EARLY_FRAME = 10
# The sequence scan must beat the per-frame loop by this factor at this length (1 thread).
TARGET_SPEEDUP = 5.0
TARGET_FRAMES = 64


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


def interleaved_best(fns: dict[str, Callable[[], object]], repeats: int, warm_up: bool) -> dict[str, float]:
    """Minimum wall time of each function over ``repeats`` rounds that call every function once in turn:
    a change of machine load hits all of them alike, so their ratios stay fair on a shared machine."""
    if warm_up:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(best_seconds(fn, 1, warm_up=False))
    return {name: min(t) for name, t in times.items()}


def forward_backward(scan: Callable[..., tuple], inputs: tuple) -> Callable[[], None]:
    """A training-like call: the scan, then the gradients of ``y.sum() + state.sum()`` to every input."""
    leaves = [t.clone().requires_grad_() for t in inputs]

    def call() -> None:
        y, state = scan(*leaves)
        torch.autograd.grad(y.sum() + state.sum(), leaves)

    return call


def throughput(frames: list[int], repeats: int, backward_frames: int) -> list[dict]:
    scale = random_scale(**SCALE_ARGS)
    numba_scale = random_scale(**SCALE_ARGS, backend="numba")  # the same weights (same seed)
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
            seconds = interleaved_best(
                {
                    "scan_chunked": lambda inputs=inputs: ssd_scan(*inputs, chunk_size=mixer.chunk_size),
                    "scan_numba": lambda inputs=inputs: ssd_scan_numba(*inputs),
                    "scan_ref": lambda inputs=inputs: ssd_scan_ref(*inputs),
                    "scale_torch": lambda x=x: scale(x),
                    "scale_numba": lambda x=x: numba_scale(x),
                    "scale_step_loop": step_loop,
                },
                **timing,
            )
        row = {"num_frames": num_frames}
        for name, value in seconds.items():
            row[f"{name}_tokens_per_s"] = tokens / value
        for fast in ("scan_chunked", "scan_numba"):
            row[f"{fast}_speedup"] = seconds["scan_ref"] / seconds[fast]
        for fast in ("scale_torch", "scale_numba"):
            row[f"{fast}_speedup"] = seconds["scale_step_loop"] / seconds[fast]
        if num_frames <= backward_frames:
            # Training: forward + backward (autograd through the loop / the chunked form; numba's own).
            train = interleaved_best(
                {
                    name: forward_backward(scan, inputs)
                    for name, scan in (
                        ("chunked", lambda *a: ssd_scan(*a, chunk_size=mixer.chunk_size)),
                        ("numba", ssd_scan_numba),
                        ("ref", ssd_scan_ref),
                    )
                },
                repeats=repeats,
                warm_up=True,
            )
            row["train_ms"] = {name: 1e3 * value for name, value in train.items()}
        rows.append(row)
        print(
            f"N={num_frames:4d}  scan: chunked {row['scan_chunked_tokens_per_s']:9.0f} tok/s "
            f"(x{row['scan_chunked_speedup']:.1f}), numba {row['scan_numba_tokens_per_s']:9.0f} tok/s "
            f"(x{row['scan_numba_speedup']:.1f}), per-frame ref {row['scan_ref_tokens_per_s']:9.0f} tok/s  "
            f"scale: torch x{row['scale_torch_speedup']:.1f}, numba x{row['scale_numba_speedup']:.1f} "
            f"the step loop" + (f"  train (fwd+bwd) ms: {row['train_ms']}" if "train_ms" in row else ""),
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


def scan_target(rows: list[dict]) -> dict:
    """Each sequence scan's speed-up over the per-frame loop at ``TARGET_FRAMES``, vs ``TARGET_SPEEDUP``."""
    row = next((r for r in rows if r["num_frames"] == TARGET_FRAMES), None)
    results = {} if row is None else {
        name: (row[f"scan_{name}_speedup"], row[f"scan_{name}_speedup"] >= TARGET_SPEEDUP)
        for name in ("chunked", "numba")
    }
    for name, (value, ok) in results.items():
        print(f"target x{TARGET_SPEEDUP:.0f} at N={TARGET_FRAMES}: {name} x{value:.2f} "
              f"({'met' if ok else 'not met'})", flush=True)
    return {"num_frames": TARGET_FRAMES, "speedup": TARGET_SPEEDUP, "results": results}


def markdown(results: dict) -> str:
    lines = [
        "# bench_ssm",
        "",
        f"torch {results['torch']}, {results['threads']} thread(s), load average at start / end "
        f"{results['load_average_at_start']} / {results['load_average_at_end']}. "
        f"Tokens/s = tokens x frames / s, {NUM_TOKENS} tokens, scale {SCALE_ARGS}.",
        "",
        "| N | scan chunked, torch (tok/s) | scan fused, numba (tok/s) | scan per-frame ref (tok/s) "
        "| chunked speed-up | numba speed-up | scale forward torch / numba (tok/s) | scale step loop (tok/s) "
        "| speed-up torch / numba |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["throughput"]:
        lines.append(
            f"| {r['num_frames']} | {r['scan_chunked_tokens_per_s']:.0f} "
            f"| {r['scan_numba_tokens_per_s']:.0f} | {r['scan_ref_tokens_per_s']:.0f} "
            f"| x{r['scan_chunked_speedup']:.1f} "
            f"| x{r['scan_numba_speedup']:.1f} | {r['scale_torch_tokens_per_s']:.0f} / "
            f"{r['scale_numba_tokens_per_s']:.0f} | {r['scale_step_loop_tokens_per_s']:.0f} "
            f"| x{r['scale_torch_speedup']:.1f} / x{r['scale_numba_speedup']:.1f} |"
        )
    target = results["target"]
    lines += [
        "",
        f"Target: a sequence scan >= x{target['speedup']:.0f} the per-frame loop at "
        f"N = {target['num_frames']}: " + ", ".join(f"{name} x{value:.1f} ({'met' if ok else 'not met'})"
                    for name, (value, ok) in target["results"].items()) + ".",
        "",
        "Training-like calls (scan forward, then gradients to every input), milliseconds:",
        "",
        "| N | chunked, torch | fused, numba | per-frame ref |",
        "|---:|---:|---:|---:|",
    ]
    for r in results["throughput"]:
        if "train_ms" in r:
            ms = r["train_ms"]
            lines.append(f"| {r['num_frames']} | {ms['chunked']:.1f} | {ms['numba']:.1f} | {ms['ref']:.1f} |")
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
    parser.add_argument("--backward-frames", type=int, default=64, help="time forward + backward to this N")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    results = {
        "torch": torch.__version__,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "num_tokens": NUM_TOKENS,
        "scale": SCALE_ARGS,
        "throughput": throughput(args.frames, args.repeats, args.backward_frames),
        "step_latency": step_latency(args.stream),
        "state_memory": state_memory(),
    }
    results["target"] = scan_target(results["throughput"])
    results["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_results("bench_ssm", results, markdown(results))


if __name__ == "__main__":
    main()
