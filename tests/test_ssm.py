"""Temporal SSM core: full / chunked / streaming equivalence, gradients, states, tokens, numerics.

Every module is tested with randomised parameters (including the zero-initialised output projections),
since a fresh block is the identity and would make every equivalence trivially true.
"""

from __future__ import annotations

import importlib.util
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

from videomamba_depth.ssm import (
    DEFAULT_CHUNK_SIZE,
    MambaMixer,
    ScaleState,
    SpatialPreMix,
    TemporalFeatureMixer,
    TemporalMambaScale,
    batch_token_mask,
    from_temporal_tokens,
    ssd_scan,
    ssd_scan_ref,
    to_temporal_tokens,
)

TOL = 1e-5  # fp32 equivalence of full / chunked / step modes, relative to the largest magnitude


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest magnitude of the reference ``b``."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def randomise_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random, non-degenerate parameters everywhere, zero-initialised projections included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "A_log":  # decay rates -A in [0.3, 10]
                p.copy_(torch.empty(p.shape).uniform_(math.log(0.3), math.log(10.0), generator=gen))
            elif leaf == "dt_bias":  # dt = softplus(.) mostly in [0.02, 1]
                p.copy_(torch.randn(p.shape, generator=gen) - 1.5)
            elif leaf == "D":
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=gen))
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif "norm" in name and leaf == "weight":
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return module


def tiny_scale(seed: int = 0, chunk_size: int | None = None, **kwargs) -> TemporalMambaScale:
    """A small random scale: dim 8, 2 blocks, 4 heads of 4 channels in 2 groups, d_state 4."""
    torch.manual_seed(seed)
    args = {"num_blocks": 2, "d_state": 4, "headdim": 4, "ngroups": 2, "ffn_mult": 2, **kwargs}
    return randomise_(TemporalMambaScale(8, chunk_size=chunk_size, **args), seed)


def run_steps(module, x: torch.Tensor, state=None):
    """Frame-by-frame reference: ``x`` (L, T, C) through ``module.step``."""
    ys = []
    for t in range(x.shape[1]):
        y, state = module.step(x[:, t], state)
        ys.append(y)
    return torch.stack(ys, dim=1), state


def run_chunks(module, x: torch.Tensor, sizes: list[int], state=None, detach: bool = False):
    """``x`` (L, T, C) through ``module.forward`` in consecutive pieces of ``sizes`` frames."""
    ys = []
    for piece in torch.split(x, sizes, dim=1):
        y, state = module(piece, state)
        ys.append(y)
        if detach:
            state = state.detach()
    return torch.cat(ys, dim=1), state


def assert_states_close(a: ScaleState, b: ScaleState, tol: float = TOL) -> None:
    for ta, tb in zip(a.tensors(), b.tensors(), strict=True):
        assert ta.shape == tb.shape and ta.dtype == tb.dtype
        assert rel_err(ta, tb) <= tol


def random_ssm_inputs(gen, num_tokens, length, nheads, headdim, ngroups, d_state, dt_scale=1.0):
    x = torch.randn(num_tokens, length, nheads, headdim, generator=gen)
    dt = F.softplus(torch.randn(num_tokens, length, nheads, generator=gen) - 1.0) * dt_scale
    A = -torch.empty(nheads).uniform_(0.3, 10.0, generator=gen)
    B = torch.randn(num_tokens, length, ngroups, d_state, generator=gen)
    C = torch.randn(num_tokens, length, ngroups, d_state, generator=gen)
    D = torch.randn(nheads, generator=gen)
    state = torch.randn(num_tokens, nheads, headdim, d_state, generator=gen)
    return x, dt, A, B, C, D, state


# --- the scan itself --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [1, 3, 16, 64])
@pytest.mark.parametrize(("length", "ngroups"), [(1, 1), (7, 2), (16, 1), (33, 4), (100, 2)])
def test_chunked_scan_matches_reference_loop(chunk_size, length, ngroups):
    gen = torch.Generator().manual_seed(length * 100 + chunk_size)
    args = random_ssm_inputs(gen, 3, length, 4, 3, ngroups, 5)
    y_ref, s_ref = ssd_scan_ref(*args)
    y, s = ssd_scan(*args, chunk_size=chunk_size)
    assert y.shape == (3, length, 4, 3) and s.shape == (3, 4, 3, 5)
    assert rel_err(y, y_ref) <= TOL
    assert rel_err(s, s_ref) <= TOL


