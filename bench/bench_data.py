"""Data stages benchmark: decoding, Zarr I/O, compression, files per store, DVC no-op time.

Inputs are made on the fly (H.264, ``write_mp4``): a 300-frame 256x192 clip and a 60-frame 1280x720 clip of
smooth moving gradients with fine texture (compresses like real footage more than noise or flat colour would).

- Decode frames/s: our ``open_video`` streaming sources (decord in its guard process, PyAV) against a plain
  in-process PyAV loop (``container.decode`` + ``to_ndarray("rgb24")``) on the same file. Best of 3.
- Stage throughput: ``decode_video`` (decode + compress + write the frames store) and ``prepare_video``
  (read + resize + pad + write) in frames/s.
- Zarr I/O of the prepared frames (T, 168, 224, 3) uint8: write MB/s (TimeWriter, whole shards) and read MB/s
  (whole array; and 8-frame clips at random offsets, as training reads), raw bytes per second, best of 3.
- Compression ratio (raw / stored bytes) and files per store of the frames and prepared stores.
- ``dvc repro`` with nothing to do, on a two-video project with the real decode/prepare stages. Best of 3.

Run: ``python -m bench.bench_data`` (about a minute on 2 cores). Results go to
bench/results/bench_data.{json,md}.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import yaml

from bench.common import call_seconds, write_results
from videomamba_depth.decode import DecodeConfig, decode_video
from videomamba_depth.manifest import MANIFEST_FILE, VideoEntry, write_manifest
from videomamba_depth.prepare import PrepareConfig, prepare_video
from videomamba_depth.video.reader import open_video
from videomamba_depth.video.writer import write_mp4
from videomamba_depth.zarrio import TimeWriter, create_time_array, open_store, writing_store

REPO = Path(__file__).resolve().parents[1]
REPEATS = 3
CLIPS = {"256x192": (300, 192, 256), "1280x720": (60, 720, 1280)}


def make_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """Smooth moving colour gradients plus fixed fine texture, uint8 ``(T, H, W, 3)``."""
    texture = np.random.default_rng(0).normal(0, 12, (height, width, 1))
    v, u = np.mgrid[0:height, 0:width].astype(np.float32) / max(height, width)
    frames = np.empty((num_frames, height, width, 3), np.uint8)
    for t in range(num_frames):
        s = t / 30.0
        rgb = np.stack([np.sin(6 * u + s), np.cos(5 * v - 0.7 * s), np.sin(4 * (u + v) + 1.3 * s)], axis=-1)
        frames[t] = np.clip(128 + 100 * rgb + texture, 0, 255)
    return frames


def best_time(fn: Callable[[], object], repeats: int = REPEATS) -> float:
    return min(call_seconds(fn, repeats, warm_up=0))


def decode_source(path: Path, backend: str) -> int:
    with open_video(path, backend) as source:
        return sum(len(batch) for batch in source.iter_batches(64))


def decode_plain_pyav(path: Path) -> int:
    count = 0
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frame.to_ndarray(format="rgb24")
            count += 1
    return count


def dir_bytes(path: Path) -> tuple[int, int]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def bench_decode(work: Path) -> dict:
    results = {}
    for name, (num_frames, height, width) in CLIPS.items():
        video = work / f"{name}.mp4"
        write_mp4(video, make_frames(num_frames, height, width), fps=30)
        row = {"frames": num_frames, "file_bytes": video.stat().st_size}
        for label, fn in (
            ("decord", lambda v=video: decode_source(v, "decord")),
            ("pyav", lambda v=video: decode_source(v, "pyav")),
            ("plain_pyav", lambda v=video: decode_plain_pyav(v)),
        ):
            row[f"{label}_fps"] = num_frames / best_time(fn)
        results[name] = row
    return results


def bench_stages(work: Path) -> dict:
    num_frames = CLIPS["256x192"][0]
    video = work / "256x192.mp4"
    frames_store, prepared_store = work / "frames.zarr", work / "prepared.zarr"
    entry = VideoEntry(str(video))
    decode_s = best_time(lambda: decode_video(entry, frames_store, DecodeConfig(), name="bench"))
    prepare_s = best_time(lambda: prepare_video(frames_store, prepared_store, PrepareConfig(), name="bench"))
    out = {"decode_stage_fps": num_frames / decode_s, "prepare_stage_fps": num_frames / prepare_s}
    for label, store in (("frames", frames_store), ("prepared", prepared_store)):
        rgb = open_store(store)["rgb"]
        stored, _ = dir_bytes(store / "rgb")
        out[f"{label}_rgb_shape"] = list(rgb.shape)
        out[f"{label}_compression_ratio"] = rgb.nbytes / stored
        out[f"{label}_files_per_store"] = dir_bytes(store)[1]
    return out


def bench_zarr_io(work: Path) -> dict:
    frames = open_store(work / "prepared.zarr")["rgb"][:]
    path = work / "io.zarr"

    def write() -> None:
        with writing_store(path, "prepared", {}) as group:
            rgb = create_time_array(group, "rgb", frames.shape[1:], "uint8", dims=("t", "y", "x", "c"),
                                    units="sRGB", description="bench")
            with TimeWriter(rgb) as writer:
                for t0 in range(0, len(frames), rgb.shards[0]):
                    writer.append(frames[t0 : t0 + rgb.shards[0]])

    write_s = best_time(write)
    rgb = open_store(path)["rgb"]
    read_s = best_time(lambda: rgb[:])
    rng = np.random.default_rng(0)
    starts = rng.integers(0, len(frames) - 8, 50)
    clip_s = best_time(lambda: [rgb[s : s + 8] for s in starts])
    mb = frames.nbytes / 1e6
    return {
        "raw_mb": mb,
        "write_mb_per_s": mb / write_s,
        "read_mb_per_s": mb / read_s,
        "clip8_read_mb_per_s": 50 * 8 * frames[0].nbytes / 1e6 / clip_s,
    }


def bench_dvc_noop(work: Path) -> dict:
    """``dvc repro`` and ``dvc status`` on an up-to-date two-video project (real decode/prepare stages)."""
    project = work / "dvc_project"
    project.mkdir()
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = {name: pipeline["stages"][name] for name in ("decode", "prepare")}
    files = {"videomamba_depth/__init__.py", "videomamba_depth/video/__init__.py"}
    for stage in stages.values():
        files |= {d for d in stage["deps"] if d.startswith(("stages/", "videomamba_depth/"))}
        stage["deps"] = [d for d in stage["deps"] if d != "data/index/synth.json"]  # its own videos
    for file in files:
        if (REPO / file).is_dir():
            shutil.copytree(REPO / file, project / file, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (project / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / file, project / file)
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    videos = {}
    for name in ("a", "b"):
        write_mp4(project / f"{name}.mp4", make_frames(30, 192, 256), fps=30)
        videos[name] = {"video": f"{name}.mp4", "intrinsics": None, "ground_truth": None}
    params = {"decode": {"backend": "decord", "folder_fps": 30.0},
              "prepare": {"long_edge": 224, "pad_multiple": 14}}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_manifest(videos, project / MANIFEST_FILE)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def dvc(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, check=True,
                       capture_output=True)

    dvc("init", "--no-scm", "-q")
    dvc("repro")
    return {
        "stages": len(stages),
        "repro_noop_s": best_time(lambda: dvc("repro")),
        "status_s": best_time(lambda: dvc("status")),
    }


def to_markdown(results: dict) -> str:
    lines = ["# bench_data", "", f"Machine: {results['machine']}", "",
             "| clip | frames | decord fps | PyAV fps | plain PyAV fps |", "|---|---|---|---|---|"]
    for name, row in results["decode"].items():
        lines.append(f"| {name} | {row['frames']} | {row['decord_fps']:.0f} | {row['pyav_fps']:.0f} | "
                     f"{row['plain_pyav_fps']:.0f} |")
    s, io, dvc = results["stages"], results["zarr_io"], results["dvc"]
    lines += [
        "",
        "| measure | value |",
        "|---|---|",
        f"| decode stage (256x192, decord, write) | {s['decode_stage_fps']:.0f} frames/s |",
        f"| prepare stage (256x192 -> 224x168) | {s['prepare_stage_fps']:.0f} frames/s |",
        f"| prepared rgb write | {io['write_mb_per_s']:.0f} MB/s |",
        f"| prepared rgb read (whole array) | {io['read_mb_per_s']:.0f} MB/s |",
        f"| prepared rgb read (8-frame clips) | {io['clip8_read_mb_per_s']:.0f} MB/s |",
        f"| compression ratio frames / prepared | {s['frames_compression_ratio']:.2f} / "
        f"{s['prepared_compression_ratio']:.2f} |",
        f"| files per store frames / prepared | {s['frames_files_per_store']} / "
        f"{s['prepared_files_per_store']} |",
        f"| dvc repro no-op ({dvc['stages']} stages) | {dvc['repro_noop_s']:.2f} s |",
        f"| dvc status ({dvc['stages']} stages) | {dvc['status_s']:.2f} s |",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bench_data_") as tmp:
        work = Path(tmp)
        results = {
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
            "decode": bench_decode(work),
            "stages": bench_stages(work),
            "zarr_io": bench_zarr_io(work),
            "dvc": bench_dvc_noop(work),
        }
    write_results("bench_data", results, to_markdown(results))


if __name__ == "__main__":
    main()
