"""Flow stage benchmark: frames/s of each flow backend on CPU, of the whole stage, and store bytes per frame.

Input is one short synthetic video taken through the real pipeline (synth -> decode -> prepare -> synthetic
teacher) in a temporary directory, so frames are the default prepared geometry with H.264 artefacts.

- Backend frames/s: forward + backward flow of every consecutive pair of the image region (what the stage
  computes per frame), and milliseconds per pair in one direction; DIS at each preset, RAFT-small and RAFT
  (ptlflow, random weights: speed does not depend on them) on the first 5 of the same frames, where ptlflow
  imports.
- Stage frames/s: ``compute_flow_store`` with the default params (DIS, consistency, PnP pose, static mask,
  compression and writing).
- Store bytes per frame: on-disk size of the flow store divided by the number of frames, total and per array.

Run: ``python -m bench.bench_flow`` (under a minute on 2 cores). Results go to
bench/results/bench_flow.{json,md}.

Quality mode, ``python -m bench.bench_flow --quality`` (about 3 min on 2 cores): every default video
(``synth.videos``) is rendered whole and taken through the real chain with the params.yaml sections (synth,
decode, prepare, teacher, flow) in a temporary directory, and the flow store is scored against the ground
truth with :func:`videomamba_depth.flow.quality.flow_quality` (EPE, moving / static IoU, pose errors).
Results go to bench/results/flow_quality.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from bench.common import call_seconds, write_results
from videomamba_depth.config import load_params, load_section
from videomamba_depth.decode import DecodeConfig, decode_video
from videomamba_depth.flow import DISBackend, FlowConfig, RAFTBackend, compute_flow_store, import_ptlflow
from videomamba_depth.flow.quality import flow_quality
from videomamba_depth.manifest import VideoEntry
from videomamba_depth.prepare import PrepareConfig, prepare_video
from videomamba_depth.synth import SynthConfig, write_synth_video
from videomamba_depth.synth.export import GT_STORE
from videomamba_depth.teacher import TeacherConfig, run_teacher
from videomamba_depth.zarrio import open_store

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def make_inputs(root: Path, num_frames: int) -> tuple[Path, Path]:
    """Prepared and teacher stores of one synthetic video of ``num_frames`` frames (default geometry)."""
    synth_cfg = dataclasses.replace(SynthConfig(), videos={"bench": 0}, num_frames=(num_frames, num_frames))
    video_dir = write_synth_video(root / "synth", synth_cfg, "bench")
    entry = VideoEntry(video=str(video_dir / "video.mp4"), intrinsics=str(video_dir / "intrinsics.json"),
                       ground_truth=str(video_dir / GT_STORE))
    decode_video(entry, root / "frames.zarr", DecodeConfig(), name="bench")
    prepare_video(root / "frames.zarr", root / "prepared.zarr", PrepareConfig(),
                  ground_truth=entry.ground_truth, name="bench")
    run_teacher(TeacherConfig(backend="synthetic"), root / "prepared.zarr", root / "teacher.zarr",
                video="bench")
    return root / "prepared.zarr", root / "teacher.zarr"


def time_backend(backend, frames: np.ndarray, repeats: int) -> float:
    """Best-of-``repeats`` frames/s of forward + backward flow over all consecutive pairs of ``frames``."""
    def both_ways() -> None:
        backend.flow(frames[:-1], frames[1:])
        backend.flow(frames[1:], frames[:-1])

    return (len(frames) - 1) / min(call_seconds(both_ways, repeats, warm_up=0))


def store_bytes(path: Path) -> dict[str, int]:
    """On-disk bytes of each array of a store, and the total (metadata included)."""
    def du(p: Path) -> int:
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())

    sizes = {p.name: du(p) for p in path.iterdir() if p.is_dir()}
    sizes["total"] = du(path)
    return sizes


def run(num_frames: int, repeats: int) -> dict:
    results: dict = {"threads": {"opencv": cv2.getNumThreads(), "torch": torch.get_num_threads()}}
    with tempfile.TemporaryDirectory() as tmp:
        prepared_path, teacher_path = make_inputs(Path(tmp), num_frames)
        prepared = open_store(prepared_path, "prepared")
        valid = prepared["valid"][...]
        rows, cols = np.flatnonzero(valid.any(1)), np.flatnonzero(valid.any(0))
        frames = prepared["rgb"][...][:, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        results["frames"] = {
            "count": len(frames),
            "image_size_wh": [int(frames.shape[2]), int(frames.shape[1])],
            "padded_size_wh": [int(valid.shape[1]), int(valid.shape[0])],
        }
        backends: dict = {}
        for preset in ("ultrafast", "fast", "medium"):
            backends[f"dis/{preset}"] = {"fps": time_backend(DISBackend(preset), frames, repeats),
                                         "note": "finest_scale 0 (stage default)"}
        backends["dis/medium (preset scale)"] = {
            "fps": time_backend(DISBackend("medium", finest_scale=None), frames, repeats),
            "note": "finest_scale 1, the preset's own",
        }
        try:
            import_ptlflow()
        except ImportError as exc:
            backends["raft"] = {"fps": None, "note": f"ptlflow not importable here ({exc.__cause__})"}
        else:
            for model in ("raft_small", "raft"):
                raft = RAFTBackend(model=model, ckpt=None, iters=12, batch_pairs=4)
                backends[f"raft/{model}"] = {"fps": time_backend(raft, frames[:5], 1),
                                             "note": "random weights, 12 iterations, 4 pairs per batch"}
        results["backends"] = backends

        cfg = FlowConfig()
        start = time.perf_counter()
        summary = compute_flow_store(prepared_path, teacher_path, Path(tmp) / "flow.zarr", cfg, video="bench")
        elapsed = time.perf_counter() - start
        sizes = store_bytes(Path(tmp) / "flow.zarr")
        results["stage"] = {
            "params": cfg.to_dict(),
            "fps": len(frames) / elapsed,
            "consistent_fraction_mean": summary["consistent_fraction_mean"],
            "static_fraction_mean": summary["static_fraction_mean"],
            "pose": {k: v for k, v in summary["pose"].items() if k != "unknown_pairs"},
        }
        results["store_bytes_per_frame"] = {k: v / len(frames) for k, v in sizes.items()}
    return results


def markdown(results: dict) -> str:
    f = results["frames"]
    lines = [
        f"# bench_flow: {f['count']} frames, image {f['image_size_wh'][0]}x{f['image_size_wh'][1]} "
        f"(padded {f['padded_size_wh'][0]}x{f['padded_size_wh'][1]}), CPU threads {results['threads']}",
        "",
        "| what | frames/s | ms per pair (one direction) | note |",
        "| --- | ---: | ---: | --- |",
    ]
    for name, r in results["backends"].items():
        fps = "n/a" if r["fps"] is None else f"{r['fps']:.1f}"
        per_pair = "n/a" if r["fps"] is None else f"{1e3 / (2 * r['fps']):.1f}"
        lines.append(f"| backend {name} (fwd + bwd) | {fps} | {per_pair} | {r.get('note', '')} |")
    lines.append(f"| flow stage (default params, DIS medium) | {results['stage']['fps']:.1f} | | "
                 "flow, consistency, PnP pose, static mask, write |")
    lines += ["", "| store array | bytes/frame |", "| --- | ---: |"]
    lines += [f"| {k} | {v:,.0f} |" for k, v in results["store_bytes_per_frame"].items()]
    return "\n".join(lines) + "\n"


def quality(params_path: Path, videos: list[str] | None) -> dict:
    """Per-video flow quality of the default synthetic videos through the real chain (module docstring)."""
    params = load_params(params_path)
    synth_cfg = load_section(SynthConfig, "synth", params)
    decode_cfg = load_section(DecodeConfig, "decode", params)
    prepare_cfg = load_section(PrepareConfig, "prepare", params)
    teacher_cfg = load_section(TeacherConfig, "teacher", params)
    flow_cfg = load_section(FlowConfig, "flow", params)
    results: dict = {"params": {"synth": synth_cfg.to_dict(), "flow": flow_cfg.to_dict()}, "videos": {}}
    render_s = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in videos or sorted(synth_cfg.videos):
            root = Path(tmp) / name
            start = time.perf_counter()
            video_dir = write_synth_video(root / "synth", synth_cfg, name)
            render_s += time.perf_counter() - start
            entry = VideoEntry(video=str(video_dir / "video.mp4"),
                               intrinsics=str(video_dir / "intrinsics.json"),
                               ground_truth=str(video_dir / GT_STORE))
            decode_video(entry, root / "frames.zarr", decode_cfg, name=name)
            prepare_video(root / "frames.zarr", root / "prepared.zarr", prepare_cfg,
                          ground_truth=entry.ground_truth, name=name)
            run_teacher(teacher_cfg, root / "prepared.zarr", root / "teacher.zarr", video=name)
            compute_flow_store(root / "prepared.zarr", root / "teacher.zarr", root / "flow.zarr", flow_cfg,
                               video=name)
            metrics = flow_quality(root / "prepared.zarr", root / "flow.zarr", flow_cfg.static_abs_px)
            metrics["num_frames"] = open_store(root / "prepared.zarr", "prepared")["rgb"].shape[0]
            results["videos"][name] = metrics
            shutil.rmtree(root)
    keys = [k for k in next(iter(results["videos"].values())) if k != "num_frames"]
    results["mean"] = {k: float(np.mean([m[k] for m in results["videos"].values()])) for k in keys}
    results["min"] = {k: float(np.min([m[k] for m in results["videos"].values()])) for k in keys}
    results["synth_render_s"] = render_s
    return results


QUALITY_COLUMNS = (
    ("frames", "num_frames", "{:d}"),
    ("EPE px", "epe", "{:.3f}"),
    ("consistent", "consistent_fraction", "{:.3f}"),
    ("moving IoU", "moving_iou", "{:.3f}"),
    ("precision", "moving_precision", "{:.3f}"),
    ("recall", "moving_recall", "{:.3f}"),
    ("detectable IoU", "detectable_moving_iou", "{:.3f}"),
    ("static IoU", "static_iou", "{:.3f}"),
    ("rot err mean/max deg", ("rotation_error_mean_deg", "rotation_error_max_deg"), "{:.3f}/{:.3f}"),
    ("t dir err deg", "translation_direction_error_median_deg", "{:.1f}"),
    ("gt moving share", "gt_moving_share", "{:.3f}"),
    ("gt too slow", "gt_moving_too_slow", "{:.3f}"),
    ("gt indep. px", "gt_independent_px_median", "{:.2f}"),
)


def quality_markdown(results: dict) -> str:
    def cell(m: dict, key, fmt: str) -> str:
        keys = key if isinstance(key, tuple) else (key,)
        return fmt.format(*(m[k] for k in keys)) if all(k in m for k in keys) else ""

    lines = [
        f"# flow quality: default synthetic videos, flow backend {results['params']['flow']['backend']} "
        f"(synth render {results['synth_render_s']:.0f} s)",
        "",
        "| video | " + " | ".join(c[0] for c in QUALITY_COLUMNS) + " |",
        "| --- |" + " ---: |" * len(QUALITY_COLUMNS),
    ]
    rows = [*results["videos"].items(), ("**mean**", results["mean"]), ("**min**", results["min"])]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(cell(m, key, fmt) for _, key, fmt in QUALITY_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24, help="frames of the synthetic video")
    parser.add_argument("--repeats", type=int, default=3, help="timing repeats per DIS preset (best is kept)")
    parser.add_argument("--quality", action="store_true", help="score flow against gt on the default videos")
    parser.add_argument("--videos", nargs="*", help="quality: only these synth.videos (default: all)")
    parser.add_argument("--params", type=Path, default=PARAMS, help="quality: params file")
    args = parser.parse_args(argv)
    name = "flow_quality" if args.quality else "bench_flow"
    if args.quality:
        results = quality(args.params, args.videos)
        table = quality_markdown(results)
    else:
        results = run(args.frames, args.repeats)
        table = markdown(results)
    write_results(name, results, table)


if __name__ == "__main__":
    main()
