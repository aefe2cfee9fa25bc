"""Distillation loss terms on tiny synthetic clips: hand-computed values, invariances, masks and dtypes."""

import math

import pytest
import torch

from videomamba_depth.config import ConfigError
from videomamba_depth.losses import (
    DistillationLoss,
    LossConfig,
    gradient_preservation_loss,
    hdn_loss,
    metric_log_l1,
    multiscale_gradient_loss,
    scale_shift_lstsq,
    silog_loss,
    ssi_loss,
    state_smoothing,
    static_weights,
    temporal_gradient_matching,
    warped_consistency,
)
from videomamba_depth.losses import distill as distill_module


def clip(B=2, N=3, H=8, W=10, seed=0):
    """Random positive depths (1-5 m), a teacher that differs from them, validity and confidence."""
    g = torch.Generator().manual_seed(seed)
    pred = 1 + 4 * torch.rand(B, N, H, W, generator=g)
    teacher = 1 + 4 * torch.rand(B, N, H, W, generator=g)
    valid = torch.rand(B, N, H, W, generator=g) > 0.2
    confidence = torch.rand(B, N, H, W, generator=g)
    return pred, teacher, valid, confidence


# Every per-pixel term as (pred, teacher, valid, confidence) -> loss, with default settings.
TERMS = {
    "metric_l1": lambda p, t, v, c: metric_log_l1(p, t, v, c),
    "ssi": lambda p, t, v, c: ssi_loss(p, t, v, c),
    "ssi_untrimmed": lambda p, t, v, c: ssi_loss(p, t, v, c, trim=0.0),
    "tgm": lambda p, t, v, c: temporal_gradient_matching(p, t, v, jump_threshold=10.0),
    "silog": lambda p, t, v, c: silog_loss(p, t, v),
    "grad": lambda p, t, v, c: multiscale_gradient_loss(p, t, v),
    "hdn": lambda p, t, v, c: hdn_loss(p, t, v),
    "hdn_spatial": lambda p, t, v, c: hdn_loss(p, t, v, mode="spatial"),
    "grad_preserve": lambda p, t, v, c: gradient_preservation_loss(p, t, v),
}


@pytest.mark.parametrize("name", TERMS)
def test_zero_when_pred_equals_teacher(name):
    _, teacher, valid, confidence = clip()
    loss = TERMS[name](teacher.clone(), teacher, valid, confidence)
    assert loss.dtype == torch.float32 and loss.ndim == 0
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("name", TERMS)
def test_masked_out_garbage_changes_nothing(name):
    """NaN, 0, negative and huge values where the teacher is invalid change neither loss nor gradients."""
    pred, teacher, valid, confidence = clip()
    garbage = torch.tensor([math.nan, 0.0, -3.0, 1e30, math.inf])
    fill = garbage[torch.arange(pred.numel()) % len(garbage)].reshape(pred.shape)
    results = []
    dirty = [torch.where(valid, x, fill) for x in (pred, teacher, confidence)]
    for p_in, t_in, c_in in [(pred, teacher, confidence), dirty]:
        p_in = p_in.clone().requires_grad_(True)
        loss = TERMS[name](p_in, t_in, valid, c_in)
        loss.backward()
        results.append((loss.detach(), p_in.grad))
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert loss_a > 0
    torch.testing.assert_close(loss_a, loss_b)
    assert torch.isfinite(grad_b).all()
    torch.testing.assert_close(grad_a, grad_b)
    assert (grad_b[~valid] == 0).all()


@pytest.mark.parametrize("name", TERMS)
def test_empty_mask_gives_zero_and_finite_gradient(name):
    pred, teacher, _, confidence = clip()
    pred.requires_grad_(True)
    loss = TERMS[name](pred, teacher, torch.zeros_like(pred, dtype=torch.bool), confidence)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()


@pytest.mark.parametrize("name", TERMS)
def test_bf16_inputs_under_autocast_are_computed_in_fp32(name):
    pred, teacher, valid, confidence = clip()
    pred_bf16, teacher_bf16 = pred.bfloat16().requires_grad_(True), teacher.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = TERMS[name](pred_bf16, teacher_bf16, valid, confidence.bfloat16())
    loss.backward()
    upcast = [x.detach().float() for x in (pred_bf16, teacher_bf16, confidence.bfloat16())]
    reference = TERMS[name](upcast[0], upcast[1], valid, upcast[2])
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-7)
    assert pred_bf16.grad.dtype == torch.bfloat16 and torch.isfinite(pred_bf16.grad.float()).all()


