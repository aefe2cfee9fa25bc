"""Streaming state of the student: one temporal-SSM ``ScaleState`` per temporal scale, for B streams."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from videomamba_depth.ssm import ScaleState, batch_token_mask


@dataclasses.dataclass(frozen=True, eq=False)
class StudentStates:
    """Immutable state of ``batch`` video streams: every operation returns a new ``StudentStates``.

    Scale ``names[i]`` has feature maps of ``sizes[i] = (h, w)`` cells and its ``ScaleState`` holds
    ``batch * h * w`` tokens, video ``b`` owning tokens ``[b * h * w, (b + 1) * h * w)``
    (``videomamba_depth.ssm.tokens`` order). A state is tied to a batch size and a feature geometry (the
    padded frame size); the model checks both when it receives one.
    """

    batch: int
    names: tuple[str, ...]
    sizes: tuple[tuple[int, int], ...]
    scales: tuple[ScaleState, ...]

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.sizes) == len(self.scales):
            raise ValueError(
                f"{len(self.names)} names, {len(self.sizes)} sizes and {len(self.scales)} scale states"
            )
        for name, (h, w), state in zip(self.names, self.sizes, self.scales, strict=True):
            if state.num_tokens != self.batch * h * w:
                raise ValueError(
                    f"state of scale '{name}' has {state.num_tokens} tokens, expected batch {self.batch} "
                    f"x {h} x {w} = {self.batch * h * w}"
                )

    def __getitem__(self, name: str) -> ScaleState:
        try:
            return self.scales[self.names.index(name)]
        except ValueError:
            raise KeyError(f"no state for scale '{name}'; scales: {list(self.names)}") from None

    def items(self) -> Iterator[tuple[str, ScaleState]]:
        """``(scale name, ScaleState)`` pairs, in the model's scale order."""
        return zip(self.names, self.scales, strict=True)

    def geometry(self) -> dict[str, tuple[int, int]]:
        """Scale name -> ``(h, w)`` feature map size these states are for."""
        return dict(zip(self.names, self.sizes, strict=True))

    def _map(self, fn: Callable[[ScaleState, tuple[int, int]], ScaleState]) -> StudentStates:
        scales = tuple(fn(state, size) for state, size in zip(self.scales, self.sizes, strict=True))
        return dataclasses.replace(self, scales=scales)

    def detach(self) -> StudentStates:
        """Cut the autograd graph (truncated BPTT between training chunks)."""
        return self._map(lambda state, _: state.detach())

    def clone(self) -> StudentStates:
        """Independent copy (a snapshot to restore later)."""
        return self._map(lambda state, _: state.clone())

    def to(self, device: torch.device | str) -> StudentStates:
        """Move to a device; dtypes are kept (SSM states stay fp32)."""
        return self._map(lambda state, _: state.to(device))

    def reset(self, batch_mask: Tensor) -> StudentStates:
        """Zero (initial) state for the videos where ``batch_mask (B,)`` bool is true (a new video starts)."""
        if batch_mask.dtype != torch.bool or tuple(batch_mask.shape) != (self.batch,):
            raise ValueError(
                f"batch mask must be a bool tensor of shape ({self.batch},), "
                f"got {batch_mask.dtype} {tuple(batch_mask.shape)}"
            )
        return self._map(lambda state, size: state.reset(batch_token_mask(batch_mask, *size)))

    @property
    def nbytes(self) -> int:
        """Memory held by the states, in bytes."""
        return sum(state.nbytes for state in self.scales)
