"""Optional fused CPU scan (``backend='numba'``): the per-frame recurrence compiled, one (token, group) at a
time.

Why a fused loop and not the chunked form on CPU: per frame the SSM does ~2 x headdim x d_state
multiply-adds per (token, head), so it is memory-bound in PyTorch, where every op of the per-frame loop
streams the whole ``(L, H, P, N)`` state through memory (~5 passes per frame), and the chunked form trades
those passes for small batched matmuls (16 x 16 x 32) that run far below the core's peak and do ~1.5x the
arithmetic. Compiled (``numba_kernels``), the recurrence keeps one token's state for a group of heads
(``N x R x P`` fp32, 8 KB at 16 x 4 x 32) in L1 for the whole sequence: each input is read once and each
output written once, and nothing state-sized touches memory between frames.

Same contract and results (up to float rounding) as ``videomamba_depth.ssm.scan.ssd_scan``, with a
hand-written backward (``torch.autograd.Function``), so training, prefill and chunked / carried modes all
run on it. Single-threaded, CPU tensors, fp32 (the callers' fp32 island).

``numba`` is optional: ``pip install 'videomamba-depth[cpu]'`` (``make setup`` installs it). The kernels
compile on first use of a shape (a few seconds), then numba's disk cache serves them.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from torch import Tensor

from videomamba_depth.errors import MissingDependencyError
from videomamba_depth.ssm.scan import LOG_DECAY_FLOOR, _check_shapes

INSTALL_HINT = "pip install 'videomamba-depth[cpu]' (numba>=0.60), or use backend='torch' (same results)."


def require_numba():
    """The ``numba`` module, or a loud ImportError saying how to get it (the one guarded import)."""
    try:
        import numba
    except ImportError as exc:
        raise MissingDependencyError(
            f"backend='numba' needs numba, which could not be imported ({exc}). {INSTALL_HINT}"
        ) from exc
    return numba


def _arrays(*tensors: Tensor) -> list[np.ndarray]:
    """Zero-copy numpy views of contiguous fp32 CPU tensors (what the kernels read)."""
    return [t.detach().contiguous().numpy() for t in tensors]


def _kernels(x: Tensor, B: Tensor) -> SimpleNamespace:
    """The kernels for the shapes of ``x (L, T, H, P)`` and ``B (L, T, G, N)``."""
    require_numba()
    from videomamba_depth.ssm.numba_kernels import compile_kernels

    nheads, headdim = x.shape[2:]
    ngroups, d_state = B.shape[2:]
    return compile_kernels(headdim, d_state, nheads // ngroups)


class _FusedScan(torch.autograd.Function):
    """``ssd_scan_numba`` with its hand-written backward (checked against autograd through
    ``ssd_scan_ref`` in tests/test_ssm_numba.py)."""

    @staticmethod
    def forward(ctx, x, dt, A, B, C, D, state):
        inputs = _arrays(x, dt, A, B, C, D, state)
        num_tokens, num_frames = x.shape[:2]
        # The forward kernel reads and writes a token's heads as one row: (L, T, H, P) viewed as (L, T, H*P).
        x_rows = inputs[0].reshape(num_tokens, num_frames, -1)
        y = np.empty_like(x_rows)
        final = np.empty_like(inputs[6])
        _kernels(x, B).forward(x_rows, *inputs[1:], y, final, np.float32(LOG_DECAY_FLOOR))
        ctx.save_for_backward(x, dt, A, B, C, D, state)
        return torch.from_numpy(y).view_as(x), torch.from_numpy(final)

    @staticmethod
    def backward(ctx, grad_y, grad_final):
        inputs = ctx.saved_tensors
        grad_y = torch.zeros_like(inputs[0]) if grad_y is None else grad_y
        grad_final = torch.zeros_like(inputs[6]) if grad_final is None else grad_final
        x, dt, A, B, C, D, state, grad_y, grad_final = _arrays(*inputs, grad_y, grad_final)
        rows = (*x.shape[:2], -1)
        grads = [np.zeros(t.shape, np.float32) for t in (x, dt, A, B, C, D, state)]
        _kernels(inputs[0], inputs[3]).backward(
            x.reshape(rows), dt, A, B, C, D, state, grad_y.reshape(rows), grad_final,
            np.float32(LOG_DECAY_FLOOR), grads[0].reshape(rows), *grads[1:],
        )  # fmt: skip
        return tuple(torch.from_numpy(g) for g in grads)


def ssd_scan_numba(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """Same contract as ``videomamba_depth.ssm.scan.ssd_scan``, fused and compiled for CPU.

    Shapes: ``x (L, T, H, P)``, ``dt (L, T, H)`` (positive), ``A (H,)``, ``B, C (L, T, G, N)``, ``D (H,)``,
    ``state (L, H, P, N)`` -> ``y (L, T, H, P)``, final state ``(L, H, P, N)``; fp32 CPU tensors.
    """
    _check_shapes(x, dt, A, B, C, D, state)
    for name, tensor in zip("x dt A B C D state".split(), (x, dt, A, B, C, D, state), strict=True):
        if tensor.device.type != "cpu" or tensor.dtype != torch.float32:
            raise ValueError(
                f"backend='numba' needs fp32 CPU tensors, got {name} as {tensor.dtype} on {tensor.device}"
            )
    return _FusedScan.apply(x, dt, A, B, C, D, state)
