"""The CUDA (mamba-ssm) path of the temporal SSM.

On CPU-only machines (CI) only the glue is tested, against a stand-in that follows the documented contract
of ``mamba_chunk_scan_combined``; the real parity tests need CUDA and mamba-ssm and are skipped otherwise.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_ssm import random_ssm_inputs, randomise_, rel_err, run_chunks, run_steps

from videomamba_depth.ssm import TemporalMambaScale, kernels, ssd_scan_cuda, ssd_scan_ref

# The kernel's matmuls may use TF32: parity with the fp32 torch path is ~1e-3, not 1e-5.
KERNEL_TOL = 3e-3

needs_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and importlib.util.find_spec("mamba_ssm") is not None),
    reason="needs a CUDA device and mamba-ssm",
)


def documented_chunk_scan(x, dt, A, B, C, chunk_size, D=None, z=None, dt_bias=None, initial_states=None,
                          seq_idx=None, dt_softplus=False, return_final_states=False, **unused):  # fmt: skip
    """Stand-in with the signature and semantics documented for mamba_ssm's ``mamba_chunk_scan_combined``.

    x (batch, seqlen, nheads, headdim), dt (batch, seqlen, nheads), A (nheads,), B/C (batch, seqlen, ngroups,
    dstate), D (nheads,), initial_states (batch, nheads, headdim, dstate).
    """
    assert z is None and dt_bias is None and seq_idx is None and not dt_softplus  # features we do not use
    assert isinstance(chunk_size, int) and return_final_states
    batch, seqlen, nheads, headdim = x.shape
    heads_per_group = nheads // B.shape[2]
    state = initial_states if initial_states is not None else x.new_zeros(batch, nheads, headdim, B.shape[-1])
    assert state.shape == (batch, nheads, headdim, B.shape[-1]) and A.shape == D.shape == (nheads,)
    outs = []
    for t in range(seqlen):
        Bt = B[:, t].repeat_interleave(heads_per_group, dim=1)  # (batch, nheads, dstate)
        Ct = C[:, t].repeat_interleave(heads_per_group, dim=1)
        dA = torch.exp(dt[:, t] * A)[..., None, None]
        state = state * dA + (dt[:, t, :, None] * x[:, t])[..., None] * Bt[:, :, None, :]
        outs.append((state * Ct[:, :, None, :]).sum(-1) + D[:, None] * x[:, t])
    return torch.stack(outs, dim=1), state


def test_cuda_scan_glue_follows_the_kernel_contract(monkeypatch):
    monkeypatch.setattr(kernels, "require_mamba_ssm", lambda: documented_chunk_scan)
    gen = torch.Generator().manual_seed(0)
    args = random_ssm_inputs(gen, 3, 19, 4, 3, 2, 5)
    y, state = ssd_scan_cuda(*args, chunk_size=8)
    y_ref, state_ref = ssd_scan_ref(*args)
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(state, state_ref) <= 1e-5


def test_cuda_backend_rejects_cpu_tensors(monkeypatch):
    monkeypatch.setattr("videomamba_depth.ssm.block.require_mamba_ssm", lambda: documented_chunk_scan)
    scale = TemporalMambaScale(8, num_blocks=1, d_state=4, headdim=4, backend="cuda")
    assert scale.backend == "cuda" and scale.blocks[0].mixer.chunk_size == 64
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        scale(torch.randn(2, 3, 8))


def _twin_scales(seed: int = 0) -> tuple[TemporalMambaScale, TemporalMambaScale]:
    args = {"num_blocks": 2, "d_state": 16, "headdim": 16, "ngroups": 2}
    torch_scale = randomise_(TemporalMambaScale(64, **args), seed).cuda()
    cuda_scale = TemporalMambaScale(64, backend="cuda", **args).cuda()
    cuda_scale.load_state_dict(torch_scale.state_dict())
    return torch_scale, cuda_scale


@pytest.mark.cuda
@needs_kernels
def test_kernel_path_matches_torch_path_in_all_modes():
    torch_scale, cuda_scale = _twin_scales()
    x = torch.randn(96, 40, 64, device="cuda")
    with torch.no_grad():
        y_ref, s_ref = torch_scale(x)
        for y, state in (cuda_scale(x), run_chunks(cuda_scale, x, [17, 1, 22]), run_steps(cuda_scale, x)):
            assert rel_err(y, y_ref) <= KERNEL_TOL
            for t, t_ref in zip(state.tensors(), s_ref.tensors(), strict=True):
                assert t.dtype == t_ref.dtype and rel_err(t, t_ref) <= KERNEL_TOL


@pytest.mark.cuda
@needs_kernels
def test_kernel_path_gradients_through_carried_states():
    torch_scale, cuda_scale = _twin_scales(1)
    x = torch.randn(64, 24, 64, device="cuda")

    def grads(scale):
        y, state = run_chunks(scale, x, [10, 14])
        loss = y.square().mean() + state.blocks[-1].ssm.square().mean()
        return torch.autograd.grad(loss, list(scale.parameters()))

    for g, g_ref in zip(grads(cuda_scale), grads(torch_scale), strict=True):
        assert rel_err(g, g_ref) <= 10 * KERNEL_TOL


@pytest.mark.cuda
@needs_kernels
def test_kernel_path_under_bf16_autocast():
    _, cuda_scale = _twin_scales(2)
    x = torch.randn(32, 16, 64, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, state = cuda_scale(x)
    assert torch.isfinite(y).all() and all(b.ssm.dtype == torch.float32 for b in state.blocks)
