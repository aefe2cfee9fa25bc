"""Teacher throughput on CPU and teacher-store size per frame, at the default prepared size (224 x 168).

Run: ``python -m bench.bench_teacher``. Writes ``bench/results/bench_teacher.{json,md}``. The synthetic
teacher runs on a procedural 96-frame scene (a slanted floor and two moving boxes); UniDepthV2 is timed
only when the ``unidepth`` package and its weights (``teacher.weights`` in params.yaml) load, else reported
as not available with the reason.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import write_results
from videomamba_depth.camera import ResizePad, make_K
from videomamba_depth.config import load_section
from videomamba_depth.teacher import TeacherConfig, run_teacher
from videomamba_depth.teacher.run import build_teacher, open_prepared
from videomamba_depth.zarrio import create_static_array, create_time_array, writing_store

WIDTH, HEIGHT, FRAMES = 224, 168, 96
UNIDEPTH_FRAMES = 4  # CPU inference of a ViT is slow: a few frames give a stable per-frame time


def procedural_scene(T: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """rgb ``(T, h, w, 3)`` uint8, depth ``(T, h, w)`` float32 metres, K ``(3, 3)``."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    K = make_K(0.9 * w, 0.9 * w, (w - 1) / 2, (h - 1) / 2)
    floor = 1.5 * K[1, 1] / np.maximum(v - K[1, 2], 1.0)  # a floor 1.5 m below the camera ...
    base = np.minimum(floor, 12.0)  # ... meeting a wall at 12 m
    depth = np.repeat(base[None], T, axis=0)
    for t in range(T):
        for x0, y0, size, z, speed in ((40, 50, 50, 3.0, 1.0), (150, 70, 35, 6.0, -0.6)):
            x = int(x0 + speed * t) % (w - size)
            depth[t, y0 : y0 + size, x : x + size] = np.minimum(depth[t, y0 : y0 + size, x : x + size], z)
    shade = 255 / (1 + depth / 4)
    rgb = np.stack([shade, shade * 0.8 + 20 * (u % 16 < 8), shade * 0.6 + 20 * (v % 16 < 8)], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8), depth.astype(np.float32), K


def write_prepared(path: Path, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray) -> None:
    """A ``prepared`` store (no padding at 224 x 168) with given K and a ``gt`` group."""
    T, h, w = depth.shape
    geom = ResizePad.fit(w, h, w, 14)
    attrs = {"geometry": geom.to_attrs(), "fps": 24.0, "intrinsics": "given", "num_frames": T}
    with writing_store(path, "prepared", attrs) as g:
        for group, name, data, dims, units in (
            (g, "rgb", rgb, ("t", "y", "x", "c"), "sRGB"),
            (g, "K", np.broadcast_to(K, (T, 3, 3)), ("t", "i", "j"), "pixels"),
            (g.create_group("gt"), "depth", depth, ("t", "y", "x"), "m"),
        ):
            arr = create_time_array(group, name, data.shape[1:], data.dtype, dims=dims, units=units,
                                    description=name, length=T)
            arr[:] = data
        gt_K = create_time_array(g["gt"], "K", (3, 3), "float64", dims=("t", "i", "j"), units="pixels",
                                 description="K", length=T)
        gt_K[:] = np.broadcast_to(K, (T, 3, 3))
        create_static_array(g, "valid", geom.valid_mask(), dims=("y", "x"), units="bool", description="image")


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def bench_backend(cfg: TeacherConfig, prepared: Path, frames: int) -> dict:
    """Frames/s of ``predict`` alone (model loaded, batches of ``cfg.batch_size``)."""
    ctx = open_prepared(prepared, "bench")
    teacher = build_teacher(cfg, ctx)
    rgb = ctx.crop(ctx.prepared["rgb"][:frames])
    K = ctx.K_to_window(ctx.prepared["K"][:frames])
    teacher.predict(rgb[:1], K[:1], np.arange(1))  # warm-up
    start = time.perf_counter()
    for i in range(0, frames, cfg.batch_size):
        idx = np.arange(i, min(frames, i + cfg.batch_size))
        teacher.predict(rgb[idx], K[idx], idx)
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": round(seconds, 3), "frames_per_s": round(frames / seconds, 1)}


def main() -> dict:
    params_cfg = load_section(TeacherConfig, "teacher")
    work = Path(tempfile.mkdtemp(prefix="bench_teacher_"))
    try:
        prepared = work / "prepared.zarr"
        write_prepared(prepared, *procedural_scene(FRAMES, HEIGHT, WIDTH))
        synthetic = TeacherConfig(**{**params_cfg.to_dict(), "backend": "synthetic"})
        results: dict = {"size": [WIDTH, HEIGHT], "cpu_threads": os.cpu_count(), "backends": {}}
        results["backends"]["synthetic"] = bench_backend(synthetic, prepared, FRAMES)
        out = work / "teacher.zarr"
        start = time.perf_counter()
        run_teacher(synthetic, prepared, out, "bench")
        seconds = time.perf_counter() - start
        results["stage_synthetic"] = {
            "frames": FRAMES, "seconds": round(seconds, 3), "frames_per_s": round(FRAMES / seconds, 1),
            "store_bytes_per_frame": round(store_bytes(out) / FRAMES),
            "raw_bytes_per_frame": WIDTH * HEIGHT * (2 + 2 + 1) + 2 * 9 * 8,
        }
        unidepth = TeacherConfig(**{**params_cfg.to_dict(), "backend": "unidepth", "device": "cpu",
                                    "batch_size": 1})
        try:
            results["backends"]["unidepth"] = {
                **bench_backend(unidepth, prepared, UNIDEPTH_FRAMES), "weights": unidepth.weights,
                "resolution_level": unidepth.resolution_level,
            }
        except (ImportError, OSError, RuntimeError, ValueError) as exc:
            reason = "not installed" if isinstance(exc, ImportError) else f"failed to load: {exc}"
            results["backends"]["unidepth"] = {"status": reason.splitlines()[0][:200]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_results("bench_teacher", results, markdown(results))
    return results


def markdown(results: dict) -> str:
    rows = ["| what | frames/s (CPU) | notes |", "|---|---|---|"]
    for name, r in results["backends"].items():
        fps = r.get("frames_per_s", "—")
        note = r.get("status") or f"{r['frames']} frames"
        rows.append(f"| teacher `{name}` predict | {fps} | {note} |")
    s = results["stage_synthetic"]
    rows.append(f"| `teacher` stage, synthetic (read + predict + mask + write) | {s['frames_per_s']} | "
                f"store {s['store_bytes_per_frame'] / 1024:.1f} KiB/frame "
                f"(uncompressed {s['raw_bytes_per_frame'] / 1024:.1f} KiB) |")
    size = "x".join(map(str, results["size"]))
    text = f"# Teacher benchmark ({size} prepared frames, {results['cpu_threads']} CPU threads)\n\n"
    return text + "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
