"""Training steps of the student on a CUDA device under bf16 autocast (``-m cuda``; skipped without CUDA).

The SSM keeps fp32 islands (decays, scan, states) inside autocast and the depth is computed in fp32, so a
bf16 step must stay finite, keep fp32 states, learn, and agree with the fp32 model to bf16 precision.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from test_models import clip_inputs, rel_err, run_steps, tiny_model

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 2e-3 per op); through the encoder, temporal blocks
# and decoder that compounds to about 1e-2 in log depth, so depths agree with fp32 within a few per cent.
BF16_TOL = 5e-2


@pytest.mark.parametrize("backend", ["torch", "cuda"])
def test_bf16_training_steps_on_cuda(backend):
    if backend == "cuda" and importlib.util.find_spec("mamba_ssm") is None:
        pytest.skip("ssm_backend cuda needs mamba-ssm")
    model = tiny_model(0, ssm_backend=backend).cuda().train()
    rgb, K = (t.cuda() for t in clip_inputs(0, 2, 6, 56, 72))
    target = torch.linspace(1.0, 4.0, 72, device="cuda").expand(2, 6, 56, 72)
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-3, 1.0, 0.01))
    losses = []
    for _ in range(5):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(rgb, K)
        assert out.depth.dtype == torch.float32
        assert all(b.ssm.dtype == torch.float32 for _, s in out.states.items() for b in s.blocks)
        loss = (out.depth.log() - target.log()).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        fp32 = model(rgb, K).depth
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(rgb, K).depth
            stepped, _ = run_steps(model, rgb, K)
    assert rel_err(bf16, fp32) <= BF16_TOL and rel_err(stepped, fp32) <= BF16_TOL