def test_chunked_scan_gradients_match_reference_loop():
    gen = torch.Generator().manual_seed(1)
    inputs = [t.requires_grad_() for t in random_ssm_inputs(gen, 2, 21, 4, 3, 2, 4)]
    weights = [torch.randn(2, 21, 4, 3, generator=gen), torch.randn(2, 4, 3, 4, generator=gen)]

    def grads(scan):
        y, s = scan(*inputs)
        return torch.autograd.grad((y * weights[0]).sum() + (s * weights[1]).sum(), inputs)

    for g, g_ref in zip(grads(lambda *a: ssd_scan(*a, chunk_size=8)), grads(ssd_scan_ref), strict=True):
        assert rel_err(g, g_ref) <= TOL


def test_scan_is_finite_and_exact_with_extreme_decays():
    # Fast-forgetting heads (dt * A down to ~ -3000 per frame) next to nearly-constant ones: the masked
    # segment sums must stay finite in values and gradients (no inf * 0), and still agree with the loop.
    gen = torch.Generator().manual_seed(2)
    x, dt, A, B, C, D, state = random_ssm_inputs(gen, 2, 40, 4, 3, 1, 4)
    dt = (dt * torch.tensor([300.0, 1.0, 1e-3, 1e-6])).requires_grad_()
    y, s = ssd_scan(x, dt, A, B, C, D, state, chunk_size=64)
    y_ref, s_ref = ssd_scan_ref(x, dt, A, B, C, D, state)
    assert rel_err(y, y_ref) <= TOL and rel_err(s, s_ref) <= TOL
    (grad,) = torch.autograd.grad(y.square().sum() + s.square().sum(), dt)
    assert torch.isfinite(grad).all()


def test_scan_rejects_mismatched_shapes():
    gen = torch.Generator().manual_seed(0)
    x, dt, A, B, C, D, state = random_ssm_inputs(gen, 2, 5, 4, 3, 2, 4)
    with pytest.raises(ValueError, match="state has shape"):
        ssd_scan(x, dt, A, B, C, D, state[:, :, :, :3])
    with pytest.raises(ValueError, match="not a multiple of ngroups"):
        ssd_scan(x, dt, A, B[:, :, :1].expand(-1, -1, 3, -1), C[:, :, :1].expand(-1, -1, 3, -1), D, state)


# --- full / chunked / streaming equivalence of the block stack --------------------------------------------


@st.composite
def sequences_and_splits(draw):
    length = draw(st.integers(1, 256))
    num_tokens = draw(st.integers(1, 4))
    cuts = draw(st.lists(st.integers(1, length - 1), max_size=6, unique=True)) if length > 1 else []
    sizes = [b - a for a, b in itertools.pairwise([0, *sorted(cuts), length])]
    chunk_size = draw(st.sampled_from([1, 4, 16, 64]))
    return length, num_tokens, sizes, chunk_size, draw(st.integers(0, 2**16))


