"""Optional CUDA path: the Mamba-2 chunked-scan Triton kernel from ``mamba-ssm``.

Why Mamba-2 and not Mamba-1: Mamba-1's ``selective_scan_fn`` takes no initial state, so chunked training
with a carried state and prefill-then-stream could not use it. Mamba-2's ``mamba_chunk_scan_combined``
takes ``initial_states`` and returns the final state, with gradients to both, so full, chunked and carried
modes all run on the kernel. Only the sequence scan uses it: ``step`` (one frame) stays in PyTorch on every
backend, because mamba_ssm's ``selective_state_update`` has no backward and updates the state in place,
which would break the functional state semantics (snapshots stay valid) that streaming relies on.

``mamba-ssm`` needs a CUDA build of torch; on CPU-only machines it cannot even be imported.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from videomamba_depth.errors import MissingDependencyError

INSTALL_HINT = (
    "On a CUDA machine: pip install 'videomamba-depth[cuda]' (mamba-ssm>=2.2 and causal-conv1d>=1.4, built "
    "against the CUDA version of your torch). Otherwise use backend='torch' (pure PyTorch, same results)."
)


def require_mamba_ssm() -> Callable[..., Tensor | tuple[Tensor, ...]]:
    """``mamba_ssm``'s ``mamba_chunk_scan_combined``, or a loud ImportError saying how to get it."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
    except ImportError as exc:
        raise MissingDependencyError(
            f"backend='cuda' needs the mamba-ssm kernels, which could not be imported ({exc}). {INSTALL_HINT}"
        ) from exc
    return mamba_chunk_scan_combined


def ssd_scan_cuda(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, state: Tensor, chunk_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Same contract as ``videomamba_depth.ssm.scan.ssd_scan``, on the Mamba-2 Triton kernel.

    Shapes: ``x (L, T, H, P)``, ``dt (L, T, H)`` (positive), ``A (H,)``, ``B, C (L, T, G, N)``, ``D (H,)``,
    ``state (L, H, P, N)`` -> ``y (L, T, H, P)``, final state ``(L, H, P, N)``. The token dimension ``L`` is
    the kernel's batch. Inputs are fp32 (the caller's fp32 island), so outputs and states are fp32; the
    kernel's matmuls may run in TF32, which is why parity with the torch path is ~1e-3, not 1e-5.
    """
    scan = require_mamba_ssm()
    y, final_state = scan(x, dt, A, B, C, chunk_size, D=D, initial_states=state, return_final_states=True)
    return y, final_state
