"""The fused CPU scan (``ssm_backend: numba``): same outputs, final states and gradients as the per-frame
reference loop, through the scan and through whole temporal scales, and loud errors when it cannot run.

numba is part of the default environment (``make setup`` installs the ``cpu`` extra), so these run in CI.
"""

from __future__ import annotations

import builtins
import sys

import pytest
import torch
from test_ssm import TOL, random_ssm_inputs, rel_err, run_chunks, tiny_scale

from videomamba_depth.errors import MissingDependencyError
from videomamba_depth.models.student import ModelConfig
from videomamba_depth.ssm import MambaMixer, TemporalMambaScale, ssd_scan_numba, ssd_scan_ref
from videomamba_depth.ssm.scan import LOG_DECAY_FLOOR

pytest.importorskip("numba", reason="the cpu extra (numba) is not installed")

# (tokens, frames, heads, headdim, groups, d_state): d_state 5 and 6 exercise the rows left over by the
# kernels' four-row passes, 16 has none; 1, 2 and 3 heads per group; one frame and many.
SHAPES = [(3, 1, 4, 3, 2, 5), (5, 23, 4, 8, 1, 16), (2, 40, 6, 4, 3, 6)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_matches_reference_loop(shape):
    num_tokens, length, nheads, headdim, ngroups, d_state = shape
    gen = torch.Generator().manual_seed(length)
    args = random_ssm_inputs(gen, num_tokens, length, nheads, headdim, ngroups, d_state)
    y_ref, s_ref = ssd_scan_ref(*args)
    y, s = ssd_scan_numba(*args)
    assert y.shape == y_ref.shape and s.shape == s_ref.shape and y.dtype == s.dtype == torch.float32
    assert rel_err(y, y_ref) <= TOL
    assert rel_err(s, s_ref) <= TOL


@pytest.mark.parametrize("shape", SHAPES)
def test_gradients_match_autograd_through_the_reference_loop(shape):
    num_tokens, length, nheads, headdim, ngroups, d_state = shape
    gen = torch.Generator().manual_seed(100 + length)
    inputs = [t.requires_grad_() for t in random_ssm_inputs(gen, num_tokens, length, nheads, headdim,
                                                              ngroups, d_state)]
    weights = [torch.randn(num_tokens, length, nheads, headdim, generator=gen),
               torch.randn(num_tokens, nheads, headdim, d_state, generator=gen)]

    def grads(scan):
        y, s = scan(*inputs)
        return torch.autograd.grad((y * weights[0]).sum() + (s * weights[1]).sum(), inputs)

    for name, g, g_ref in zip("x dt A B C D state".split(), grads(ssd_scan_numba), grads(ssd_scan_ref),
                              strict=True):
        assert rel_err(g, g_ref) <= TOL, name


def test_gradients_of_one_output_only_and_through_floored_decays():
    """Only ``y`` or only the final state reaches the loss (the other gradient is None), and some decays
    hit LOG_DECAY_FLOOR (no gradient to dt or A there, as torch's clamp)."""
    gen = torch.Generator().manual_seed(7)
    inputs = [t.requires_grad_() for t in random_ssm_inputs(gen, 3, 12, 4, 4, 2, 4, dt_scale=8.0)]
    assert (inputs[1] * inputs[2]).min() < LOG_DECAY_FLOOR < (inputs[1] * inputs[2]).max()
    for pick in (0, 1):
        got = torch.autograd.grad(ssd_scan_numba(*inputs)[pick].square().sum(), inputs)
        # The final state does not depend on C and D: the reference leaves those gradients out (None).
        want = torch.autograd.grad(ssd_scan_ref(*inputs)[pick].square().sum(), inputs, allow_unused=True)
        for g, g_ref in zip(got, want, strict=True):
            assert torch.isfinite(g).all()
            if g_ref is None:
                assert pick == 1 and not g.any()
            else:
                assert rel_err(g, g_ref) <= TOL


def test_scale_on_numba_matches_torch_in_full_chunked_and_step_modes():
    """A whole random scale, same weights: the fused scan against the chunked torch scan, as one sequence,
    in pieces with carried states, frame by frame, and in its gradients."""
    torch_scale = tiny_scale(3)
    numba_scale = tiny_scale(3, backend="numba")
    assert numba_scale.backend == "numba"
    assert all(torch.equal(a, b) for a, b in zip(torch_scale.state_dict().values(),
                                                  numba_scale.state_dict().values(), strict=True))
    x = torch.randn(4, 19, 8, generator=torch.Generator().manual_seed(0), requires_grad=True)
    y_ref, state_ref = torch_scale(x)
    y, state = numba_scale(x)
    assert rel_err(y, y_ref) <= TOL
    for a, b in zip(state.tensors(), state_ref.tensors(), strict=True):
        assert rel_err(a, b) <= TOL
    y_pieces, _ = run_chunks(numba_scale, x, [5, 1, 13])
    assert rel_err(y_pieces, y_ref) <= TOL
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    (g,) = torch.autograd.grad(y.square().sum(), x)
    assert rel_err(g, g_ref) <= TOL


def test_numba_backend_rejects_what_it_cannot_run():
    gen = torch.Generator().manual_seed(0)
    args = list(random_ssm_inputs(gen, 2, 3, 2, 4, 1, 4))
    args[0] = args[0].double()
    with pytest.raises(ValueError, match=r"fp32 CPU tensors, got x as torch.float64"):
        ssd_scan_numba(*args)
    with pytest.raises(ValueError, match="no chunks: chunk_size must be None"):
        MambaMixer(8, headdim=4, backend="numba", chunk_size=16)
    with pytest.raises(ValueError, match="ssm_chunk_size must be null"):
        ModelConfig(ssm_backend="numba", ssm_chunk_size=16)


def test_numba_backend_without_numba_fails_loudly(monkeypatch):
    real_import = builtins.__import__

    def no_numba(name, *args, **kwargs):
        if name == "numba" or name.startswith("numba."):
            raise ImportError("No module named 'numba'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "numba", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_numba)
    hint = r"pip install 'videomamba-depth\[cpu\]'.*backend='torch'"
    with pytest.raises(MissingDependencyError, match=hint):
        TemporalMambaScale(8, headdim=4, backend="numba")