def test_metric_l1_hand_value_and_confidence_weighting():
    teacher = torch.full((1, 1, 1, 3), 2.0)
    pred = teacher * torch.tensor([math.e, 1.0, math.e**-2]).reshape(1, 1, 1, 3)  # |log ratio| = 1, 0, 2
    valid = torch.ones_like(pred, dtype=torch.bool)
    assert metric_log_l1(pred, teacher, valid).item() == pytest.approx(1.0)
    confidence = torch.tensor([1.0, 0.5, 0.25]).reshape(1, 1, 1, 3)
    # (1*1 + 0.5*0 + 0.25*2) / (1 + 0.5 + 0.25)
    assert metric_log_l1(pred, teacher, valid, confidence).item() == pytest.approx(1.5 / 1.75)


def test_scale_shift_lstsq_recovers_affine_map_and_handles_degenerate_rows():
    x = torch.tensor([[0.5, 1.0, 2.0, 4.0], [3.0, 3.0, 3.0, 3.0], [1.0, 2.0, 3.0, 4.0]])
    y = 2.5 * x - 0.75
    weights = torch.tensor([[1.0, 1.0, 0.3, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    scale, shift = scale_shift_lstsq(x, y, weights)
    assert scale[0].item() == pytest.approx(2.5) and shift[0].item() == pytest.approx(-0.75)
    # Constant x: no scale is defined -> scale 0, shift = mean(y); empty row -> (0, 0).
    assert scale[1].item() == 0.0 and shift[1].item() == pytest.approx(y[1].mean().item())
    assert scale[2].item() == 0.0 and shift[2].item() == 0.0


def test_ssi_hand_value():
    """Disparities p = [1, 1, 2, 2], g = [1, 2, 3, 4]: s = 2, t = -0.5, |residual| 0.5, mean(g) 2.5 -> 0.2."""
    pred = 1.0 / torch.tensor([1.0, 1.0, 2.0, 2.0]).reshape(1, 1, 2, 2)
    teacher = 1.0 / torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2)
    valid = torch.ones_like(pred, dtype=torch.bool)
    assert ssi_loss(pred, teacher, valid, trim=0.0).item() == pytest.approx(0.2)
    # Trimming 25% of 4 residuals that are all 0.5 keeps 3 of them: still 0.2.
    assert ssi_loss(pred, teacher, valid, trim=0.25).item() == pytest.approx(0.2)


def test_ssi_trim_drops_the_largest_residuals():
    """One outlier among ten exactly-fitting pixels: trimming 10% removes it (after the fit absorbed it)."""
    g = torch.linspace(0.2, 2.0, 10)
    p = g.clone()
    p[3] += 5.0  # outlier in the prediction's disparity
    pred, teacher = (1.0 / p).reshape(1, 1, 1, 10), (1.0 / g).reshape(1, 1, 1, 10)
    valid = torch.ones_like(pred, dtype=torch.bool)
    untrimmed = ssi_loss(pred, teacher, valid, trim=0.0)
    trimmed = ssi_loss(pred, teacher, valid, trim=0.1)
    # Reference: least-squares fit with the outlier, then the mean of the 9 smallest |residuals| / mean(g).
    s, t = scale_shift_lstsq(p[None], g[None], torch.ones(1, 10))
    residual = ((s * p + t - g).abs() / g.mean()).sort().values
    assert untrimmed.item() == pytest.approx(residual.mean().item(), rel=1e-5)
    assert trimmed.item() == pytest.approx(residual[:9].mean().item(), rel=1e-5)
    assert trimmed < untrimmed


def test_ssi_invariant_to_scale_and_affine_disparity_but_not_to_depth_shift():
    pred, teacher, valid, confidence = clip(seed=1)
    base = ssi_loss(pred, teacher, valid, confidence)
    assert base > 0
    torch.testing.assert_close(ssi_loss(7.5 * pred, teacher, valid, confidence), base)
    affine = 1.0 / (0.3 / pred + 0.2)  # disparity 0.3 p + 0.2
    torch.testing.assert_close(ssi_loss(affine, teacher, valid, confidence), base, rtol=1e-4, atol=1e-6)
    # Scaling the whole scene (teacher and prediction) leaves it unchanged too: residuals are relative.
    torch.testing.assert_close(ssi_loss(3 * pred, 3 * teacher, valid, confidence), base, rtol=1e-4, atol=1e-6)
    assert abs(ssi_loss(pred + 1.0, teacher, valid, confidence) - base) > 1e-3


def test_tgm_hand_value_jump_masking_and_pair_mask():
    """Teacher constant in time; the prediction flickers by log factors a_t: TGM = mean |a_{t+1} - a_t|."""
    teacher = torch.full((1, 4, 2, 2), 3.0)
    a = torch.tensor([0.0, 0.02, -0.01, 0.03])
    pred = teacher * a.exp().reshape(1, 4, 1, 1)
    valid = torch.ones_like(teacher, dtype=torch.bool)
    expected = (0.02 + 0.03 + 0.04) / 3
    assert temporal_gradient_matching(pred, teacher, valid).item() == pytest.approx(expected, rel=1e-5)

    # The teacher jumps by log 1.5 at pixel (0, 0) between frames 1 and 2: that pixel pair is not matched,
    # however wild the prediction is there.
    jumped = teacher.clone()
    jumped[:, 2:, 0, 0] *= 1.5
    wild = pred.clone()
    wild[:, 2:, 0, 0] *= 40.0
    loss = temporal_gradient_matching(wild, jumped, valid, jump_threshold=0.1)
    # Pairs (0,1) and (2,3): 4 pixels each, unchanged; pair (1,2): 3 pixels with |a_2 - a_1| = 0.03.
    assert loss.item() == pytest.approx((4 * 0.02 + 3 * 0.03 + 4 * 0.04) / 11, rel=1e-5)

    pair_mask = torch.ones(1, 3, 2, 2, dtype=torch.bool)
    pair_mask[:, 2] = False  # drop pair (2, 3)
    assert temporal_gradient_matching(pred, teacher, valid, pair_mask=pair_mask).item() == pytest.approx(
        (0.02 + 0.03) / 2, rel=1e-5
    )


def test_tgm_invariances():
    """Zero for pred = c(x) * teacher (any per-pixel factor constant in time); not zero for a depth offset."""
    _, teacher, valid, _ = clip(seed=2)
    factor = 1 + torch.rand(1, 1, 8, 10, generator=torch.Generator().manual_seed(3))
    assert temporal_gradient_matching(factor * teacher, teacher, valid, jump_threshold=10.0).item() == (
        pytest.approx(0.0, abs=1e-6)
    )
    assert temporal_gradient_matching(teacher + 0.5, teacher, valid, jump_threshold=10.0) > 1e-3


def test_single_frame_clips_give_zero_temporal_terms():
    pred, teacher, valid, _ = clip(N=1)
    assert temporal_gradient_matching(pred, teacher, valid).item() == 0.0
    states = {"s0": torch.randn(2, 1, 4, 2, 3)}
    assert state_smoothing(states, torch.ones(2, 0, 8, 10, dtype=torch.bool)).item() == 0.0
    assert state_smoothing({}).item() == 0.0


def test_static_weights_area_pool_the_static_fraction():
    static = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    static[0, 0, :2, :2] = True  # top-left cell fully static
    static[0, 0, 2, 2] = True  # one of four pixels static in the bottom-right cell
    w = static_weights(static, (2, 2), moving_weight=0.2)
    expected = torch.tensor([[1.0, 0.2], [0.2, 0.25 + 0.2 * 0.75]])
    torch.testing.assert_close(w[0, 0], expected)
    assert static_weights(None, (2, 2), 0.2) is None


def test_state_smoothing_hand_value():
    """Two scales; the change between frames is known per channel and location."""
    s0 = torch.zeros(1, 3, 2, 2, 2)
    s0[:, 1] = 1.0  # frame 0 -> 1: every channel changes by 1 -> mean over channels 1
    s0[:, 2] = 1.0  # frame 1 -> 2: no change
    s1 = torch.zeros(1, 3, 4, 1, 1)
    s1[:, 2, 0] = 2.0  # frame 1 -> 2: one of 4 channels changes by 2 -> 4 / 4 = 1
    states = {"fine": s0, "coarse": s1}
    # fine: mean over (pair, location) of [1, 1, 1, 1, 0, 0, 0, 0] = 0.5; coarse: mean of [0, 1] = 0.5.
    assert state_smoothing(states).item() == pytest.approx(0.5)
    # Static masks at 4x4 image resolution; pair 0 moving everywhere, pair 1 static everywhere.
    static = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    static[:, 1] = True
    # fine: pair 0 weighted 0.1 -> mean of [0.1]*4 + [0]*4 = 0.05; coarse: [0, 1*1] -> 0.5. Mean 0.275.
    assert state_smoothing(states, static, moving_weight=0.1).item() == pytest.approx(0.275)
    assert state_smoothing(states, static, moving_weight=0.0).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"need \(B, N-1, H, W\)"):
        state_smoothing(states, torch.ones(1, 3, 4, 4, dtype=torch.bool))


def test_silog_hand_values():
    teacher = torch.full((1, 2, 3, 3), 2.0)
    valid = torch.ones_like(teacher, dtype=torch.bool)
    pred = teacher * 1.5  # g = log 1.5 everywhere: D = (1 - lam) g^2
    g = math.log(1.5)
    assert silog_loss(pred, teacher, valid, lam=0.85).item() == pytest.approx(math.sqrt(0.15) * g, rel=1e-4)
    assert silog_loss(pred, teacher, valid, lam=1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert silog_loss(pred, teacher, valid, lam=0.0).item() == pytest.approx(g, rel=1e-4)
    # Frame 0 exact, frame 1 with g = +-0.1 on alternate pixels, 5 of them valid.
    pred = teacher.clone()
    pred[0, 1] *= torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]]).mul(0.1).exp()
    valid = valid.clone()
    valid[0, 1, 2, :] = False
    valid[0, 1, 1, 2] = False  # frame 1 keeps 5 pixels: g = [.1, -.1, .1, -.1, .1]
    d = 0.01 - 0.5 * 0.02**2  # mean(g^2) = 0.01, mean(g) = 0.02, lam = 0.5; frame 0 contributes 0
    assert silog_loss(pred, teacher, valid, lam=0.5).item() == pytest.approx(math.sqrt(d) / 2, rel=1e-4)


