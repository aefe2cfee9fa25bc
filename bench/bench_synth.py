"""Synthetic renderer benchmark: frames/s at the default size, the whole stage, and streaming memory.

- Render frames/s: ``render_frames`` alone (RGB + all ground truth), over the first frames of a few default
  videos, with and without silhouette supersampling.
- Stage frames/s: ``write_synth_video`` of one default video (rendering, H.264 encoding, Zarr compression and
  writing), and the projected time of the default set (total frames of all ``synth.videos`` / stage frames/s).
- Streaming memory: resident memory after rendering a long stream, against after its first frames (frames
  are produced from analytic motions, so it must not grow with the number of frames).

Run: ``python -m bench.bench_synth`` (about a minute on 2 idle cores). Results go to
bench/results/bench_synth.{json,md}.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import write_results
from videomamba_depth.config import load_section
from videomamba_depth.synth import SynthConfig, render_frames, sample_scene, write_synth_video


def render_fps(config: SynthConfig, seeds: list[int], frames: int) -> float:
    """Frames/s of ``render_frames`` over the first ``frames`` frames of each seed's scene."""
    elapsed = 0.0
    for seed in seeds:
        scene = sample_scene(config, seed)
        start = time.perf_counter()
        for _ in render_frames(scene, stop=frames):
            pass
        elapsed += time.perf_counter() - start
    return len(seeds) * frames / elapsed


def stream_memory(config: SynthConfig, frames: int) -> dict:
    """Resident memory (MiB) after 10 frames and after ``frames`` frames of one long stream."""
    scene = sample_scene(dataclasses.replace(config, num_frames=(frames, frames)), 0)
    process, rss = psutil.Process(), {}
    for frame in render_frames(scene):
        if frame.index + 1 in (10, frames):
            rss[frame.index + 1] = process.memory_info().rss / 2**20
    return {"frames": frames, "rss_mib_after_10": rss[10], f"rss_mib_after_{frames}": rss[frames],
            "growth_mib": rss[frames] - rss[10]}


def run(config: SynthConfig, frames: int, stream: int) -> dict:
    seeds = [config.videos[name] for name in sorted(config.videos)][:4]
    results: dict = {
        "size_wh": [config.width, config.height],
        "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "render_fps": {
            f"supersample={config.supersample}": render_fps(config, seeds, frames),
            "supersample=1": render_fps(dataclasses.replace(config, supersample=1), seeds, frames),
        },
        "render_frames_per_seed": frames,
        "seeds": seeds,
    }
    name = sorted(config.videos)[0]
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        out = write_synth_video(Path(tmp) / name, config, name)
        elapsed = time.perf_counter() - start
        num_frames = sample_scene(config, config.videos[name]).num_frames
        sizes = {p.name: sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir()
                 else p.stat().st_size for p in out.iterdir()}
    total_frames = sum(sample_scene(config, seed).num_frames for seed in config.videos.values())
    stage_fps = num_frames / elapsed
    results["stage"] = {
        "video": name,
        "frames": num_frames,
        "seconds": elapsed,
        "fps": stage_fps,
        "bytes_per_frame": {k: v / num_frames for k, v in sizes.items()},
        "default_set": {"videos": len(config.videos), "frames": total_frames,
                        "projected_seconds": total_frames / stage_fps},
    }
    results["stream_memory"] = stream_memory(config, stream)
    return results


def markdown(results: dict) -> str:
    w, h = results["size_wh"]
    stage, mem = results["stage"], results["stream_memory"]
    last = mem[f"rss_mib_after_{mem['frames']}"]
    sizes = stage["bytes_per_frame"]
    lines = [
        f"# bench_synth: {w}x{h}, {results['cpu_count']} CPUs, load average at start "
        f"{results['load_average_at_start']}",
        "",
        "| what | frames/s | note |",
        "| --- | ---: | --- |",
    ]
    for name, fps in results["render_fps"].items():
        lines.append(f"| render ({name}) | {fps:.1f} | RGB + depth, pose, flow, validity, motion mask; "
                     f"{results['render_frames_per_seed']} frames x seeds {results['seeds']} |")
    lines.append(f"| stage `{stage['video']}` | {stage['fps']:.1f} | render + H.264 + Zarr, "
                 f"{stage['frames']} frames in {stage['seconds']:.1f} s |")
    d = stage["default_set"]
    lines += [
        "",
        f"Default set: {d['videos']} videos, {d['frames']} frames, projected {d['projected_seconds']:.0f} s "
        "for the whole synth stage at the measured stage frames/s (plus ~1 s start-up per video).",
        "",
        "Bytes per frame: " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sizes.items()) + ".",
        "",
        f"Streaming memory: RSS {mem['rss_mib_after_10']:.0f} MiB after 10 frames, {last:.0f} MiB after "
        f"{mem['frames']} (growth {mem['growth_mib']:+.1f} MiB).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=24, help="frames rendered per seed for render frames/s")
    parser.add_argument("--stream", type=int, default=240, help="frames of the streaming-memory run")
    args = parser.parse_args()
    config = load_section(SynthConfig, "synth")
    results = run(config, args.frames, args.stream)
    write_results("bench_synth", results, markdown(results))


if __name__ == "__main__":
    main()
