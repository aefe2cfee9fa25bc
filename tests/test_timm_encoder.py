"""The student with real timm backbones (random weights, no download): a DINOv2 ViT-S/14 and a ConvNeXt.

Training steps, clip = chunks = steps equivalence, save/load, and loading a real timm state dict through
``encoder_checkpoint`` and the prefix map. Skipped (with the reason) where timm does not import.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from test_models import TINY, clip_inputs, randomise_, rel_err, run_steps

from videomamba_depth.models import ModelConfig, build_student, load_student, require_timm, save_student

try:
    timm = require_timm()
except ImportError as exc:
    pytest.skip(f"timm not importable here: {exc.__cause__}", allow_module_level=True)

# (timm_name, out_indices, dynamic_img_size): the params.yaml default ViT and the smallest ConvNeXt.
BACKBONES = {
    "vit_s14_dinov2": ("vit_small_patch14_dinov2.lvd142m", (2, 5, 8, 11), True),
    "convnext_atto": ("convnext_atto.d2_in1k", (0, 1, 2, 3), False),
}
HEIGHT, WIDTH = 30, 40  # ViT/14: padded to 42 x 42 (3 x 3 patches); ConvNeXt: 32 x 64
# The CNN-sized test tolerance (1e-5) holds here too: the backbones are per-frame and normalise per token
# (LayerNorm), so a clip and its frames one by one do the same arithmetic.
TOL = 1e-5


def timm_config(key: str, **overrides) -> ModelConfig:
    name, out_indices, dynamic = BACKBONES[key]
    values = {**TINY, "encoder": "timm", "timm_name": name, "timm_out_indices": list(out_indices),
              "timm_dynamic_img_size": dynamic, "timm_pretrained": False, **overrides}
    return ModelConfig.from_dict(values, where="train.model")


@pytest.fixture(scope="module", params=sorted(BACKBONES))
def student(request):
    """A timm-encoder student with randomised temporal path (as after training), and its backbone key."""
    torch.manual_seed(0)
    model = build_student(timm_config(request.param))
    return randomise_(model, 0, keep_zero=("backbone.",)), request.param


def test_clip_chunks_and_steps_agree_in_train_mode(student):
    model, _ = student
    rgb, K = clip_inputs(1, 2, 4, HEIGHT, WIDTH)
    model.train()
    with torch.no_grad():
        full = model(rgb, K)
        first = model(rgb[:, :1], K[:, :1])
        second = model(rgb[:, 1:], K[:, 1:], first.states)
        stepped, _ = run_steps(model, rgb, K)
    assert full.depth.shape == (2, 4, HEIGHT, WIDTH) and torch.isfinite(full.depth).all()
    assert rel_err(torch.cat([first.depth, second.depth], dim=1), full.depth) <= TOL
    assert rel_err(stepped, full.depth) <= TOL
    # The frames interact (the checks above are not trivial), and the backbone sees the image.
    alone = model(rgb[:, -1:], K[:, -1:]).depth[:, 0]
    assert rel_err(alone, full.depth[:, -1]) > 1e-3
    assert rel_err(model(255 - rgb, K).depth, full.depth) > 1e-3


def test_training_steps_update_the_backbone_and_lower_the_loss(student):
    name = student[1]
    torch.manual_seed(1)
    model = build_student(timm_config(name)).train()
    rgb, K = clip_inputs(2, 2, 3, HEIGHT, WIDTH)
    target = torch.linspace(1.0, 4.0, WIDTH).expand(2, 3, HEIGHT, WIDTH)  # a depth ramp to fit
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-3, 0.1, 0.01))
    before = {k: v.clone() for k, v in model.encoder.backbone.state_dict().items()}
    losses = []
    for _ in range(4):
        optimizer.zero_grad(set_to_none=True)
        loss = (model(rgb, K).depth.log() - target.log()).square().mean()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    changed = [k for k, v in model.encoder.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no backbone tensor was updated"
    assert model.backends["encoder"] == f"timm:{BACKBONES[name][0]}"


def test_save_and_load_rebuild_the_same_model(student, tmp_path):
    model, _ = student
    model.eval()
    save_student(tmp_path / "student.safetensors", model)
    loaded = load_student(tmp_path / "student.safetensors")
    rgb, K = clip_inputs(3, 1, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        assert torch.equal(loaded(rgb, K).depth, model(rgb, K).depth)
    assert loaded.config == model.config


def test_vit_encoder_checkpoint_from_a_real_timm_state_dict(tmp_path, capsys):
    """A Depth Anything style file: the plain timm DINOv2 ViT-S under ``pretrained.``, plus a head. The
    features_only backbone keeps the ViT under ``backbone.model.``, so that is where the prefix map points."""
    name = BACKBONES["vit_s14_dinov2"][0]
    torch.manual_seed(5)
    source = timm.create_model(name, pretrained=False)
    state = {f"pretrained.{k}": v for k, v in source.state_dict().items()}
    state["depth_head.proj.weight"] = torch.zeros(4, 4)
    save_file(state, str(tmp_path / "depth_anything_like.safetensors"))
    cfg = timm_config("vit_s14_dinov2", encoder_checkpoint=str(tmp_path / "depth_anything_like.safetensors"),
                      encoder_prefix_map=[["pretrained.", "backbone.model."]])
    model = build_student(cfg)
    loaded = model.encoder.backbone.model.state_dict()
    for key, value in source.state_dict().items():
        if key in loaded:
            assert torch.equal(loaded[key], value), key
    assert sum(k in loaded for k in source.state_dict()) == len(loaded)  # every backbone tensor came
    report = capsys.readouterr().err
    assert f"loaded {len(loaded)}/" in report
    # The final norm (features_only drops it) and the head are unexpected; only the adapters are missing.
    assert "backbone.model.norm.weight" in report and "depth_head.proj.weight" in report
    assert "missing (module keys not in the checkpoint, left as initialised): 8: adapters.0.weight" in report


def test_convnext_encoder_checkpoint_maps_each_stage_prefix(tmp_path, capsys):
    """A plain timm ConvNeXt state dict: ``features_only`` renames ``stem.0`` / ``stages.0`` to ``stem_0`` /
    ``stages_0``, so the prefix map lists one pair per module; the classifier head is reported unexpected."""
    name = BACKBONES["convnext_atto"][0]
    torch.manual_seed(6)
    source = timm.create_model(name, pretrained=False)
    save_file(source.state_dict(), str(tmp_path / "convnext.safetensors"))
    modules = [("stem", i) for i in range(2)] + [("stages", i) for i in range(4)]
    prefix_map = [[f"{m}.{i}.", f"backbone.{m}_{i}."] for m, i in modules]
    cfg = timm_config("convnext_atto", encoder_checkpoint=str(tmp_path / "convnext.safetensors"),
                      encoder_prefix_map=prefix_map)
    model = build_student(cfg)
    backbone = model.encoder.backbone.state_dict()
    plain = source.state_dict()
    for key, value in backbone.items():
        m, rest = key.split(".", 1)
        assert torch.equal(value, plain[m.replace("_", ".") + "." + rest]), key
    report = capsys.readouterr().err
    assert f"loaded {len(backbone)}/{len(model.encoder.state_dict())}" in report
    assert "(checkpoint keys not in the module, ignored): 4: head.fc.bias, head.fc.weight" in report
