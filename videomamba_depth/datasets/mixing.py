"""A weighted, reproducible, DDP-shardable mixture of image datasets: sampler, augmentation, collation.

What is drawn at every step is a pure function of ``(seed, step)`` (:class:`MixedImageSampler`), like the
video ``train`` stage's :class:`~videomamba_depth.training.data.StepPlan`: a resumed run sees exactly the
samples, and the augmentations, of an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from videomamba_depth.datasets.base import ImageDepthDataset
from videomamba_depth.training.data import flip_K, photometric

# Seed purposes, so the streams of one seed never overlap.
_CHOICE, _ORDER, _AUGMENT, _AUGMENT_ITEM = 0, 1, 2, 3


class ImageKey(NamedTuple):
    """One drawn sample: item ``index`` of dataset number ``dataset``; ``draw`` is its position in the run
    (``step * global batch + slot``), unique per draw, which seeds its augmentation."""

    dataset: int
    index: int
    draw: int


class MixedImageSampler:
    """Batch sampler over a mixture: ``batch_size`` :class:`ImageKey` s per step for process ``rank``.

    At every step the ``batch_size * world_size`` slots of the global batch each pick a dataset with
    probability proportional to ``weights``; each dataset is walked in a fresh random order per pass
    (without replacement within a pass, so every item is seen once before any repeats). Process ``rank``
    takes slots ``rank, rank + world_size, ...``: the shares of the processes are disjoint and together
    are the global batch. Steps before ``start`` are replayed (cheap: no data is read), so resuming at
    ``start`` gives the same keys as an uninterrupted run.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        weights: Sequence[float],
        *,
        batch_size: int,
        seed: int,
        steps: int,
        start: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if len(lengths) != len(weights) or not lengths:
            raise ValueError(f"need one weight per dataset: {len(lengths)} lengths, {len(weights)} weights")
        w = np.asarray(weights, dtype=np.float64)
        if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {list(weights)}")
        if any(n <= 0 for n, wi in zip(lengths, w, strict=True) if wi > 0):
            raise ValueError(f"a dataset with a positive weight is empty (lengths {list(lengths)})")
        if batch_size <= 0 or world_size <= 0 or not 0 <= rank < world_size or not 0 <= start <= steps:
            raise ValueError(f"bad batch_size={batch_size}, rank={rank}/{world_size}, start={start}/{steps}")
        self.lengths, self.p = list(lengths), w / w.sum()
        self.batch_size, self.seed, self.steps, self.start = batch_size, seed, steps, start
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.steps - self.start

    def __iter__(self) -> Iterator[list[ImageKey]]:
        for _, keys in self.batches():
            yield keys

    def batches(self) -> Iterator[tuple[int, list[ImageKey]]]:
        """``(step, this process's keys)`` for every step from ``start``."""
        global_batch = self.batch_size * self.world_size
        drawn = [0] * len(self.lengths)  # items drawn so far from each dataset (all processes)
        orders: dict[int, tuple[int, np.ndarray]] = {}  # dataset -> (pass, its order)
        for step in range(self.steps):
            choice = np.random.default_rng([self.seed, _CHOICE, step]).choice(
                len(self.lengths), size=global_batch, p=self.p
            )
            if step < self.start:
                for d in choice:
                    drawn[d] += 1
                continue
            keys = []
            for slot, d in enumerate(choice.tolist()):
                n = self.lengths[d]
                epoch, position = divmod(drawn[d], n)
                if orders.get(d, (-1,))[0] != epoch:
                    orders[d] = (epoch, np.random.default_rng([self.seed, _ORDER, d, epoch]).permutation(n))
                keys.append(ImageKey(d, int(orders[d][1][position]), step * global_batch + slot))
                drawn[d] += 1
            yield step, keys[self.rank :: self.world_size]


