"""Long-video drift of the trained student: one held-out synthetic video of 2,000 frames, streamed.

Renders a video the pipeline never trained on (``synth`` params of params.yaml, a seed no video or image
of the default uses, ``--frames`` frames, written streaming by the ``synth`` stage's own writer with its
ground truth), streams it through the trained student with ``infer_video`` (the code behind
``videomamba-depth infer``: constant memory, states carried over all frames), and compares every frame
with the ground truth at the original resolution:

- the per-frame least-squares scale ``s_t`` of the prediction to the truth (``metrics.temporal.scale_drift``,
  as the evaluate stage's drift curves) and its spread over the video, ``std(s) / mean(s)`` (target <= 3%);
- AbsRel (alignment none) over the first and the last 10% of the frames (target: last <= first).

Run: ``python -m bench.bench_drift`` after ``make repro`` (``--checkpoint`` another model, ``--frames``,
``--seed``; about 4 minutes at 2,000 frames on 2 cores). Results: bench/results/bench_drift.{json,md}, the
curve as ``bench_drift.csv`` (``dvc plots show`` draws it) and ``bench_drift.png``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import RESULTS, write_results
from videomamba_depth.config import load_params, load_section
from videomamba_depth.evaluation.pipeline import EvaluateConfig
from videomamba_depth.inference.infer import InferConfig, infer_video
from videomamba_depth.metrics.depth import evaluate_sequence, evaluation_mask
from videomamba_depth.metrics.temporal import scale_drift
from videomamba_depth.synth import SynthConfig, write_synth_video
from videomamba_depth.synth.export import GT_STORE, INTRINSICS_FILE, VIDEO_FILE
from videomamba_depth.zarrio import open_store

CHECKPOINT = Path("data/train/model_best.safetensors")
# Far from every seed of the default: videos 6-17 and 100-139, images from 100000 (synth_images.seed_start).
SEED = 900
TARGET_SCALE_SPREAD = 0.03
CHUNK = 200  # frames compared at a time (memory stays flat whatever the length)


def frame_errors(pred: np.ndarray, gt: np.ndarray, config: EvaluateConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame least-squares scale and AbsRel (alignment none) of ``pred`` vs ``gt``, both ``(T, H, W)``
    metres, scored as the evaluate stage scores a video (its ``min_depth`` / ``max_depth`` mask and clip)."""
    pred = pred.astype(np.float64)
    scored = evaluate_sequence(pred, gt, None, max_depth=config.max_depth, min_depth=config.min_depth)
    mask = evaluation_mask(gt, None, max_depth=config.max_depth, min_depth=config.min_depth)
    return scale_drift(pred, gt, mask).scale, scored.per_frame["abs_rel"]


def measure(checkpoint: Path, frames: int, seed: int, workdir: Path,
            threads: int | None) -> tuple[dict, np.ndarray, np.ndarray]:
    """The numbers of the module docstring, and the per-frame scale and AbsRel curves ``(T,)``."""
    params = load_params()
    synth = load_section(SynthConfig, "synth", params)
    evaluate = load_section(EvaluateConfig, "evaluate", params)
    synth = dataclasses.replace(synth, num_frames=(frames, frames), videos={"long": seed})
    video_dir = workdir / "long"
    start = time.perf_counter()
    write_synth_video(video_dir, synth, "long")
    render_s = time.perf_counter() - start
    start = time.perf_counter()
    result = infer_video(video_dir / VIDEO_FILE, checkpoint, workdir / "depth.zarr",
                         InferConfig(threads=threads), intrinsics=video_dir / INTRINSICS_FILE)
    infer_s = time.perf_counter() - start
    pred, gt = open_store(workdir / "depth.zarr", "depth")["depth"], open_store(video_dir / GT_STORE)["depth"]
    scales, abs_rels = [], []
    for t0 in range(0, frames, CHUNK):
        s, a = frame_errors(pred[t0 : t0 + CHUNK], gt[t0 : t0 + CHUNK], evaluate)
        scales.append(s)
        abs_rels.append(a)
    scale, abs_rel = np.concatenate(scales), np.concatenate(abs_rels)
    tenth = max(1, frames // 10)
    spread = float(np.std(scale) / np.mean(scale))
    first, last = float(abs_rel[:tenth].mean()), float(abs_rel[-tenth:].mean())
    results = {
        "checkpoint": str(checkpoint),
        "frames": frames,
        "seed": seed,
        "sensor": open_store(video_dir / GT_STORE).attrs["scene"]["sensor"],
        "render_s": round(render_s, 1),
        "infer_s": round(infer_s, 1),
        "infer_frames_per_s": round(result.fps, 1),
        "scale_mean": float(np.mean(scale)),
        "scale_spread": spread,
        "scale_spread_target": TARGET_SCALE_SPREAD,
        "scale_spread_ok": spread <= TARGET_SCALE_SPREAD,
        "abs_rel": float(abs_rel.mean()),
        "abs_rel_first_10pct": first,
        "abs_rel_last_10pct": last,
        "last_no_worse_ok": last <= first,
    }
    return results, scale, abs_rel


def write_curve(results: dict, scale: np.ndarray, abs_rel: np.ndarray, directory: Path = RESULTS) -> None:
    """``bench_drift.csv`` (frame, scale, abs_rel) and ``bench_drift.png`` (both against the frame)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(directory / "bench_drift.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "scale", "abs_rel"])
        writer.writerows((t, f"{s:.6f}", f"{a:.6f}") for t, (s, a) in enumerate(zip(scale, abs_rel,
                                                                                      strict=True)))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    top.plot(scale, lw=0.8)
    top.axhline(np.mean(scale), color="k", lw=0.5)
    top.set_ylabel("least-squares scale\nto the truth")
    top.set_title(f"{results['frames']}-frame held-out video (seed {results['seed']}): spread "
                  f"{100 * results['scale_spread']:.1f}% (target <= {100 * TARGET_SCALE_SPREAD:.0f}%)")
    bottom.plot(abs_rel, lw=0.8)
    bottom.set_ylabel("AbsRel (none)")
    bottom.set_xlabel("frame")
    fig.tight_layout()
    fig.savefig(directory / "bench_drift.png", dpi=100)
    plt.close(fig)


def markdown(r: dict) -> str:
    ok = {True: "met", False: "not met"}
    return (
        "| long video | frames | scale spread (std / mean) | AbsRel all | first 10% | last 10% |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        f"| seed {r['seed']}, `{r['checkpoint']}` | {r['frames']} | {100 * r['scale_spread']:.2f}% "
        f"(≤ {100 * TARGET_SCALE_SPREAD:.0f}%: {ok[r['scale_spread_ok']]}) | {r['abs_rel']:.3f} | "
        f"{r['abs_rel_first_10pct']:.3f} | {r['abs_rel_last_10pct']:.3f} (≤ first: "
        f"{ok[r['last_no_worse_ok']]}) |\n\n"
        f"Rendering {r['render_s']} s, streaming inference {r['infer_s']} s ({r['infer_frames_per_s']} "
        "frames/s).\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        parser.error(f"{args.checkpoint}: no such model file (run `make repro` first, or give --checkpoint)")
    with tempfile.TemporaryDirectory(prefix="bench_drift_") as tmp:
        results, scale, abs_rel = measure(args.checkpoint, args.frames, args.seed, Path(tmp), args.threads)
    write_results("bench_drift", results, markdown(results), args.results)
    write_curve(results, scale, abs_rel, args.results)
    return results


if __name__ == "__main__":
    main()
