"""Precompute throughput over worker processes: the teacher and flow stages with 1 and with N workers.

The stages run as DVC runs them (``python -m stages.teacher``, ``python -m stages.flow``), in a temporary
folder that links the prepared stores of ``dvc repro`` (``data/prepared``) and holds params.yaml with
``precompute.workers`` set; the backends are params.yaml's (the synthetic teacher and DIS by default). The
worker start-up (the elastic launcher spawns and imports) is part of the time. The stores written with N
workers must be byte-identical to those written with one.

Two runs, over the first 12 and the first 48 videos of the manifest: the extra frames over the extra time
are the throughput, free of the fixed start-up. Run after ``dvc repro``: ``python -m bench.bench_precompute``
(about 4 min on 2 idle cores). Results go to bench/results/bench_precompute.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.common import PARAMS, write_results
from videomamba_depth.manifest import MANIFEST_FILE, load_manifest, write_manifest
from videomamba_depth.zarrio import PACKED_SUFFIX, node_metadata

REPO = PARAMS.parent


def stage_seconds(folder: Path, stage: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=folder, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def run_precompute(root: Path, names: list[str], workers: int) -> tuple[dict[str, float], dict]:
    """Teacher then flow over ``names`` with ``workers`` processes; (seconds per stage, written files)."""
    folder = root / f"workers_{workers}"
    (folder / "data" / "prepared").mkdir(parents=True)
    for name in names:
        store = f"{name}{PACKED_SUFFIX}"
        (folder / "data" / "prepared" / store).symlink_to(REPO / "data" / "prepared" / store)
    params = yaml.safe_load(PARAMS.read_text())
    params["precompute"] = {"workers": workers}
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    manifest = load_manifest(REPO / MANIFEST_FILE)
    write_manifest({name: manifest[name].to_dict() for name in names}, folder / MANIFEST_FILE)
    seconds = {stage: stage_seconds(folder, stage) for stage in ("teacher", "flow")}
    return seconds, {kind: files(folder / "data" / kind) for kind in ("teacher", "flow")}


def store_frames(name: str) -> int:
    return node_metadata(REPO / "data" / "prepared" / f"{name}{PACKED_SUFFIX}" / "rgb")["shape"][0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, nargs=2, default=[12, 48],
                        help="a small and a large run: the first N videos of the manifest")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    manifest = list(load_manifest(REPO / MANIFEST_FILE))
    prepared = REPO / "data" / "prepared"
    missing = [n for n in manifest[: max(args.videos)] if not (prepared / f"{n}{PACKED_SUFFIX}").is_file()]
    if missing:
        raise SystemExit(f"data/prepared: no store for {', '.join(missing)}; run `dvc repro prepare` first")
    runs: dict[int, dict[int, dict[str, float]]] = {}
    frames: dict[int, int] = {}
    identical = True
    with tempfile.TemporaryDirectory(prefix="bench_precompute_") as tmp:
        for n in args.videos:
            names = manifest[:n]
            frames[n] = sum(store_frames(name) for name in names)
            runs[n] = {}
            stores = {}
            for workers in (1, args.workers):
                runs[n][workers], stores[workers] = run_precompute(Path(tmp) / f"n{n}", names, workers)
            identical &= stores[1] == stores[args.workers]
    small, large = args.videos
    results: dict = {"videos": args.videos, "frames": [frames[small], frames[large]], "workers": args.workers,
                     "cpu_count": os.cpu_count(), "seconds": {str(n): runs[n] for n in args.videos},
                     "byte_identical": identical}
    lines = [
        f"Teacher and flow stages (params.yaml's backends) over the first {small} and {large} videos "
        f"({frames[small]} and {frames[large]} frames), 1 and {args.workers} worker processes, "
        f"{os.cpu_count()} CPU cores. Throughput: the extra frames of the large run over its extra time (the "
        "start-up, imports and worker spawning, cancels out); fixed cost: what is left of the large run's "
        "time. "
        f"Stores byte-identical between worker counts: {identical}.",
        "",
        f"| stage | wall, {large} videos: 1 / {args.workers} workers | throughput, frames/s: 1 / "
        f"{args.workers} workers | throughput ratio | fixed cost: 1 / {args.workers} workers |",
        "|---|---:|---:|---:|---:|",
    ]
    for stage in ("teacher", "flow", "both"):
        def seconds(n: int, w: int, stage: str = stage) -> float:
            return sum(runs[n][w].values()) if stage == "both" else runs[n][w][stage]

        fps = {w: (frames[large] - frames[small]) / (seconds(large, w) - seconds(small, w))
               for w in (1, args.workers)}
        fixed = {w: seconds(large, w) - frames[large] / fps[w] for w in fps}
        results[stage] = {"frames_per_s": fps, "fixed_s": fixed, "ratio": fps[args.workers] / fps[1]}
        lines.append(f"| {stage} | {seconds(large, 1):.1f} / {seconds(large, args.workers):.1f} s | "
                     f"{fps[1]:.0f} / {fps[args.workers]:.0f} | {fps[args.workers] / fps[1]:.2f}x | "
                     f"{fixed[1]:.1f} / {fixed[args.workers]:.1f} s |")
    write_results("bench_precompute", results, "\n".join(lines) + "\n")
    if not identical:
        raise SystemExit("the stores differ between worker counts")


if __name__ == "__main__":
    main()