def augment(
    sample: dict[str, torch.Tensor], rng: np.random.Generator, hflip: float, color_jitter: float,
) -> dict[str, torch.Tensor]:
    """A sample (:class:`ImageDepthDataset` dict), mirrored left-right with probability ``hflip`` and with a
    brightness gain and a gamma from ``[1 - color_jitter, 1 + color_jitter]`` (as the video ``train``
    stage: ``255 * gain * (rgb / 255) ** gamma``). Mirroring moves ``K`` (:func:`flip_K`) and the point
    pairs (u -> W - 1 - u). Always draws three numbers from ``rng``, whatever is applied.
    """
    flip = bool(rng.random() < hflip)
    gain, gamma = rng.uniform(-1.0, 1.0, 2) * color_jitter + 1.0
    out = dict(sample)
    width = out["rgb"].shape[-1]
    if flip:
        for key in ("rgb", "depth", "valid", "image"):
            out[key] = torch.flip(out[key], dims=(-1,))
        if bool(out["has_K"]):
            out["K"] = torch.from_numpy(flip_K(out["K"].numpy(), width).astype(np.float32))
        pairs = out["pairs"].clone()
        pairs[:, [0, 2]] = width - 1 - pairs[:, [0, 2]]
        out["pairs"] = pairs
    if gain != 1.0 or gamma != 1.0:
        out["rgb"] = torch.from_numpy(photometric(out["rgb"].numpy(), float(gain), float(gamma)))
    return out


def collate_images(samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack samples into a batch.

    ``rgb`` ``(B, 3, H, W)``, ``depth`` / ``valid`` / ``image`` ``(B, H, W)``: images of different sizes are
    zero-padded on the right and bottom to the largest (``valid`` and ``image`` False there; ``K`` is
    unchanged by such padding).
    ``pairs`` ``(B, P, 5)`` padded with zeros to the most pairs of a sample, ``pairs_valid`` ``(B, P)`` bool
    marks the real ones. Every other key is stacked as is.
    """
    height = max(s["rgb"].shape[-2] for s in samples)
    width = max(s["rgb"].shape[-1] for s in samples)
    num_pairs = max(s["pairs"].shape[0] for s in samples)

    def pad_image(x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, width - x.shape[-1], 0, height - x.shape[-2]))

    batch = {}
    for key in samples[0]:
        if key in ("rgb", "depth", "valid", "image"):
            batch[key] = torch.stack([pad_image(s[key]) for s in samples])
        elif key == "pairs":
            batch[key] = torch.stack([F.pad(s[key], (0, 0, 0, num_pairs - s[key].shape[0])) for s in samples])
            batch["pairs_valid"] = torch.stack([torch.arange(num_pairs) < s[key].shape[0] for s in samples])
        else:
            batch[key] = torch.stack([s[key] for s in samples])
    return batch


class MixedImageDataset(Dataset):
    """Several image datasets behind one index: ``mixed[ImageKey(d, i, draw)]`` is ``datasets[d][i]``,
    augmented (:func:`augment`) with a generator seeded by ``(seed, draw)``, plus ``dataset`` and ``index``
    as 0-dim int64 tensors. A plain ``(d, i)`` key gets the augmentation seeded by ``(seed, d, i)``."""

    def __init__(
        self, datasets: Sequence[ImageDepthDataset], *, hflip: float = 0.0, color_jitter: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.datasets = list(datasets)
        self.hflip, self.color_jitter, self.seed = hflip, color_jitter, seed

    def __len__(self) -> int:
        return sum(len(d) for d in self.datasets)

    def __getitem__(self, key: tuple[int, ...]) -> dict[str, torch.Tensor]:
        d, i = int(key[0]), int(key[1])
        sample = self.datasets[d][i]
        if self.hflip > 0 or self.color_jitter > 0:
            entropy = [self.seed, _AUGMENT, int(key[2])] if len(key) > 2 else [self.seed, _AUGMENT_ITEM, d, i]
            sample = augment(sample, np.random.default_rng(entropy), self.hflip, self.color_jitter)
        return {**sample, "dataset": torch.tensor(d), "index": torch.tensor(i)}