def test_gradient_loss_hand_value():
    """Log residual r = a * x: scale 0 has x-steps a (56 pairs) and y-steps 0 (56 pairs) -> a/2; scale 1
    (stride 2, 4x4) has x-steps 2a (12) and y-steps 0 (12) -> a. Mean over scales: 0.75 a."""
    a = 0.1
    teacher = torch.full((1, 1, 8, 8), 2.0)
    pred = teacher * (a * torch.arange(8.0)).exp().reshape(1, 1, 1, 8)
    valid = torch.ones_like(teacher, dtype=torch.bool)
    loss = multiscale_gradient_loss(pred, teacher, valid, scales=2)
    assert loss.item() == pytest.approx(0.75 * a, rel=1e-5)
    loss = multiscale_gradient_loss(3.0 * teacher, teacher, valid, scales=4)
    assert loss.item() == pytest.approx(0, abs=1e-6)
    # A scale too coarse to have any neighbour pair (stride 16 on 8x8) is left out of the average.
    assert multiscale_gradient_loss(pred, teacher, valid, scales=5).item() == pytest.approx(
        multiscale_gradient_loss(pred, teacher, valid, scales=4).item()
    )


def test_gradients_finite_for_collapsed_predictions():
    pred, teacher, valid, confidence = clip()
    pred = pred.clone()
    pred[0, 0, 0, :] = 0.0  # a collapsed (zero) prediction on valid pixels
    pred.requires_grad_(True)
    total = sum(fn(pred, teacher, valid, confidence) for fn in TERMS.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(pred.grad).all()


def full_inputs(N=3, seed=0):
    pred, teacher, valid, confidence = clip(N=N, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    pairs = max(N - 1, 0)
    return {
        "pred": pred.requires_grad_(True),
        "teacher": teacher,
        "valid": valid,
        "confidence": confidence,
        "consistent": torch.rand(2, pairs, 8, 10, generator=g) > 0.1,
        "static": torch.rand(2, pairs, 8, 10, generator=g) > 0.3,
        "flow": 2 * torch.randn(2, pairs, 8, 10, 2, generator=g),
        "states": {
            "t1": torch.randn(2, N, 4, 4, 5, generator=g),
            "t4": torch.randn(2, N, 8, 2, 3, generator=g),
        },
    }


def test_distillation_loss_is_the_weighted_sum_of_its_terms():
    cfg = LossConfig(metric_l1=1.0, ssi=0.5, tgm=2.0, warp=0.7, state_smooth=0.1, silog=0.3, grad=0.25,
                     hdn=0.2, grad_preserve=0.4, hdn_levels=2, hdn_mode="spatial")
    inputs = full_inputs()
    total, terms = DistillationLoss(cfg)(**inputs)
    p, t, v, c = inputs["pred"], inputs["teacher"], inputs["valid"], inputs["confidence"]
    expected = {
        "metric_l1": metric_log_l1(p, t, v, c),
        "ssi": ssi_loss(p, t, v, c, trim=cfg.ssi_trim),
        "tgm": temporal_gradient_matching(
            p, t, v, jump_threshold=cfg.tgm_jump_threshold, pair_mask=inputs["consistent"]
        ),
        "warp": warped_consistency(p, v, inputs["flow"], inputs["consistent"] & inputs["static"]),
        "state_smooth": state_smoothing(inputs["states"], inputs["static"], moving_weight=0.1),
        "silog": silog_loss(p, t, v, lam=cfg.silog_lambda),
        "grad": multiscale_gradient_loss(p, t, v, scales=cfg.grad_scales),
        "hdn": hdn_loss(p, t, v, levels=2, mode="spatial"),
        "grad_preserve": gradient_preservation_loss(p, t, v, scales=cfg.grad_scales),
    }
    assert set(terms) == {*expected, "total"}
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value.detach())
        assert not terms[name].requires_grad and value > 0
    torch.testing.assert_close(total, sum(cfg.weights()[k] * v for k, v in expected.items()))
    total.backward()
    assert torch.isfinite(inputs["pred"].grad).all()


def test_zero_weight_terms_are_never_computed(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a term with weight 0 was computed")

    for name in (
        "ssi_loss",
        "temporal_gradient_matching",
        "warped_consistency",
        "state_smoothing",
        "silog_loss",
        "multiscale_gradient_loss",
        "hdn_loss",
        "gradient_preservation_loss",
    ):
        monkeypatch.setattr(distill_module, name, forbidden)
    cfg = LossConfig(metric_l1=1.0, ssi=0.0, tgm=0.0, state_smooth=0.0, silog=0.0, grad=0.0)
    inputs = full_inputs()
    inputs["states"] = inputs["flow"] = None  # not needed when state_smooth == warp == 0
    total, terms = DistillationLoss(cfg)(**inputs)
    assert set(terms) == {"metric_l1", "total"}
    torch.testing.assert_close(
        total, metric_log_l1(inputs["pred"], inputs["teacher"], inputs["valid"], inputs["confidence"])
    )


def test_single_frame_batch_trains_on_spatial_terms_only():
    cfg = LossConfig(tgm=1.0, state_smooth=1.0)
    inputs = full_inputs(N=1)
    total, terms = DistillationLoss(cfg)(**inputs)
    assert terms["tgm"].item() == 0.0 and terms["state_smooth"].item() == 0.0
    assert terms["metric_l1"] > 0 and terms["ssi"] > 0
    total.backward()
    assert torch.isfinite(inputs["pred"].grad).all()


def test_confidence_and_consistency_switches():
    inputs = full_inputs()
    off = DistillationLoss(LossConfig(use_confidence=False, tgm_use_consistency=False))(**inputs)[1]
    p, t, v = inputs["pred"], inputs["teacher"], inputs["valid"]
    torch.testing.assert_close(off["metric_l1"], metric_log_l1(p, t, v).detach())
    torch.testing.assert_close(off["tgm"], temporal_gradient_matching(p, t, v).detach())
    with pytest.raises(ValueError, match="no state summaries"):
        DistillationLoss(LossConfig(state_smooth=0.5))(**{**inputs, "states": None})
    with pytest.raises(ValueError, match=r"warp weight is 0\.5 but the flow"):
        DistillationLoss(LossConfig(warp=0.5))(**{**inputs, "flow": None})


def _moving_texture(N=4, H=12, W=16, shift=(2.0, 1.0), seed=0):
    """A random log-depth texture translated by ``shift`` (du, dv) pixels per frame: (1, N, H, W) depths
    and the matching constant flow (1, N-1, H, W, 2)."""
    g = torch.Generator().manual_seed(seed)
    big = 1 + 3 * torch.rand(H + N * 4, W + N * 4, generator=g)
    du, dv = int(shift[0]), int(shift[1])
    # Frame t shows big[y0 - t dv + y, x0 - t du + x]: what is at x in frame t is at x + du in frame t+1.
    x0 = y0 = 2 * N
    frames = [big[y0 - t * dv : y0 - t * dv + H, x0 - t * du : x0 - t * du + W] for t in range(N)]
    flow = torch.tensor([float(du), float(dv)]).expand(1, N - 1, H, W, 2)
    return torch.stack(frames)[None], flow.clone()


def test_warped_consistency_known_answers():
    depth, flow = _moving_texture()
    everywhere = torch.ones(1, 3, 12, 16, dtype=torch.bool)
    valid = torch.ones(1, 4, 12, 16, dtype=torch.bool)
    # A static texture carried by the flow: steady, whatever its own pattern.
    assert warped_consistency(depth, valid, flow, everywhere).item() < 1e-6
    # A global scale change between frames: exactly |log c| per pair, whichever direction.
    flicker = depth * torch.tensor([1.0, 1.1, 1.0, 0.8]).view(1, 4, 1, 1)
    expected = (math.log(1.1) + math.log(1.1) + abs(math.log(0.8))) / 3
    torch.testing.assert_close(warped_consistency(flicker, valid, flow, everywhere), torch.tensor(expected))
    # The same depths with the wrong (zero) flow are not steady: the loss reads along the flow.
    assert warped_consistency(depth, valid, torch.zeros_like(flow), everywhere) > 0.1
    # Targets outside the frame, masked pixels and targets next to invalid pixels of t+1 are never read.
    garbage = depth.clone()
    garbage[:, 1:, :, -3:] = 1e3  # frame t+1's right edge: only reached from pixels flowing there
    valid_cut = valid.clone()
    valid_cut[:, 1:, :, -3:] = False
    assert warped_consistency(garbage, valid_cut, flow, everywhere).item() < 1e-6
    assert warped_consistency(depth[:, :1], valid[:, :1], flow[:, :0], everywhere[:, :0]).item() == 0.0


def test_warped_consistency_gradients_reach_both_frames():
    depth, flow = _moving_texture()
    pred = (depth * torch.tensor([1.0, 1.2, 0.9, 1.0]).view(1, 4, 1, 1)).requires_grad_(True)
    valid = torch.ones(1, 4, 12, 16, dtype=torch.bool)
    warped_consistency(pred, valid, flow, torch.ones(1, 3, 12, 16, dtype=torch.bool)).backward()
    per_frame = pred.grad.abs().sum(dim=(0, 2, 3))
    assert (per_frame > 0).all() and torch.isfinite(pred.grad).all()


def test_loss_config_validation():
    cfg = LossConfig.from_dict({"ssi": 0, "grad_scales": 2}, "train.loss")
    assert cfg.ssi == 0.0 and "ssi" not in cfg.weights() and cfg.grad_scales == 2
    with pytest.raises(ConfigError, match=r"train.loss: unknown key\(s\) \['tgm_weight'\]"):
        LossConfig.from_dict({"tgm_weight": 1.0}, "train.loss")
    with pytest.raises(ConfigError, match="loss weight ssi must be finite and >= 0"):
        LossConfig.from_dict({"ssi": -1.0}, "train.loss")
    with pytest.raises(ConfigError, match="all loss weights are 0"):
        LossConfig.from_dict(
            dict.fromkeys(("metric_l1", "ssi", "tgm", "state_smooth", "silog", "grad"), 0), "train.loss"
        )
    with pytest.raises(ConfigError, match=r"ssi_trim must be in \[0, 1\)"):
        LossConfig.from_dict({"ssi_trim": 1.0}, "train.loss")
    with pytest.raises(ConfigError, match=r"hdn_levels must be in \[1, 4\]"):
        LossConfig.from_dict({"hdn_levels": 5}, "train.loss")
    with pytest.raises(ConfigError, match=r"hdn_mode: 'grid' is not one of"):
        LossConfig.from_dict({"hdn_mode": "grid"}, "train.loss")
