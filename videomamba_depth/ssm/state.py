"""Recurrent state of the temporal SSM: everything needed to continue a stream, per block and per scale.

States are small immutable containers of tensors whose first dimension is the token (one independent
sequence along time, ``L = B * H * W`` for a feature map). Every operation returns a new state; nothing is
updated in place, so a state kept as a snapshot (keyframe anchoring, rollback) stays valid while the stream
goes on.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

S = TypeVar("S", bound="_TokenStateOps")


class _TokenStateOps:
    """Token-wise operations shared by ``BlockState`` and ``ScaleState``, built on ``_apply``."""

    def _apply(self: S, fn: Callable[..., Tensor], *others: S) -> S:
        """New state with ``fn(tensor, *matching tensors of others)`` applied to every tensor."""
        raise NotImplementedError

    def tensors(self) -> list[Tensor]:
        """All tensors of the state, in a fixed order."""
        raise NotImplementedError

    def detach(self: S) -> S:
        """Cut the autograd graph (truncated BPTT between training chunks)."""
        return self._apply(Tensor.detach)

    def clone(self: S) -> S:
        """Independent copy (snapshot to restore later)."""
        return self._apply(Tensor.clone)

    def to(self: S, device: torch.device | str) -> S:
        """Move to a device; dtypes are kept (the SSM state stays fp32)."""
        return self._apply(lambda t: t.to(device))

    def select(self: S, index: Tensor | slice) -> S:
        """State of a subset of tokens: ``index`` (slice, indices or bool mask) along the token dimension."""
        return self._apply(lambda t: t[index])

    def where(self: S, mask: Tensor, other: S) -> S:
        """Token-wise merge: ``other``'s state where ``mask`` (L,) is true, this state elsewhere (restore)."""
        self._check_mask(mask)
        return self._apply(lambda t, o: torch.where(_per_token(mask, t), o, t), other)

    def reset(self: S, mask: Tensor) -> S:
        """Zero (initial) state where ``mask`` (L,) is true, e.g. for a batch element starting a new video."""
        self._check_mask(mask)
        return self._apply(lambda t: t.masked_fill(_per_token(mask, t), 0))

    @property
    def num_tokens(self) -> int:
        return self.tensors()[0].shape[0]

    @property
    def nbytes(self) -> int:
        """Memory held by the state, in bytes."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    def _check_mask(self, mask: Tensor) -> None:
        if mask.dtype != torch.bool or tuple(mask.shape) != (self.num_tokens,):
            raise ValueError(
                f"token mask must be a bool tensor of shape ({self.num_tokens},), "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )


def _per_token(mask: Tensor, t: Tensor) -> Tensor:
    """(L,) mask broadcastable against ``t`` (L, ...)."""
    return mask.to(t.device).reshape(-1, *([1] * (t.ndim - 1)))


@dataclasses.dataclass(frozen=True, eq=False)
class BlockState(_TokenStateOps):
    """State of one ``MambaBlock``.

    Attributes:
        conv: (L, d_conv - 1, conv_dim) the last ``d_conv - 1`` inputs of the causal conv (activation dtype).
        ssm: (L, nheads, headdim, d_state) SSM state, fp32 (the layout of mamba_ssm's ``initial_states``).
    """

    conv: Tensor
    ssm: Tensor

    def _apply(self, fn: Callable[..., Tensor], *others: BlockState) -> BlockState:
        return BlockState(fn(self.conv, *(o.conv for o in others)), fn(self.ssm, *(o.ssm for o in others)))

    def tensors(self) -> list[Tensor]:
        return [self.conv, self.ssm]


@dataclasses.dataclass(frozen=True, eq=False)
class ScaleState(_TokenStateOps):
    """State of one ``TemporalMambaScale``: one ``BlockState`` per block, in order."""

    blocks: tuple[BlockState, ...]

    def _apply(self, fn: Callable[..., Tensor], *others: ScaleState) -> ScaleState:
        if any(len(o.blocks) != len(self.blocks) for o in others):
            raise ValueError("states with different numbers of blocks")
        return ScaleState(
            tuple(b._apply(fn, *(o.blocks[i] for o in others)) for i, b in enumerate(self.blocks))
        )

    def tensors(self) -> list[Tensor]:
        return [t for b in self.blocks for t in b.tensors()]