@settings(max_examples=15, deadline=None, derandomize=True)
@given(sequences_and_splits())
@example((256, 3, [100, 1, 155], 16, 0))  # the longest sequences, a one-frame chunk inside
@example((1, 1, [1], 64, 1))
def test_full_chunked_and_step_modes_agree(case):
    length, num_tokens, sizes, chunk_size, seed = case
    scale = tiny_scale(seed, chunk_size=chunk_size)
    x = torch.randn(num_tokens, length, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y_full, s_full = scale(x)
        y_chunks, s_chunks = run_chunks(scale, x, sizes)
        y_steps, s_steps = run_steps(scale, x)
    assert y_full.shape == x.shape
    assert rel_err(y_chunks, y_full) <= TOL
    assert rel_err(y_steps, y_full) <= TOL
    assert_states_close(s_chunks, s_full)
    assert_states_close(s_steps, s_full)


def test_forward_without_state_equals_zero_initial_state():
    scale = tiny_scale(3)
    x = torch.randn(5, 9, 8)
    y_none, s_none = scale(x)
    y_init, s_init = scale(x, scale.init_state(5))
    assert torch.equal(y_none, y_init)
    assert all(torch.equal(a, b) for a, b in zip(s_none.tensors(), s_init.tensors(), strict=True))
    y_step, _ = scale.step(x[:, 0])
    y_step_init, _ = scale.step(x[:, 0], scale.init_state(5))
    assert torch.equal(y_step, y_step_init)


def test_outputs_are_causal():
    scale = tiny_scale(4)
    x = torch.randn(3, 20, 8)
    x_changed = x.clone()
    x_changed[:, 12:] += torch.randn(3, 8, 8)
    y, _ = scale(x)
    y_changed, _ = scale(x_changed)
    assert torch.equal(y[:, :12], y_changed[:, :12])
    assert not torch.allclose(y[:, 12:], y_changed[:, 12:])


def test_tokens_are_independent_sequences():
    scale = tiny_scale(5)
    x = torch.randn(6, 11, 8)
    y, state = scale(x)
    y_sub, state_sub = scale(x[[1, 4]])
    assert rel_err(y_sub, y[[1, 4]]) <= TOL
    assert_states_close(state_sub, state.select(torch.tensor([1, 4])))


def test_fresh_scale_is_exactly_the_identity_but_learns():
    scale = TemporalMambaScale(16, num_blocks=3, d_state=8, headdim=8)
    x = torch.randn(4, 10, 16, requires_grad=True)
    y, _ = scale(x)
    assert torch.equal(y, x)
    assert torch.equal(scale.step(x[:, 0])[0], x[:, 0])
    # The zero-initialised projections are the last op of each branch, so they get gradients at once.
    y.square().sum().backward()
    assert scale.blocks[0].mixer.out_proj.weight.grad.abs().sum() > 0
    assert scale.blocks[0].ffn[-1].weight.grad.abs().sum() > 0


def test_long_video_streams_stably_with_constant_state():
    # Far beyond any training length: nothing indexes absolute time, decays are < 1, so the state stays
    # bounded and its size constant.
    scale = tiny_scale(6)
    x = torch.randn(2, 10_000, 8, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        y, state = run_chunks(scale, x, [1000] * 10)
        y_next, state_next = scale.step(x[:, -1], state)
    assert torch.isfinite(y).all() and torch.isfinite(y_next).all()
    assert y[:, -1000:].abs().max() <= 2 * y[:, :1000].abs().max()
    assert state_next.nbytes == scale.init_state(2).nbytes


# --- chunked BPTT -----------------------------------------------------------------------------------------


def test_gradients_of_a_chunk_split_equal_the_full_sequence():
    scale = tiny_scale(7, chunk_size=4)
    x = torch.randn(3, 80, 8, requires_grad=True)  # longer than SEGMENT_FRAMES: forward segments it too
    target = torch.randn(3, 80, 8)

    def grads(run):
        y, state = run()
        loss = (y - target).square().mean() + state.blocks[-1].ssm.square().mean()
        return torch.autograd.grad(loss, [x, *scale.parameters()])

    full = grads(lambda: scale(x))
    split = grads(lambda: run_chunks(scale, x, [7, 1, 13, 59]))
    for g_split, g_full in zip(split, full, strict=True):
        assert rel_err(g_split, g_full) <= TOL


def test_detached_state_cuts_the_graph_between_chunks():
    scale = tiny_scale(8)
    x1 = torch.randn(2, 6, 8, requires_grad=True)
    x2 = torch.randn(2, 6, 8, requires_grad=True)
    _, state = scale(x1)
    detached = state.detach()
    assert not any(t.requires_grad for t in detached.tensors())
    y2, _ = scale(x2, detached)
    y2.sum().backward()
    assert x1.grad is None
    assert x2.grad.abs().sum() > 0
    assert all(p.grad is not None for p in scale.parameters())
    y2_attached, _ = scale(x2, state)
    (g1,) = torch.autograd.grad(y2_attached.sum(), x1)
    assert g1.abs().sum() > 0


# --- state container --------------------------------------------------------------------------------------


def test_snapshot_restore_reset_and_select():
    scale = tiny_scale(9)
    x = torch.randn(4, 12, 8)
    with torch.no_grad():
        _, state = scale(x[:, :6])
        snapshot = state.clone()
        y_a, moved_on = scale(x[:, 6:], state)
        # The state is immutable: continuing from the snapshot repeats the continuation exactly.
        y_b, _ = scale(x[:, 6:], snapshot)
        assert torch.equal(y_a, y_b)
        # Restore tokens 0 and 2 from the snapshot, keep the others where they moved on.
        mask = torch.tensor([True, False, True, False])
        mixed = moved_on.where(mask, snapshot)
        for tm, ts, tn in zip(mixed.tensors(), snapshot.tensors(), moved_on.tensors(), strict=True):
            assert torch.equal(tm[mask], ts[mask]) and torch.equal(tm[~mask], tn[~mask])
        # Reset tokens 1 and 3 (their videos restart): same as running them from no state.
        y_reset, _ = scale(x[:, 6:], state.reset(~mask))
        y_fresh, _ = scale(x[:, 6:])
        assert torch.equal(y_reset[~mask], y_fresh[~mask])
        assert torch.equal(y_reset[mask], y_a[mask])
    assert state.select(slice(1, 3)).num_tokens == 2
    assert state.to("cpu").nbytes == state.nbytes
    with pytest.raises(ValueError, match="bool tensor of shape"):
        state.reset(torch.tensor([True, False]))
    with pytest.raises(ValueError, match="state is for 4 tokens"):
        scale(x[:3], state)
    with pytest.raises(ValueError, match="block states"):
        TemporalMambaScale(8, num_blocks=3, d_state=4, headdim=4)(x, state)


def test_state_layout_and_size():
    scale = TemporalMambaScale(32, num_blocks=2, d_state=16, d_conv=4, expand=2, headdim=16)
    state = scale.init_state(7)
    block = state.blocks[0]
    conv_dim = 64 + 2 * 16
    assert block.conv.shape == (7, 3, conv_dim) and block.conv.dtype == torch.float32
    assert block.ssm.shape == (7, 4, 16, 16) and block.ssm.dtype == torch.float32
    assert state.nbytes == 2 * 7 * 4 * (3 * conv_dim + 64 * 16)


# --- numerics, backends, validation -----------------------------------------------------------------------


def test_bf16_autocast_keeps_the_scan_in_fp32():
    scale = tiny_scale(10)
    x = torch.randn(3, 20, 8)
    y32, _ = scale(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, state = scale(x)
        y_step, state_step = scale.step(x[:, 0])
    assert all(b.ssm.dtype == torch.float32 for b in (*state.blocks, *state_step.blocks))
    assert torch.isfinite(y16).all() and torch.isfinite(y_step).all()
    assert rel_err(y16.float(), y32) < 0.05


def test_backend_is_recorded_and_validated():
    assert tiny_scale().backend == "torch"
    assert MambaMixer(8, headdim=4).chunk_size == DEFAULT_CHUNK_SIZE["torch"]
    with pytest.raises(ValueError, match="unknown SSM backend"):
        MambaMixer(8, headdim=4, backend="triton")
    with pytest.raises(ValueError, match="multiple of headdim"):
        MambaMixer(8, headdim=5)
    with pytest.raises(ValueError, match="expected temporal tokens"):
        tiny_scale()(torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="expected temporal tokens"):
        tiny_scale().step(torch.randn(2, 3, 8))


@pytest.mark.skipif(importlib.util.find_spec("mamba_ssm") is not None, reason="mamba_ssm is installed")
def test_cuda_backend_without_mamba_ssm_fails_loudly():
    with pytest.raises(ImportError, match=r"pip install 'videomamba-depth\[cuda\]'.*backend='torch'"):
        TemporalMambaScale(8, headdim=4, backend="cuda")


# --- around the block: tokens, spatial pre-mix, feature-map wrapper ---------------------------------------


def test_temporal_tokens_round_trip_and_order():
    x = torch.randn(2, 3, 5, 4, 6)  # (B, N, C, H, W)
    tokens = to_temporal_tokens(x)
    assert tokens.shape == (2 * 4 * 6, 3, 5)
    assert torch.equal(from_temporal_tokens(tokens, 2, 4, 6), x)
    # Token (b, h, w) is the time series of that pixel's features.
    assert torch.equal(tokens[1 * 24 + 2 * 6 + 5], x[1, :, :, 2, 5])
    mask = batch_token_mask(torch.tensor([False, True]), 4, 6)
    assert torch.equal(tokens[mask], to_temporal_tokens(x[1:]))


def test_spatial_premix_is_identity_then_per_frame():
    premix = SpatialPreMix(5)
    x = torch.randn(2, 3, 5, 4, 6)
    assert torch.equal(premix(x), x)
    randomise_(premix, 11)
    y = premix(x)
    x_changed = x.clone()
    x_changed[:, 1] += 1.0
    y_changed = premix(x_changed)
    assert not torch.allclose(y, x)
    assert torch.equal(y[:, [0, 2]], y_changed[:, [0, 2]])  # no mixing across frames


def test_feature_mixer_streams_frame_by_frame():
    mixer = TemporalFeatureMixer(TemporalMambaScale(8, num_blocks=2, d_state=4, headdim=4))
    x = torch.randn(2, 9, 8, 3, 5)  # (B, N, C, H, W)
    assert torch.equal(mixer(x)[0], x)
    randomise_(mixer, 12)
    assert mixer.backend == "torch"
    with torch.no_grad():
        y, state = mixer(x, mixer.init_state(2, 3, 5))
        y_steps, s = [], None
        for t in range(9):
            y_t, s = mixer.step(x[:, t], s)
            y_steps.append(y_t)
    assert y.shape == x.shape
    assert rel_err(torch.stack(y_steps, dim=1), y) <= TOL
    assert_states_close(s, state)
