"""Training data: clips read from the prepared, teacher and flow stores, and a deterministic step plan.

The dataset reads only what training may use: prepared RGB, the teacher's depth/confidence/validity and
``K_used``, and the flow stage's per-pair masks. The prepared store's ``gt`` group (ground truth) is never
opened. Stores are opened lazily in the process that reads them: a DataLoader worker forked from a process
that had stores open reopens its own (zarr runs an event-loop thread that a forked child must not share).

What is trained at every step is a pure function of ``(seed, step)`` (:class:`StepPlan`): which steps are
single-frame steps, each epoch's clip order, and each process's share under DDP. A resumed run therefore
sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import Dataset

from videomamba_depth.manifest import store_path
from videomamba_depth.zarrio import StoreError, open_store, require_arrays

PREPARED_ARRAYS = ("rgb",)
TEACHER_ARRAYS = ("depth", "confidence", "valid", "K_used")
FLOW_ARRAYS = ("consistent", "static", "flow_fwd")


@dataclass(frozen=True)
class TrainingVideo:
    """One training video: its stores, length and frame size.

    The first ``train_frames`` frames are trained on; the last ``val_frames`` (``num_frames - train_frames``)
    are only validated on.
    """

    name: str
    prepared: Path
    teacher: Path
    flow: Path
    num_frames: int
    train_frames: int
    height: int
    width: int

    @property
    def val_frames(self) -> int:
        return self.num_frames - self.train_frames


@dataclass(frozen=True)
class Item:
    """``length`` consecutive frames from ``start`` of video number ``video`` of the dataset, augmented.

    ``flip``: mirror left-right (K follows). ``gain``, ``gamma``: photometric change of the RGB,
    ``255 * gain * (rgb / 255) ** gamma``, one value for the whole clip so it adds no flicker.
    """

    video: int
    start: int
    length: int
    flip: bool = False
    gain: float = 1.0
    gamma: float = 1.0


def find_videos(names: Sequence[str], val_frames: int) -> list[TrainingVideo]:
    """Check the stores of ``names`` (``data/{prepared,teacher,flow}/<name>.zarr.zip``) and describe them.

    The last ``val_frames`` frames of each video are held out for validation, except in a video of at most
    ``val_frames`` frames (e.g. a single image), which is trained on whole and not validated
    (:func:`usage_notes` says so). Raises a :class:`StoreError` naming the stores when one is missing, lacks
    an array, or disagrees with the others on frame count or size.
    """
    videos = []
    for name in names:
        paths = {kind: store_path(kind, name) for kind in ("prepared", "teacher", "flow")}
        prepared = open_store(paths["prepared"], "prepared")
        teacher = open_store(paths["teacher"], "teacher")
        flow = open_store(paths["flow"], "flow")
        require_arrays(prepared, paths["prepared"], PREPARED_ARRAYS)
        require_arrays(teacher, paths["teacher"], TEACHER_ARRAYS)
        require_arrays(flow, paths["flow"], FLOW_ARRAYS)
        num_frames, height, width = prepared["rgb"].shape[:3]
        if teacher["depth"].shape != (num_frames, height, width):
            raise StoreError(
                f"{paths['teacher']}: depth {teacher['depth'].shape} does not match the {num_frames} frames "
                f"of {height}x{width} in {paths['prepared']}; re-run: dvc repro -f -s teacher"
            )
        if flow["static"].shape != (max(num_frames - 1, 0), height, width):
            raise StoreError(
                f"{paths['flow']}: static {flow['static'].shape} does not match the {num_frames} frames of "
                f"{height}x{width} in {paths['prepared']}; re-run: dvc repro -f -s flow"
            )
        if num_frames < 1:
            raise StoreError(f"{paths['prepared']}: no frames; re-run: dvc repro -f -s prepare")
        train_frames = num_frames - val_frames if num_frames > val_frames else num_frames
        videos.append(TrainingVideo(name, *paths.values(), num_frames, train_frames, height, width))
    return videos


def prepared_preprocessing(videos: Sequence[TrainingVideo]) -> dict[str, int] | None:
    """``{"long_edge", "pad_multiple"}`` the videos were prepared with (the ``prepare`` stage's params, from
    the prepared stores' provenance), saved with the student so ``infer`` prepares videos the same way.

    None when a store does not record them (stores not written by the ``prepare`` stage); a
    :class:`StoreError` when the videos were prepared differently (one model, one input geometry).
    """
    found: dict[tuple[int, int], str] = {}
    for v in videos:
        params = open_store(v.prepared, "prepared").attrs.get("provenance", {}).get("params", {})
        if "long_edge" not in params or "pad_multiple" not in params:
            return None
        found.setdefault((params["long_edge"], params["pad_multiple"]), str(v.prepared))
    if len(found) > 1:
        listed = "; ".join(f"{path}: long_edge={le}, pad_multiple={pm}" for (le, pm), path in found.items())
        raise StoreError(f"training videos were prepared with different geometries ({listed}); "
                         "re-run prepare")
    if not found:
        return None
    (long_edge, pad_multiple), = found
    return {"long_edge": long_edge, "pad_multiple": pad_multiple}


def usage_notes(videos: Sequence[TrainingVideo], clip_len: int, p_single_frame: float) -> list[str]:
    """One line per video that is not used in full: too short to hold out validation frames, to give a
    clip of ``clip_len`` training frames (then only single-frame steps use it), or to be used at all."""
    notes = []
    for v in videos:
        if v.val_frames == 0:
            notes.append(
                f"{v.name}: {v.num_frames} frame(s), too few to hold out validation frames: trained on "
                "whole, not validated"
            )
        if v.train_frames < clip_len:
            use = "only single-frame steps use it" if p_single_frame > 0 else "unused (p_single_frame is 0)"
            notes.append(
                f"{v.name}: {v.train_frames} training frame(s), fewer than clip_len={clip_len}; {use}"
            )
    return notes


class ClipDataset(Dataset):
    """Clips as dicts of tensors; indexed by :class:`Item`.

    ``dataset[Item(v, s, n)]``:
        ``rgb (n, 3, H, W)`` uint8, ``K (n, 3, 3)`` float32 (the teacher's ``K_used``), ``depth (n, H, W)``
        float32 metres, ``confidence (n, H, W)`` float32, ``valid (n, H, W)`` bool, and for the ``n - 1``
        pairs inside the clip ``consistent`` and ``static`` ``(n - 1, H, W)`` bool (and, with ``with_flow``,
        ``flow_fwd`` ``(n - 1, H, W, 2)`` float32 pixels); ``video`` and ``start`` as 0-dim int64.
    """

    def __init__(self, videos: Sequence[TrainingVideo], with_flow: bool = False) -> None:
        self.videos = list(videos)
        self.with_flow = with_flow
        self._pid: int | None = None
        self._stores: dict[int, dict[str, zarr.Group]] = {}

    def __len__(self) -> int:
        return sum(v.num_frames for v in self.videos)

    def _open(self, index: int) -> dict[str, zarr.Group]:
        """The stores of video ``index``, opened on first use in this process: a DDP rank or loader worker
        opens only the videos its clips come from, however many the training set has."""
        # Reopen in every process: a forked worker gets its own stores (and zarr event loop).
        if self._pid != os.getpid():
            self._stores = {}
            self._pid = os.getpid()
        if index not in self._stores:
            v = self.videos[index]
            self._stores[index] = {"prepared": open_store(v.prepared), "teacher": open_store(v.teacher),
                                   "flow": open_store(v.flow)}
        return self._stores[index]

    def __getitem__(self, item: Item) -> dict[str, torch.Tensor]:
        video = self.videos[item.video]
        if not (0 <= item.start and item.start + item.length <= video.num_frames and item.length >= 1):
            raise IndexError(f"{video.name}: frames [{item.start}, {item.start + item.length}) out of range")
        stores = self._open(item.video)
        # Contiguous slices: zarr decodes each chunk once (fancy indexing is ~10x slower).
        frames = slice(item.start, item.start + item.length)
        pairs = slice(item.start, item.start + item.length - 1)
        teacher, flow = stores["teacher"], stores["flow"]
        rgb = stores["prepared"]["rgb"][frames]
        if item.gain != 1.0 or item.gamma != 1.0:
            rgb = photometric(rgb, item.gain, item.gamma)
        sample = {
            "rgb": rgb.transpose(0, 3, 1, 2),
            "K": teacher["K_used"][frames].astype(np.float32),
            "depth": teacher["depth"][frames].astype(np.float32),
            "confidence": teacher["confidence"][frames].astype(np.float32),
            "valid": teacher["valid"][frames],
            "consistent": flow["consistent"][pairs],
            "static": flow["static"][pairs],
        }
        if self.with_flow:
            sample["flow_fwd"] = flow["flow_fwd"][pairs].astype(np.float32)
        if item.flip:
            sample = {k: v if k in ("K", "flow_fwd") else v[..., ::-1] for k, v in sample.items()}
            if self.with_flow:  # (n - 1, H, W, 2): mirror the x axis, and du changes sign
                sample["flow_fwd"] = sample["flow_fwd"][:, :, ::-1] * np.array([-1.0, 1.0], dtype=np.float32)
            sample["K"] = flip_K(sample["K"], video.width)
        out = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sample.items()}
        return {**out, "video": torch.tensor(item.video), "start": torch.tensor(item.start)}


def photometric(rgb: np.ndarray, gain: float, gamma: float) -> np.ndarray:
    """uint8 RGB (any shape) -> ``255 * gain * (rgb / 255) ** gamma``, rounded and clipped to uint8."""
    return np.clip(255.0 * gain * (rgb / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)


def flip_K(K: np.ndarray, width: int) -> np.ndarray:
    """Intrinsics ``(..., 3, 3)`` of left-right mirrored frames of ``width`` pixels.

    Pixel u becomes ``width - 1 - u`` (pixel centres at integers): with x' = -x in the mirrored camera,
    ``u' = fx x'/z - s y/z + (width - 1 - cx)``, so cx moves to ``width - 1 - cx``, fx stays and the skew
    changes sign.
    """
    out = np.array(K, copy=True)
    out[..., 0, 2] = width - 1 - out[..., 0, 2]
    out[..., 0, 1] = -out[..., 0, 1]
    return out


@dataclass(frozen=True)
class StepBatch:
    """What one process trains on at one step: clips (``single_frame`` False) or single frames."""

    step: int
    epoch: int
    single_frame: bool
    items: tuple[Item, ...]


class StepPlan:
    """The batches of steps ``start..steps-1`` for process ``rank`` of ``world_size``; a batch sampler.

    Clip steps walk through epochs: each epoch lists every clip start ``offset + k * clip_stride`` (offset
    drawn per epoch below ``clip_stride``) of every video's training frames, shuffles the list, splits it
    into batches of ``batch_size * world_size`` clips of one frame size, and gives each process its share.
    A single-frame step (probability ``p_single_frame``, drawn per step) instead samples
    ``batch_size * clip_len`` random training frames of one frame size per process. Every clip or frame is
    mirrored with probability ``hflip`` and gets a gain and a gamma drawn from ``[1 - color_jitter,
    1 + color_jitter]``; all draws happen before the batch is split between processes.
    """

    def __init__(
        self,
        videos: Sequence[TrainingVideo],
        *,
        clip_len: int,
        clip_stride: int,
        batch_size: int,
        p_single_frame: float,
        seed: int,
        steps: int,
        hflip: float = 0.0,
        color_jitter: float = 0.0,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.videos = list(videos)
        self.clip_len, self.clip_stride, self.batch_size = clip_len, clip_stride, batch_size
        self.p_single_frame, self.seed = p_single_frame, seed
        self.hflip, self.color_jitter = hflip, color_jitter
        self.steps, self.start, self.rank, self.world_size = steps, start, rank, world_size
        sizes = sorted({(v.height, v.width) for v in self.videos})
        self._buckets = [[i for i, v in enumerate(self.videos) if (v.height, v.width) == s] for s in sizes]
        if p_single_frame < 1 and not any(v.train_frames >= clip_len for v in self.videos):
            raise ValueError(
                f"no training video has clip_len={clip_len} training frames (lengths after holding out the "
                f"validation frames: {[v.train_frames for v in self.videos]})"
            )

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[Item]]:
        for batch in self.batches():
            yield list(batch.items)

    def batches(self) -> Iterator[StepBatch]:
        """The :class:`StepBatch` of every step from ``start``; earlier steps are replayed, not loaded."""
        epoch, clip_batches = -1, []
        for step in range(self.steps):
            single = self.p_single_frame > 0 and self._rng("single", step).random() < self.p_single_frame
            if single:
                items = self._single_frames(step)
            else:
                if not clip_batches:
                    epoch += 1
                    clip_batches = self._epoch(epoch)
                items = clip_batches.pop()
            if step >= self.start:
                yield StepBatch(step, max(epoch, 0), single, items)

    def _rng(self, purpose: str, index: int) -> np.random.Generator:
        # Shared by all processes: every rank draws the same epochs and single-frame decisions.
        key = {"single": 0, "frames": 1, "epoch": 2}[purpose]
        return np.random.default_rng([self.seed, key, index])

    def _epoch(self, epoch: int) -> list[tuple[Item, ...]]:
        """This process's clip batches of one epoch, in reverse order of use (popped from the end)."""
        rng = self._rng("epoch", epoch)
        offset = int(rng.integers(self.clip_stride))
        global_batch = self.batch_size * self.world_size
        batches = []
        for bucket in self._buckets:
            clips = [
                Item(v, s, self.clip_len)
                for v in bucket
                for s in range(offset, self.videos[v].train_frames - self.clip_len + 1, self.clip_stride)
            ]
            if len(clips) < global_batch:  # the offset can leave a short video without a clip: wrap to 0
                clips += [
                    Item(v, 0, self.clip_len) for v in bucket if self.videos[v].train_frames >= self.clip_len
                ]
            order = rng.permutation(len(clips))
            # Whole global batches only: the few clips left over are skipped this epoch (the next reshuffles).
            for b in range(len(order) // global_batch):
                picked = order[b * global_batch : (b + 1) * global_batch]
                chunk = [self._augment(clips[i], rng) for i in picked]
                batches.append(tuple(chunk[self.rank :: self.world_size]))
        if not batches:
            raise ValueError(
                f"not enough clips for one batch of {global_batch} clips of {self.clip_len} frames of one "
                f"frame size; lower train.batch_size or train.clip_len"
            )
        return [batches[i] for i in rng.permutation(len(batches))]

    def _single_frames(self, step: int) -> tuple[Item, ...]:
        rng = self._rng("frames", step)
        bucket = self._buckets[int(rng.integers(len(self._buckets)))]
        per_rank = self.batch_size * self.clip_len
        lengths = np.array([self.videos[v].train_frames for v in bucket], dtype=np.float64)
        videos = rng.choice(bucket, size=per_rank * self.world_size, p=lengths / lengths.sum())
        starts = [int(rng.integers(self.videos[v].train_frames)) for v in videos]
        items = [self._augment(Item(int(v), s, 1), rng) for v, s in zip(videos, starts, strict=True)]
        return tuple(items[self.rank :: self.world_size])

    def _augment(self, item: Item, rng: np.random.Generator) -> Item:
        flip, gain, gamma = rng.random() < self.hflip, *rng.uniform(-1.0, 1.0, 2) * self.color_jitter + 1.0
        return dataclasses.replace(item, flip=bool(flip), gain=float(gain), gamma=float(gamma))


def collate(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples into ``(B, N, ...)`` tensors (``video``/``start`` to ``(B,)``)."""
    return {key: torch.stack([s[key] for s in samples]) for key in samples[0]}
