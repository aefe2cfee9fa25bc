"""GPU check, measurement part (``bench/gpu_check.sh`` runs it after the CUDA tests; ``make gpu-check``).

On the CUDA device (the CPU when there is none, with tiny counts under ``--quick``, only to exercise the code;
the results then say ``device: cpu`` and list what was skipped):

1. Student ``step`` frames/s, batch 1, at 518 x 392 (DINOv2's 518 px) and 224 x 168 (the prepared size):
   the default student (CNN encoder; SSM ``cuda`` backend where mamba-ssm imports, else ``torch``; ``step``
   itself is PyTorch either way) and a timm DINOv2 ViT-S/14 encoder student (random weights), fp32 and, on
   CUDA, under bf16 autocast.
2. The teacher on the same frames: UniDepthV2 when the package and its weights load, else the PROXY of
   ``bench_stream`` (ViT-S/14 encoder forward, random weights), with the reason.
3. Streaming memory over 2,000 frames at 224 x 168: CUDA allocated memory (peak since the start, and in use)
   every 100 frames, and its growth from frame 200 to the end (must be ~0: constant-size state).

Run: ``python -m bench.gpu_check [--quick] [--out DIR] [--note TEXT ...]``; writes ``gpu_check.{json,md}`` to
bench/results (or DIR). Timings synchronise the device around every timed call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch

from bench.bench_stream import ViTProxy
from bench.common import RESULTS, randomised_student, write_results
from videomamba_depth.models import ModelConfig, require_timm

SIZES = {"518px": (392, 518), "224px": (168, 224)}  # (H, W), multiples of 14
STREAM_FRAMES, STREAM_EVERY = 2_000, 100


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_fps(fn: Callable[[], object], device: torch.device, frames: int, warm_up: int) -> float:
    """Frames/s of ``fn`` (one frame a call), median of ``frames`` synchronised calls after ``warm_up``."""
    for _ in range(warm_up):
        fn()
    times = []
    for _ in range(frames):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 1.0 / statistics.median(times)


def mamba_ssm_available() -> bool:
    try:
        import mamba_ssm  # noqa: F401
    except ImportError:
        return False
    return True


def students(device: torch.device, skipped: list[str]) -> dict[str, torch.nn.Module]:
    """The students timed, randomised (``bench.common.randomised_student``)."""
    ssm = "cuda" if device.type == "cuda" and mamba_ssm_available() else "torch"
    if device.type == "cuda" and ssm == "torch":
        skipped.append("mamba-ssm not importable: students use the torch SSM backend")
    configs = {f"cnn (ssm {ssm})": ModelConfig(ssm_backend=ssm)}
    try:
        require_timm()
    except ImportError:
        skipped.append("timm not importable: no ViT-S encoder student")
    else:
        vit = ModelConfig(encoder="timm", timm_pretrained=False, ssm_backend=ssm)
        configs[f"timm ViT-S/14 (ssm {ssm})"] = vit
    return {name: randomised_student(cfg).to(device).eval() for name, cfg in configs.items()}


def frame(height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    rgb = torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8, device=device)
    f = 0.8 * width
    K = torch.tensor([[[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]]])
    return rgb, K.to(device)


def student_fps(
    model, height: int, width: int, device: torch.device, frames: int, warm_up: int, bf16: bool
) -> float:
    rgb, K = frame(height, width, device)
    state = {"s": None}

    def one() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            _, state["s"] = model.step(rgb, K, state["s"])

    with torch.inference_mode():
        return timed_fps(one, device, frames, warm_up)


def teacher_fps(
    height: int, width: int, device: torch.device, frames: int, warm_up: int
) -> tuple[str, float]:
    """UniDepthV2 when it loads here, else the ViT-S/14 proxy; returns (what ran, frames/s)."""
    reason = "unidepth not installed"
    try:
        from videomamba_depth.inference.intrinsics import unidepth_available

        if unidepth_available():
            import numpy as np

            from videomamba_depth.teacher import TeacherConfig
            from videomamba_depth.teacher.unidepth import UniDepthTeacher

            teacher = UniDepthTeacher.from_config(TeacherConfig(backend="unidepth", device=device.type), None)
            rgb = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
            K = np.array([[[0.8 * width, 0, (width - 1) / 2], [0, 0.8 * width, (height - 1) / 2], [0, 0, 1]]])
            fps = timed_fps(lambda: teacher.predict(rgb, K, np.arange(1)), device, frames, warm_up)
            return f"UniDepthV2 ({teacher.weights})", fps
    except Exception as exc:  # weights not reachable offline, or any load failure: say so, use the proxy
        reason = f"UniDepthV2 could not run ({type(exc).__name__}: {exc})"
    torch.manual_seed(0)
    vit = ViTProxy("vits14", height, width).to(device).eval()
    x = torch.rand(1, 3, height, width, device=device)
    with torch.inference_mode():
        fps = timed_fps(lambda: vit(x), device, frames, warm_up)
    return f"PROXY: ViT-S/14 encoder forward, random weights ({reason})", fps


def memory_bytes(device: torch.device) -> tuple[int, int]:
    """(peak since the last reset, in use now): CUDA allocator bytes, or process RSS twice on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), torch.cuda.memory_allocated(device)
    rss = psutil.Process().memory_info().rss
    return rss, rss


