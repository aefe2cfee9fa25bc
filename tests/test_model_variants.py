"""Model variants: the ZoeDepth metric bins head (``head: zoe_bins``) and camera tokens (``camera: tokens``).

The bins maths against known answers; every variant (zoe_bins with the CNN and with a timm ViT, camera tokens
with a ViT) trains, streams (steps == clip), saves and loads, and predicts positive depth; camera tokens reach
exactly the ViT blocks after the injection layer; a ``camera: rays`` checkpoint initialises a
``camera: tokens`` student with the camera-encoder tensors reported as missing. The ViT is timm's
``vit_tiny_patch16_224`` with random weights, cut to 4 blocks by ``timm_out_indices: [0, 1, 2, 3]``.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_models import TINY, TOL, clip_inputs, randomise_, rel_err, run_steps

from videomamba_depth.config import ConfigError
from videomamba_depth.models import ModelConfig, build_student, load_student, save_student
from videomamba_depth.models.bins import (
    MAX_TEMP,
    MIN_TEMP,
    SeedBins,
    ZoeBinsHead,
    attract,
    centers_from_widths,
    log_binomial_probs,
)
from videomamba_depth.models.io import CheckpointError, load_adding_camera_encoder

try:
    from videomamba_depth.models import require_timm

    require_timm()
    HAS_TIMM = True
except ImportError:
    HAS_TIMM = False
needs_timm = pytest.mark.skipif(not HAS_TIMM, reason="timm not importable here")

HEIGHT, WIDTH = 30, 40  # ViT/16: padded to 32 x 48 (2 x 3 patches); CNN: 32 x 64
ZOE = {"head": "zoe_bins", "n_bins": 8, "bin_embedding_dim": 8}
VIT = {
    "encoder": "timm", "timm_name": "vit_tiny_patch16_224", "timm_out_indices": [0, 1, 2, 3],
    "timm_pretrained": False,
}
TOKENS = {**VIT, "camera": "tokens", "cam_tokens": 2, "cam_blocks": 1, "cam_token_inject_layer": 2}
VARIANTS = {
    "zoe_cnn": ZOE,
    "zoe_vit": {**VIT, **ZOE},
    "tokens_vit": TOKENS,
}
# The parameters each variant adds (they must receive gradients).
NEW_PARTS = {"zoe_cnn": "decoder.head_out.", "zoe_vit": "decoder.head_out.", "tokens_vit": "camera."}


def variant_config(name: str, **overrides) -> ModelConfig:
    return ModelConfig.from_dict({**TINY, **VARIANTS[name], **overrides}, where="train.model")


def variant(name: str) -> pytest.param:
    return pytest.param(name, marks=needs_timm if "vit" in name else ())


ALL_VARIANTS = [variant(name) for name in VARIANTS]


# --- the bins maths -----------------------------------------------------------------------------------------


def test_normed_centres_are_midpoints_of_widths_spanning_the_range():
    widths = torch.full((1, 4, 1, 1), 0.25)
    centers = centers_from_widths(widths, 1.0, 5.0)
    assert torch.allclose(centers.flatten(), torch.tensor([1.5, 2.5, 3.5, 4.5]))
    # Any seed: the edges rebuilt from the centres (e_0 = min, e_k+1 = 2 c_k - e_k) end exactly at max_depth,
    # i.e. the widths sum to the range; the centres ascend inside it.
    torch.manual_seed(0)
    seed = SeedBins(6, 8, 16, "normed", 0.5, 12.0)
    centers = seed(torch.randn(2, 6, 3, 5))
    edge = torch.full_like(centers[:, 0], 0.5)
    for k in range(centers.shape[1]):
        edge = 2 * centers[:, k] - edge
    assert torch.allclose(edge, torch.full_like(edge, 12.0), atol=1e-4)
    assert (centers.diff(dim=1) > 0).all() and (centers > 0.5).all() and (centers < 12.0).all()
    assert (SeedBins(6, 8, 16, "softplus", 0.5, 12.0)(torch.randn(2, 6, 3, 5)) > 0).all()


@pytest.mark.parametrize("kind", ["inv", "exp"])
def test_attractors_pull_centres_towards_them_without_passing(kind):
    centers = torch.tensor([0.5, 0.5]).view(1, 2, 1, 1)
    above, below = torch.tensor([0.6]).view(1, 1, 1, 1), torch.tensor([0.4]).view(1, 1, 1, 1)
    up, down = attract(centers, above, kind, 1.0, 2), attract(centers, below, kind, 1.0, 2)
    # dx = 0.1, alpha = 1, gamma = 2: inv moves by 0.1 / 1.01, exp by exp(-0.01) * 0.1.
    shift = 0.1 / 1.01 if kind == "inv" else math.exp(-0.01) * 0.1
    assert torch.allclose(up, centers + shift) and torch.allclose(down, centers - shift)
    assert (up < 0.6).all() and (down > 0.4).all()
    # Mean over attractors: two symmetric ones cancel; a far one with a large alpha barely moves the centre.
    both = torch.tensor([0.4, 0.6]).view(1, 2, 1, 1)
    assert torch.allclose(attract(centers, both, kind, 1.0, 2), centers)
    far = attract(centers, torch.tensor([1.5]).view(1, 1, 1, 1), kind, 1000.0, 2)
    assert ((far - centers) >= 0).all() and ((far - centers) < 1e-3).all()


def test_log_binomial_is_a_binomial_peaked_at_the_expected_bin():
    n_bins = 10
    p = torch.tensor([0.05, 0.33, 0.71, 0.97]).view(4, 1, 1)
    probs = log_binomial_probs(p, torch.ones_like(p), n_bins)
    assert probs.shape == (4, n_bins, 1, 1)
    assert torch.allclose(probs.sum(dim=1), torch.ones(4, 1, 1))
    # t = 1: exactly Binomial(K - 1, p), whose mode is floor(K p).
    binomial = torch.distributions.Binomial(n_bins - 1, probs=p.flatten()[:, None])
    expected = binomial.log_prob(torch.arange(n_bins, dtype=torch.float32)).exp()
    assert torch.allclose(probs[..., 0, 0], expected, atol=1e-5)
    assert probs.argmax(dim=1).flatten().tolist() == [0, 3, 7, 9]
    # A lower temperature sharpens around the same mode, a higher one flattens.
    sharp = log_binomial_probs(p, torch.full_like(p, 0.1), n_bins)
    flat = log_binomial_probs(p, torch.full_like(p, 10.0), n_bins)
    assert torch.equal(sharp.argmax(dim=1), probs.argmax(dim=1))
    assert (sharp.amax(dim=1) > probs.amax(dim=1)).all() and (flat.amax(dim=1) < probs.amax(dim=1)).all()


@pytest.mark.parametrize("bin_centers_type", ["normed", "softplus", "hybrid1", "hybrid2"])
@pytest.mark.parametrize("attractor_type", ["inv", "exp"])
def test_zoe_head_is_the_expectation_over_sorted_positive_bins(bin_centers_type, attractor_type):
    torch.manual_seed(1)
    head = ZoeBinsHead(
        4, 6, [6, 5, 4, 3], n_bins=12, bin_centers_type=bin_centers_type, min_depth=0.1, max_depth=8.0,
        n_attractors=[4, 3, 2, 1], attractor_type=attractor_type, alpha=10.0, gamma=2, embedding_dim=5,
    )
    pyramid = [torch.randn(2, c, s, s) for c, s in zip([6, 5, 4, 3], [2, 3, 5, 9], strict=True)]
    last, bottleneck = torch.randn(2, 4, 18, 18), torch.randn(2, 6, 2, 2)
    log_depth = head(last, bottleneck, pyramid)
    probs, centers = head.bins(last, bottleneck, pyramid)
    assert log_depth.shape == (2, 1, 18, 18) and log_depth.dtype == torch.float32
    assert torch.allclose(log_depth.exp()[:, 0], (probs * centers).sum(dim=1), rtol=1e-6)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 18, 18), atol=1e-5)
    assert (centers > 0).all() and (centers.diff(dim=1) >= 0).all()
    if bin_centers_type in ("normed", "hybrid2"):  # normed attractors keep the centres in the range
        assert (centers >= 0.1).all() and (centers <= 8.0).all()
    assert 0 < MIN_TEMP < MAX_TEMP


# --- configuration ------------------------------------------------------------------------------------------


def test_config_rejects_unknown_values_and_cnn_with_tokens():
    for key, value in (("head", "bins"), ("bin_centers_type", "sigmoid"), ("attractor_type", "lin"),
                       ("camera", "pose")):
        with pytest.raises(ValueError, match=f"{key} must be one of"):
            ModelConfig(**{key: value})
        with pytest.raises(ConfigError, match=f"{key}"):
            ModelConfig.from_dict({key: value}, where="train.model")
    with pytest.raises(ValueError, match="n_attractors"):
        ModelConfig(n_attractors=(16, 8, 4))
    with pytest.raises(ValueError, match="min_depth < max_depth"):
        ModelConfig(min_depth=5.0, max_depth=5.0)
    with pytest.raises(ValueError, match="attractor_alpha"):
        ModelConfig(attractor_alpha=0.0)
    with pytest.raises(ConfigError, match=r"camera: tokens needs encoder: timm .* use camera: rays"):
        ModelConfig.from_dict({"camera": "tokens"}, where="train.model")
    with pytest.raises(ValueError, match="cam_token_inject_layer 4 is after the last feature block 3"):
        ModelConfig(**{**TOKENS, "timm_out_indices": (0, 1, 2, 3), "cam_token_inject_layer": 4})
    # The defaults are today's model: DPT head, ray FiLM.
    assert ModelConfig().head == "dpt" and ModelConfig().camera == "rays"


@needs_timm
def test_tokens_need_a_vit_backbone():
    config = ModelConfig.from_dict({
        **TINY, **TOKENS, "timm_name": "convnext_atto.d2_in1k", "timm_dynamic_img_size": False,
    })
    with pytest.raises(ValueError, match=r"needs a ViT timm backbone.*convnext_atto"):
        build_student(config)


# --- every variant: train, stream, save / load --------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_variant_trains_with_gradients_to_its_new_parts(name):
    torch.manual_seed(1)
    model = build_student(variant_config(name)).train()
    rgb, K = clip_inputs(2, 2, 3, HEIGHT, WIDTH)
    target = torch.linspace(1.0, 4.0, WIDTH).expand(2, 3, HEIGHT, WIDTH)  # a depth ramp to fit
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-3, 1.0, 0.01))
    # Every new tensor gets a gradient (the unknown-camera token only from samples without K: below). The
    # DPT head's zero-initialised last conv blocks the gradients before it in the first step only.
    silent = {k for k in model.state_dict() if k.startswith(NEW_PARTS[name]) and k != "camera.unknown"}
    assert silent
    losses = []
    for _ in range(5):
        optimizer.zero_grad(set_to_none=True)
        depth = model(rgb, K).depth
        loss = (depth.log() - target.log()).square().mean()
        loss.backward()
        silent -= {k for k, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        optimizer.step()
        losses.append(loss.item())
        assert torch.isfinite(depth).all() and (depth > 0).all()
    assert not silent, sorted(silent)
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_variant_streams_saves_and_loads(name, tmp_path):
    torch.manual_seed(2)
    model = randomise_(build_student(variant_config(name)), 2, keep_zero=("backbone.",)).eval()
    rgb, K = clip_inputs(3, 2, 4, HEIGHT, WIDTH)
    with torch.no_grad():
        full = model(rgb, K)
        first = model(rgb[:, :2], K[:, :2])
        second = model(rgb[:, 2:], K[:, 2:], first.states)
        stepped, _ = run_steps(model, rgb, K)
    assert full.depth.shape == (2, 4, HEIGHT, WIDTH) and (full.depth > 0).all()
    assert rel_err(stepped, full.depth) <= TOL
    assert rel_err(torch.cat([first.depth, second.depth], dim=1), full.depth) <= TOL
    save_student(tmp_path / "student.safetensors", model)
    loaded = load_student(tmp_path / "student.safetensors")
    assert loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(rgb, K).depth, full.depth)


def test_zoe_bins_keep_the_canonical_focal_contract():
    """Bins are canonical metres: the same image with a doubled focal has exactly doubled metric depth."""
    torch.manual_seed(3)
    model = randomise_(build_student(variant_config("zoe_cnn")), 3, keep_zero=("rays.",)).eval()
    rgb, K = clip_inputs(6, 1, 2, HEIGHT, WIDTH)
    K2 = K.clone()
    K2[..., :2, :2] *= 2.0
    with torch.no_grad():
        depth, depth2 = model(rgb, K).depth, model(rgb, K2).depth
    assert depth.std() > 0 and rel_err(depth2, 2.0 * depth) <= TOL


# --- camera tokens ------------------------------------------------------------------------------------------


@needs_timm
def test_camera_tokens_reach_exactly_the_blocks_after_the_injection_layer():
    torch.manual_seed(4)
    model = build_student(variant_config("tokens_vit")).eval()  # tokens join before block 2 of 0..3
    rgb, K = clip_inputs(7, 1, 1, HEIGHT, WIDTH)
    K_shifted = K.clone()
    K_shifted[..., 0, 2] += 7.0
    K_shifted[..., :2, :2] *= 1.5
    with torch.no_grad():
        feats = model._frame_features(rgb[:, 0], K[:, 0])
        shifted = model._frame_features(rgb[:, 0], K_shifted[:, 0])
        # Before the injection the ViT runs as timm's own forward_intermediates.
        x = model.encoder.normalize_and_pad(rgb[:, 0])
        timm_maps = model.encoder.backbone(x)
        token_maps = model.encoder._vit_maps(x, model.camera(K[:, 0], None, (HEIGHT, WIDTH)))
    assert torch.equal(feats["s4"], shifted["s4"]) and torch.equal(feats["s8"], shifted["s8"])
    assert rel_err(shifted["s16"], feats["s16"]) > 1e-4 and rel_err(shifted["s32"], feats["s32"]) > 1e-4
    for i in (0, 1):
        assert torch.allclose(token_maps[i], timm_maps[i], atol=1e-6)
    assert [tuple(m.shape) for m in token_maps] == [tuple(m.shape) for m in timm_maps]


@needs_timm
def test_samples_without_intrinsics_use_the_learned_unknown_camera_token():
    torch.manual_seed(5)
    model = randomise_(build_student(variant_config("tokens_vit")), 5, keep_zero=("backbone.",)).train()
    rgb, K = clip_inputs(8, 1, 2, HEIGHT, WIDTH)
    rgb, K = rgb[0], K[0]  # two images
    other = K.clone()
    other[:, 0, 2] += 9.0
    other[:, 1, 1] *= 1.3
    unknown = torch.tensor([True, False])
    with torch.no_grad():
        feats = model._frame_features(rgb, K, unknown)
        feats_other = model._frame_features(rgb, other, unknown)
        known = model._frame_features(rgb, K, torch.ones(2, dtype=torch.bool))
        assert all(torch.equal(known[k], v) for k, v in model._frame_features(rgb, K).items())  # None: all
    for name in ("s16", "s32"):  # the known image sees its camera, the unknown one only the token
        assert rel_err(feats_other[name][0], feats[name][0]) > 1e-4
        assert torch.equal(feats_other[name][1], feats[name][1])
    depth = model.forward_frames(rgb, K, unknown)
    depth.log().mean().backward()
    assert model.camera.unknown.grad.abs().sum() > 0 and model.camera.mlp[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="has_K"):
        model.forward_frames(rgb, K, unknown[:1])


@needs_timm
def test_rays_checkpoint_initialises_a_tokens_student_reporting_the_camera_keys(tmp_path, capsys):
    from videomamba_depth.training.loop import init_from_pretrained

    torch.manual_seed(6)
    rays = build_student(variant_config("tokens_vit", camera="rays"))
    with torch.no_grad():
        rays.decoder.head_out.weight.normal_()  # trained-looking; temporal blocks left the identity
    save_student(tmp_path / "rays.safetensors", rays)
    torch.manual_seed(7)
    model = build_student(variant_config("tokens_vit"))
    fresh_camera = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("camera.")}
    assert len(init_from_pretrained(model, tmp_path / "rays.safetensors")) == 64
    report = capsys.readouterr().err
    state, source = model.state_dict(), rays.state_dict()
    assert f"the {len(fresh_camera)} camera-encoder tensors keep their fresh initialisation" in report
    assert all(k in report for k in fresh_camera) and "rays.s4.mlp.0.weight" in report
    assert all(torch.equal(state[k], v) for k, v in fresh_camera.items())
    assert all(torch.equal(state[k], v) for k, v in source.items() if not k.startswith("rays."))

    # Only the camera conditioning may differ: another missing tensor or another architecture still fails.
    partial = {k: v for k, v in source.items() if k != "decoder.head_out.bias"}
    only_camera = r"camera encoder may be missing.*also missing: decoder\.head_out\.bias$"
    with pytest.raises(CheckpointError, match=only_camera):
        load_adding_camera_encoder(model, partial, "partial")
    other = build_student(variant_config("tokens_vit", camera="rays", head_width=4))
    save_student(tmp_path / "other.safetensors", other)
    with pytest.raises(ValueError, match=r"another architecture.*head_width"):
        init_from_pretrained(model, tmp_path / "other.safetensors")


@pytest.mark.parametrize("name", ALL_VARIANTS)
def test_variant_runs_under_bf16_autocast(name):
    torch.manual_seed(8)
    model = randomise_(build_student(variant_config(name)), 8, keep_zero=("backbone.",)).eval()
    rgb, K = clip_inputs(9, 1, 2, HEIGHT, WIDTH)
    with torch.no_grad():
        ref = model(rgb, K).depth
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(rgb, K).depth
    assert out.dtype == torch.float32 and torch.isfinite(out).all() and (out > 0).all()
    assert (out.log() - ref.log()).abs().max() < 0.1  # bf16 features: close, not equal
