"""Numerics shared by the loss terms: fp32 islands, masked logs and masked means.

Every loss term works on batched video tensors ``(B, N, H, W)`` and reduces to a 0-dim fp32 tensor. Masked-out
pixels may hold anything (0, negative values, NaN): they are replaced *before* any nonlinear op, so neither
the loss nor its gradient ever sees them (``where(mask, log(x), 0)`` alone would still back-propagate
``0 * inf = NaN`` through the unused branch).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

# Depths are clamped to at least this (metres) before logs and reciprocals, so a collapsed prediction gives a
# large, finite loss instead of inf/NaN. Far below any depth the pipeline deals with (centimetres and up).
MIN_DEPTH = 1e-4

# Denominators of masked means are clamped to this; an empty mask then gives a loss of exactly 0.
EMPTY_DENOMINATOR = 1e-12


@contextmanager
def fp32_island(device: torch.device) -> Iterator[None]:
    """Disable autocast inside: the loss maths runs in fp32 even when the model runs under bf16/fp16.

    Inputs are also cast with ``.float()`` by each loss; this guard keeps any op that autocast would
    downcast (reductions, matmuls) in fp32 too.
    """
    with torch.autocast(device_type=device.type, enabled=False):
        yield


def masked_log(depth: Tensor, mask: Tensor) -> Tensor:
    """``log(depth)`` (fp32) on ``mask`` and 0 elsewhere, with zero gradient through masked-out pixels."""
    safe = torch.where(mask, depth.float(), 1.0).clamp_min(MIN_DEPTH)
    return torch.where(mask, safe.log(), 0.0)


def masked_reciprocal(depth: Tensor, mask: Tensor) -> Tensor:
    """``1 / depth`` (fp32 disparity, 1/m) on ``mask`` and 0 elsewhere, safe like :func:`masked_log`."""
    safe = torch.where(mask, depth.float(), 1.0).clamp_min(MIN_DEPTH)
    return torch.where(mask, safe.reciprocal(), 0.0)


def pixel_weights(valid: Tensor, confidence: Tensor | None) -> Tensor:
    """fp32 weights: ``confidence`` (or 1) on valid pixels, 0 elsewhere. Same shape as ``valid``."""
    if confidence is None:
        return valid.float()
    return torch.where(valid, confidence.float(), 0.0)


def masked_mean(values: Tensor, weights: Tensor, dim: int | tuple[int, ...] | None = None) -> Tensor:
    """Weighted mean ``sum(w * x) / sum(w)`` over ``dim`` (all dims when None); 0 where ``sum(w) == 0``.

    ``values`` may hold garbage where ``weights == 0``; it is ignored.
    """
    weighted = torch.where(weights > 0, values * weights, 0.0)
    if dim is None:
        return weighted.sum() / weights.sum().clamp_min(EMPTY_DENOMINATOR)
    return weighted.sum(dim) / weights.sum(dim).clamp_min(EMPTY_DENOMINATOR)