def stream_memory(model, device: torch.device, frames: int, every: int) -> dict:
    height, width = SIZES["224px"]
    rgb, K = frame(height, width, device)
    states = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    curve = []
    start = time.perf_counter()
    with torch.inference_mode():
        for t in range(1, frames + 1):
            _, states = model.step(rgb, K, states)
            if t % every == 0 or t == frames:
                synchronize(device)
                peak, now = memory_bytes(device)
                curve.append([t, peak / 2**20, now / 2**20])
    elapsed = time.perf_counter() - start
    after = [c for c in curve if c[0] >= min(2 * every, frames)]
    return {
        "frames": frames,
        "fps": frames / elapsed,
        "state_mib": states.nbytes / 2**20,
        "curve_frame_peak_now_mib": curve,
        "peak_mib": curve[-1][1],
        "growth_mib_after_frame_200": after[-1][2] - after[0][2],
        "measures": "CUDA allocated memory" if device.type == "cuda" else "process RSS (CPU)",
    }


def run(quick: bool, notes: list[str]) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    skipped = list(notes)
    if device.type == "cpu":
        skipped.append("no CUDA device: every number below is a CPU run of the same code, NOT a GPU "
                       "measurement")
    timed, warm_up = (2, 1) if quick else (50, 5)
    stream_frames, every = (20, 10) if quick else (STREAM_FRAMES, STREAM_EVERY)
    if quick:
        skipped.append(f"--quick: {timed} timed frames per size, streaming memory over {stream_frames} "
                       "frames")
    models = students(device, skipped)
    results: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "quick": quick,
        "students": {},
        "teacher": {},
    }
    precisions = [False, True] if device.type == "cuda" else [False]
    for name, model in models.items():
        for size, (h, w) in SIZES.items():
            for bf16 in precisions:
                key = f"{size} {'bf16' if bf16 else 'fp32'}"
                fps = student_fps(model, h, w, device, timed, warm_up, bf16)
                results["students"].setdefault(name, {})[key] = fps
    for size, (h, w) in SIZES.items():
        what, fps = teacher_fps(h, w, device, timed, warm_up)
        results["teacher"][size] = {"what": what, "fps": fps}
    default = next(iter(models.values()))
    results["stream"] = stream_memory(default, device, stream_frames, every)
    results["skipped"] = skipped
    return results


def markdown(results: dict) -> str:
    lines = [f"# gpu_check: {results['device']}, torch {results['torch']}", ""]
    if results["skipped"]:
        lines += ["SKIPPED / NOTES:", *(f"- {s}" for s in results["skipped"]), ""]
    lines += ["| what | size | frames/s |", "| --- | --- | ---: |"]
    for name, by_size in results["students"].items():
        lines += [f"| student {name} step | {key} | {fps:.1f} |" for key, fps in by_size.items()]
    for size, t in results["teacher"].items():
        lines.append(f"| teacher: {t['what']} | {size} | {t['fps']:.1f} |")
    s = results["stream"]
    lines += [
        "",
        f"Streaming {s['frames']} frames at 224 x 168 ({s['measures']}): {s['fps']:.1f} frames/s, peak "
        f"{s['peak_mib']:.1f} MiB, growth after frame 200 {s['growth_mib_after_frame_200']:+.2f} MiB, state "
        f"{s['state_mib']:.2f} MiB.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: exercise the code paths only")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    parser.add_argument("--note", action="append", default=[], help="a line for the SKIPPED / NOTES list")
    args = parser.parse_args(argv)
    results = run(args.quick, args.note)
    write_results("gpu_check", results, markdown(results), directory=args.out)


if __name__ == "__main__":
    main()
