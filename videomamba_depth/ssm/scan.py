"""Selective state-space scan (Mamba-2 / SSD parametrisation) in pure PyTorch.

Recurrence, per token ``l``, head ``h`` (with group ``g(h)``) and frame ``t``::

    state_t = exp(dt_t * A) * state_{t-1} + dt_t * x_t ⊗ B_t        (headdim, d_state)
    y_t     = state_t @ C_t + D * x_t                                (headdim,)

``A < 0`` is one scalar per head, so the per-frame decay ``exp(dt_t * A)`` lies in ``(0, 1]``: the state of a
stream is bounded for bounded inputs, whatever the length of the video. ``B`` and ``C`` are shared by the
heads of a group (``nheads % ngroups == 0``).

Two implementations with identical results (up to float rounding):

- ``ssd_step`` / ``ssd_scan_ref``: one frame at a time; the readable reference and the streaming path.
- ``ssd_scan``: the sequence fast path (training, prefill), the chunked "state space duality" form of
  Dao & Gu, *Transformers are SSMs* (2024), following ``mamba_ssm/modules/ssd_minimal.py``: inside each chunk
  of ``chunk_size`` frames the outputs are a masked quadratic form (batched matmuls), and only the chunk
  boundaries are scanned sequentially.

All inputs are expected in fp32 (callers cast: the scan is an fp32 island even under bf16 autocast, because
the decays are products over many frames and the state accumulates over the whole video).

Shapes, with ``L`` = number of tokens (independent sequences), ``T`` = frames, ``H`` = heads,
``P`` = headdim, ``G`` = groups, ``N`` = d_state:
``x (L, T, H, P)``, ``dt (L, T, H)`` (positive, already through softplus), ``A (H,)`` (negative),
``B, C (L, T, G, N)``, ``D (H,)``, ``state (L, H, P, N)``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

# Lower bound on log-decays before exp (decays below e^-40 ~ 4e-18 are clamped to it). Decays that small
# contribute nothing visible in fp32 next to any other term, but letting exp underflow to subnormals (below
# e^-87) makes CPU arithmetic on them ~100x slower, which fast-forgetting heads would hit all the time.
LOG_DECAY_FLOOR = -40.0


def _check_shapes(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, state: Tensor) -> None:
    num_tokens, length, nheads, headdim = x.shape
    ngroups, d_state = B.shape[-2:]
    if nheads % ngroups:
        raise ValueError(f"nheads={nheads} is not a multiple of ngroups={ngroups}")
    expected = {
        "dt": (dt, (num_tokens, length, nheads)),
        "A": (A, (nheads,)),
        "B": (B, (num_tokens, length, ngroups, d_state)),
        "C": (C, (num_tokens, length, ngroups, d_state)),
        "D": (D, (nheads,)),
        "state": (state, (num_tokens, nheads, headdim, d_state)),
    }
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"ssd scan: {name} has shape {tuple(tensor.shape)}, expected {shape}")


def ssd_step(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """Advance the SSM by one frame.

    Args:
        x: (L, H, P) inputs of this frame.
        dt: (L, H) positive step sizes.
        A: (H,) negative decay rates.
        B, C: (L, G, N) input / output projections of the state.
        D: (H,) skip weights.
        state: (L, H, P, N) state after the previous frame.

    Returns:
        y: (L, H, P) outputs, and the new state (L, H, P, N). ``state`` is not modified.
    """
    ngroups = B.shape[1]
    decay = torch.exp((dt * A).clamp(min=LOG_DECAY_FLOOR))  # (L, H)
    dtx = x * dt[..., None]  # (L, H, P)
    # Heads of a group share B and C: view heads as (group, head-in-group) and broadcast.
    state_g = rearrange(state, "l (g r) p n -> l g r p n", g=ngroups)
    dtx_g = rearrange(dtx, "l (g r) p -> l g r p", g=ngroups)
    decay_g = rearrange(decay, "l (g r) -> l g r", g=ngroups)
    new_state = state_g * decay_g[..., None, None] + dtx_g[..., None] * B[:, :, None, None, :]
    y = torch.einsum("lgrpn,lgn->lgrp", new_state, C)
    y = rearrange(y, "l g r p -> l (g r) p") + x * D[:, None]
    return y, rearrange(new_state, "l g r p n -> l (g r) p n")


def ssd_scan_ref(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """Reference scan: a Python loop of ``ssd_step`` over frames.

    Args/shapes as in the module docstring; returns ``y (L, T, H, P)`` and the final state ``(L, H, P, N)``.
    """
    _check_shapes(x, dt, A, B, C, D, state)
    ys = []
    for t in range(x.shape[1]):
        y, state = ssd_step(x[:, t], dt[:, t], A, B[:, t], C[:, t], D, state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def ssd_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor, state: Tensor, chunk_size: int = 16
) -> tuple[Tensor, Tensor]:
    """Chunked scan (the fast path): same results as ``ssd_scan_ref``.

    Args/shapes as in the module docstring; ``chunk_size`` trades the quadratic intra-chunk work against the
    sequential loop over chunks (results do not depend on it beyond float rounding).

    Returns:
        y: (L, T, H, P) and the final state (L, H, P, N).
    """
    _check_shapes(x, dt, A, B, C, D, state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    g = B.shape[2]
    # Inside this function the state is kept as (L, G, R, N, P), contiguous: with P last, the per-chunk
    # matmuls write and read it without transposes (on CPU, every copy of a state-sized tensor counts).
    running = rearrange(state, "l (g r) p n -> l g r n p", g=g).contiguous()
    ys = []
    for t0 in range(0, x.shape[1], chunk_size):
        y, running = _ssd_chunk(*(t[:, t0 : t0 + chunk_size] for t in (x, dt, B, C)), A, D, running)
        ys.append(y)
    return torch.cat(ys, dim=1), rearrange(running, "l g r n p -> l (g r) p n")


def _ssd_chunk(
    x: Tensor, dt: Tensor, B: Tensor, C: Tensor, A: Tensor, D: Tensor, state: Tensor
) -> tuple[Tensor, Tensor]:
    """One chunk of ``ssd_scan``, with the state in its internal layout.

    ``x (L, Q, H, P)``, ``dt (L, Q, H)``, ``B, C (L, Q, G, N)``, ``A, D (H,)``, ``state (L, G, R, N, P)`` ->
    ``y (L, Q, H, P)`` and the state after the chunk, same layout.
    """
    g, q = B.shape[2], x.shape[1]
    B, C = (rearrange(t, "l q g n -> l g 1 q n") for t in (B, C))
    # Log-decays summed from the chunk start, restarted in every chunk: the decay between frames s <= q is
    # exp(a_cum[q] - a_cum[s]). The difference loses ~eps * |a_cum| in the exponent, which stays small because
    # the sums never run across chunks (the same numerics as the mamba_ssm kernels).
    a_cum = rearrange(torch.cumsum(dt * A, dim=1), "l q (g r) -> l g r q", g=g)  # decreasing, <= 0
    # decay[q, s] for s <= q. Above the diagonal the differences are positive: clamping them to 0 keeps exp
    # finite there (exp of a large positive overflows, and inf * 0 = NaN in values or gradients), and the
    # causal mask multiplies them away. The floor keeps exp out of subnormals (see LOG_DECAY_FLOOR).
    decay = (a_cum[..., :, None] - a_cum[..., None, :]).clamp(LOG_DECAY_FLOOR, 0.0).exp_()  # (L, G, R, Q, Q)
    causal = torch.ones(q, q, dtype=x.dtype, device=x.device).tril()
    dtx = rearrange(x * dt[..., None], "l s (g r) p -> l g r s p", g=g).contiguous()

    # Intra-chunk (diagonal block): y[q] = sum_{s <= q} (C_q . B_s) decay[q, s] dt_s x_s.
    y_diag = (decay * ((C @ B.transpose(-1, -2)) * causal)) @ dtx  # (L, G, R, Q, P)
    # Inter-chunk (off-diagonal): the state entering the chunk, read out by C_q and decayed to frame q.
    decay_in = torch.exp(a_cum.clamp(min=LOG_DECAY_FLOOR))  # (L, G, R, Q): from the chunk start to frame q
    y = torch.addcmul(y_diag, C @ state, decay_in[..., None])
    y = torch.addcmul(rearrange(y, "l g r q p -> l q (g r) p"), x, D[:, None])

    # State at the chunk end: the entering state decayed over the whole chunk, plus every frame's input
    # decayed from its frame to the end (the last row of the decay matrix). B is shared by the R heads of a
    # group: expand it (a view) and run one batched matmul-add over (L, G, R).
    inputs = (dtx * decay[..., -1, :, None]).flatten(0, 2)  # (L*G*R, Q, P)
    B_t = B.transpose(-1, -2).expand(-1, -1, state.shape[2], -1, -1).flatten(0, 2)  # (L*G*R, N, Q)
    decayed = (state * decay_in[..., -1:, None]).flatten(0, 2)  # (L*G*R, N, P)
    return y, torch.baddbmm(decayed, B_t, inputs).view_as(state)
