"""Image dataset loaders benchmark: samples/s of each format, and the mixture sampler's replay speed.

Inputs are written on the fly in each format's real layout: 24 images of 640x480 per format (the NYU,
SUN RGB-D and iBims-1 resolution), textured RGB and smooth depth. One sample = read the files, decode,
mask, resize + pad to long edge 224 / multiple 14 (``prepare``'s defaults) and update K; single process.

- samples/s per format (best of 3 passes over the dataset, after one warm-up pass);
- ``augment`` + ``collate_images`` of a batch of 8, ms;
- ``MixedImageSampler`` steps replayed per second when resuming (batch 8, 3 datasets).

Run: ``python -m bench.bench_image_datasets`` (about 20 s on 2 cores). Results go to
bench/results/bench_image_datasets.{json,md}.
"""

from __future__ import annotations

import json
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.common import call_seconds, write_results
from videomamba_depth.camera import make_K
from videomamba_depth.datasets import (
    ImageDatasetConfig,
    MixedImageSampler,
    augment,
    collate_images,
    open_image_dataset,
    write_filelist,
    write_image_sample,
)
from videomamba_depth.datasets.sunrgbd import encode_depth

NUM, WIDTH, HEIGHT = 24, 640, 480
LONG_EDGE, PAD = 224, 14


def image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32) / WIDTH
    base = np.stack([np.sin(6 * u + seed), np.cos(5 * v), np.sin(4 * (u + v))], axis=-1)
    return np.clip(128 + 100 * base + rng.normal(0, 12, (HEIGHT, WIDTH, 1)), 0, 255).astype(np.uint8)


def depth(seed: int) -> np.ndarray:
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    return (2.0 + 1.5 * np.sin(u / 90 + seed) + v / 400).astype(np.float32)


def write_all(root: Path) -> dict[str, dict]:
    """Every format's layout under ``root``; returns the config of each."""
    K = make_K(518.0, 518.0, 319.5, 239.5)
    rows = [write_image_sample(root / "filelist", f"{i:04d}", image(i), depth(i), K) for i in range(NUM)]
    write_filelist(root / "filelist/train.txt", rows)
    nyu = root / "nyu/data/nyu2_train/scene"
    nyu.mkdir(parents=True)
    for i in range(NUM):
        cv2.imwrite(str(nyu / f"{i}.jpg"), image(i))
        cv2.imwrite(str(nyu / f"{i}.png"), np.clip(depth(i) / 10 * 255, 0, 255).astype(np.uint8))
    (root / "nyu/data/nyu2_train.csv").write_text(
        "".join(f"data/nyu2_train/scene/{i}.jpg,data/nyu2_train/scene/{i}.png\n" for i in range(NUM)))
    frames = []
    for i in range(NUM):
        frame = root / "sun" / f"kv1/f{i:04d}"
        for sub in ("image", "depth"):
            (frame / sub).mkdir(parents=True)
        cv2.imwrite(str(frame / "image/x.jpg"), image(i))
        cv2.imwrite(str(frame / "depth/x.png"), encode_depth(depth(i)))
        (frame / "intrinsics.txt").write_text("518 0 320.5\n0 518 240.5\n0 0 1\n")
        frames.append(f"kv1/f{i:04d}")
    (root / "sun/train.json").write_text(json.dumps(frames))
    ib = root / "ibims"
    for sub in ("rgb", "depth", "mask_invalid", "mask_transp"):
        (ib / sub).mkdir(parents=True)
    for i in range(NUM):
        cv2.imwrite(str(ib / f"rgb/s{i}.png"), image(i))
        cv2.imwrite(str(ib / f"depth/s{i}.png"), (depth(i) / 50 * 65535).astype(np.uint16))
        for mask in ("mask_invalid", "mask_transp"):
            cv2.imwrite(str(ib / f"{mask}/s{i}.png"), np.full((HEIGHT, WIDTH), 255, np.uint8))
    (ib / "imagelist.txt").write_text("".join(f"s{i}\n" for i in range(NUM)))
    da = root / "da2k/images"
    da.mkdir(parents=True)
    pairs = [{"point1": [100, 200], "point2": [300, 400], "closer_point": "point1"}] * 2
    for i in range(NUM):
        cv2.imwrite(str(da / f"{i}.jpg"), image(i))
    (root / "da2k/annotations.json").write_text(json.dumps({f"images/{i}.jpg": pairs for i in range(NUM)}))
    return {
        "filelist (png + npy + K)": {"format": "filelist", "root": str(root / "filelist")},
        "nyu_csv (jpg + uint8 png)": {"format": "nyu_csv", "root": str(root / "nyu")},
        "sunrgbd (jpg + uint16 png)": {"format": "sunrgbd", "root": str(root / "sun")},
        "ibims1 (png + png + 2 masks)": {"format": "ibims1", "root": str(ib), "split": "imagelist"},
        "da2k (jpg + pairs)": {"format": "da2k", "root": str(root / "da2k"), "split": "annotations"},
    }


def main() -> None:
    results: dict = {"platform": platform.platform(), "images": f"{NUM} x {WIDTH}x{HEIGHT}",
                     "long_edge": LONG_EDGE, "pad_multiple": PAD, "formats": {}}
    with tempfile.TemporaryDirectory() as tmp:
        configs = write_all(Path(tmp))
        datasets = []
        for label, values in configs.items():
            config = ImageDatasetConfig.from_dict(values)
            ds = open_image_dataset(config, long_edge=LONG_EDGE, pad_multiple=PAD)
            datasets.append(ds)
            best = min(call_seconds(lambda ds=ds: [ds[i] for i in range(len(ds))], repeats=3))
            results["formats"][label] = {"samples_per_s": round(len(ds) / best, 1)}
        samples = [datasets[0][i] for i in range(8)]
        rng = np.random.default_rng(0)
        def batch() -> dict:
            return collate_images([augment(s, rng, hflip=0.5, color_jitter=0.2) for s in samples])

        batch_s = min(call_seconds(batch, repeats=5))
        results["augment_collate_batch8_ms"] = round(1000 * batch_s, 2)
    steps = 20000
    start = time.perf_counter()
    list(MixedImageSampler([5000, 50000, 1000], [1.0, 2.0, 0.5], batch_size=8, seed=0, steps=steps + 1,
                           start=steps))
    results["sampler_replay_steps_per_s"] = round(steps / (time.perf_counter() - start))
    lines = [
        "## Image dataset loaders (`bench_image_datasets`)",
        "",
        f"{NUM} images of {WIDTH}x{HEIGHT} per format, resized + padded to long edge {LONG_EDGE} "
        f"(multiple {PAD}); one process.",
        "",
        "| format | samples/s |",
        "| --- | --- |",
        *(f"| {label} | {r['samples_per_s']} |" for label, r in results["formats"].items()),
        "",
        f"- augment + collate of a batch of 8: {results['augment_collate_batch8_ms']} ms",
        f"- sampler replay when resuming: {results['sampler_replay_steps_per_s']} steps/s (batch 8)",
        "",
    ]
    write_results("bench_image_datasets", results, "\n".join(lines))


if __name__ == "__main__":
    main()
