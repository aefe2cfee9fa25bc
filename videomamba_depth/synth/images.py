"""The synthetic image set: many independent single-frame scenes in the generic file-list format.

Image ``i`` of the training list is the scene of seed ``seed_start + i`` (validation: ``seed_start + count +
i``), drawn by :func:`~videomamba_depth.synth.scene.sample_scene` with the ``synth`` section's ranges (room
sizes, fields of view, furniture, moving objects, image size) and rendered without flow
(:meth:`Renderer.frame` with ``flow=False``) at one frame of the video that seed would render, drawn from the
seed's own stream (:func:`image_frame`): at time 0 a near-wall camera always looks into the room and a passer
is always near the middle of the view, so time 0 alone would leave the close views out. Every image is its own
room, so a set of 1500 images has 1500 rooms: scene diversity is what pre-training is for. A seed whose scene
cannot be laid out (no moving object fits its room: :class:`SceneLayoutError`, about 1 seed in 1000 with the
default ranges) is left out of its list, so a list may hold a few images fewer than ``count`` / ``val_count``;
which ones is fixed by the params. The seeds must not meet any video seed of ``synth.videos`` (held-out videos
included), which :func:`check_disjoint_seeds` enforces.

Output (``out_dir``, default ``data/synth_images``), the file-list format of ``videomamba_depth.datasets``:
``rgb/<seed>.png`` (8-bit RGB), ``depth/<seed>.npy`` (float32 z-depth, metres, > 0 everywhere),
``K/<seed>.npy`` (3x3 float64, pixels), ``train.txt`` and ``val.txt``. The folder is written under a
temporary name and renamed when complete, and its bytes depend only on the params (not on ``processes``).
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from videomamba_depth.config import ConfigError, StageConfig
from videomamba_depth.datasets.filelist import write_filelist, write_image_sample
from videomamba_depth.synth.render import Frame, Renderer
from videomamba_depth.synth.scene import SceneLayoutError, SynthConfig, sample_scene
from videomamba_depth.zarrio import atomic_directory

TRAIN_LIST, VAL_LIST = "train.txt", "val.txt"
# Seeds rendered per task handed to a worker process: large enough that the hand-off costs nothing next to
# rendering (~0.1 s an image), small enough that the progress bar moves and the two workers finish together.
CHUNK = 16


@dataclass(frozen=True)
class SynthImagesConfig(StageConfig):
    """The ``synth_images`` section of params.yaml (scene ranges come from the ``synth`` section).

    Attributes:
        count: training images (``train.txt``), seeds ``seed_start .. seed_start + count - 1``.
        val_count: validation images (``val.txt``), the next ``val_count`` seeds.
        seed_start: first seed; the range must not contain any seed of ``synth.videos``.
        processes: worker processes rendering in parallel (the output does not depend on it).
    """

    count: int = 1500
    val_count: int = 100
    seed_start: int = 100_000
    processes: int = 2

    def __post_init__(self) -> None:
        if self.count < 1 or self.val_count < 1:
            raise ValueError(f"count and val_count must be >= 1, got {self.count} and {self.val_count}")
        if self.seed_start < 0:
            raise ValueError(f"seed_start must be >= 0, got {self.seed_start}")
        if self.processes < 1:
            raise ValueError(f"processes must be >= 1, got {self.processes}")

    @property
    def train_seeds(self) -> range:
        return range(self.seed_start, self.seed_start + self.count)

    @property
    def val_seeds(self) -> range:
        return range(self.seed_start + self.count, self.seed_start + self.count + self.val_count)


def check_disjoint_seeds(config: SynthImagesConfig, synth: SynthConfig) -> None:
    """Raise :class:`ConfigError` when an image seed is also a video seed of ``synth.videos`` (same seed,
    same scene: a held-out video's room would be trained on)."""
    seeds = range(config.seed_start, config.seed_start + config.count + config.val_count)
    shared = sorted(name for name, seed in synth.videos.items() if seed in seeds)
    if shared:
        raise ConfigError(
            f"synth_images: seeds {seeds.start}..{seeds.stop - 1} include the seeds of the videos {shared} "
            f"(data/synth_videos.yaml); move synth_images.seed_start past {max(synth.videos.values())}"
        )


def write_synth_images(config: SynthImagesConfig, synth: SynthConfig, out_dir: str | Path) -> Path:
    """Render the image set into ``out_dir`` (module docstring), replacing it atomically; returns it."""
    check_disjoint_seeds(config, synth)
    out_dir = Path(out_dir)
    seeds = [*config.train_seeds, *config.val_seeds]
    chunks = [seeds[i : i + CHUNK] for i in range(0, len(seeds), CHUNK)]
    with atomic_directory(out_dir) as tmp:
        render = partial(_render_chunk, synth, tmp)
        progress = tqdm(total=len(seeds), desc="synth_images", unit="image")
        rows: list[tuple[Path, ...] | None] = []
        if config.processes == 1:
            results = map(render, chunks)
        else:
            # fork: workers inherit the imported renderer (no re-import per process); imap keeps the order.
            pool = multiprocessing.get_context("fork").Pool(config.processes)
            results = pool.imap(render, chunks)
        try:
            for chunk_rows in results:
                rows.extend(chunk_rows)
                progress.update(len(chunk_rows))
        finally:
            if config.processes > 1:
                pool.terminate()
            progress.close()
        skipped = [seed for seed, row in zip(seeds, rows, strict=True) if row is None]
        if skipped:
            print(f"synth_images: {len(skipped)} seeds skipped (no room for a moving object): {skipped}",
                  file=sys.stderr)
        write_filelist(tmp / TRAIN_LIST, [row for row in rows[: config.count] if row is not None])
        write_filelist(tmp / VAL_LIST, [row for row in rows[config.count :] if row is not None])
    return out_dir


def image_frame(seed: int, num_frames: int) -> int:
    """The frame of its video that the image of ``seed`` shows: uniform over ``num_frames``, from a random
    stream of its own (entropy ``[seed, 1]``, apart from the scene's ``SeedSequence(seed)`` streams)."""
    return int(np.random.default_rng([seed, 1]).integers(num_frames))


def render_image(synth: SynthConfig, seed: int) -> Frame | None:
    """The single frame of the scene of ``seed``: a :class:`~videomamba_depth.synth.render.Frame` at
    :func:`image_frame`, without flow; None when the scene cannot be laid out (:class:`SceneLayoutError`)."""
    try:
        scene = sample_scene(synth, seed)
    except SceneLayoutError:
        return None
    return Renderer(scene).frame(image_frame(seed, scene.num_frames), flow=False)


def _render_chunk(synth: SynthConfig, folder: Path, seeds: Sequence[int]) -> list[tuple[Path, ...] | None]:
    rows = []
    for seed in seeds:
        frame = render_image(synth, seed)
        if frame is None:
            rows.append(None)
        else:
            rows.append(write_image_sample(folder, f"{seed:07d}", frame.rgb, frame.depth, frame.K))
    return rows
