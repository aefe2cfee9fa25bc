"""Student I/O and training plumbing: save/load, external checkpoints, parameter groups, timm encoder."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from test_models import TINY, clip_inputs, rel_err, run_steps, tiny_model
from torch import nn

from videomamba_depth.config import ConfigError
from videomamba_depth.models import (
    ModelConfig,
    build_student,
    load_external_checkpoint,
    load_student,
    require_timm,
    save_student,
)

# --- config -------------------------------------------------------------------------------------------------


def test_config_from_params_and_json_round_trip():
    values = {**TINY, "encoder_prefix_map": [["pretrained.", "backbone."], ["encoder.", "backbone."]]}
    cfg = ModelConfig.from_dict(values, where="train.model")
    assert cfg.widths == (8, 8, 16, 16)
    assert cfg.encoder_prefix_map == (("pretrained.", "backbone."), ("encoder.", "backbone."))
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_dict({"widht": [8, 8, 8, 8]}, where="train.model")


# --- save / load --------------------------------------------------------------------------------------------


class DDPLike(nn.Module):
    """Stand-in for DistributedDataParallel: the model under ``.module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


class CompileLike(nn.Module):
    """Stand-in for ``torch.compile``'s OptimizedModule: the model under ``._orig_mod`` (importing dynamo
    for the real one costs seconds)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module


def test_save_load_round_trip(tmp_path):
    model = tiny_model(3).eval()
    path = tmp_path / "student.safetensors"
    save_student(path, model)
    loaded = load_student(path)
    assert loaded.config == model.config and not loaded.training
    rgb, K = clip_inputs(0, 1, 3, 30, 40)
    with torch.no_grad():
        assert torch.equal(loaded(rgb, K).depth, model(rgb, K).depth)
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["videomamba_depth"])
        keys = set(f.keys())
    assert header["model_config"] == model.config.to_dict() and header["format_version"] == "2"
    assert keys == set(model.state_dict())
    # Same weights, same bytes (safetensors orders a multi-key metadata map randomly: one key avoids it).
    again = tmp_path / "again.safetensors"
    for _ in range(5):
        save_student(again, model)
        assert again.read_bytes() == path.read_bytes()
    assert not list(tmp_path.glob("*.partial-*"))


@pytest.mark.parametrize("wrap", [DDPLike, CompileLike])
def test_save_strips_ddp_and_compile_prefixes(tmp_path, wrap):
    model = tiny_model(4)
    wrapped = wrap(model)
    assert any(k.startswith(("module.", "_orig_mod.")) for k in wrapped.state_dict())
    save_student(tmp_path / "s.safetensors", wrapped)
    with safe_open(str(tmp_path / "s.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(model.state_dict())


def test_load_rejects_other_files_and_applies_overrides(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="not a VideoMambaDepth student"):
        load_student(other)
    old = tmp_path / "old.safetensors"
    header = {"format": "videomamba_depth.student", "format_version": "1", "model_config": {}}
    save_file({"w": torch.zeros(2)}, str(old), metadata={"videomamba_depth": json.dumps(header)})
    with pytest.raises(ValueError, match="format version '1', this code reads version 2"):
        load_student(old)
    with pytest.raises(FileNotFoundError):
        load_student(tmp_path / "missing.safetensors")
    path = tmp_path / "student.safetensors"
    save_student(path, tiny_model(5))
    assert (
        load_student(path, overrides={"ssm_chunk_size": 3})
        .temporal["s32"]
        .temporal.blocks[0]
        .mixer.chunk_size
        == 3
    )
    with pytest.raises(ConfigError, match="unknown key"):
        load_student(path, overrides={"chunk": 3})


# --- external checkpoints -----------------------------------------------------------------------------------


def external_encoder_state(model) -> tuple[dict[str, torch.Tensor], str, str]:
    """The encoder's tensors as another project would store them (``pretrained.*``), new values, one key
    missing, one extra head key and one tensor of the wrong shape. Returns (state, dropped, mismatched)."""
    gen = torch.Generator().manual_seed(0)
    keys = list(model.encoder.state_dict())
    dropped, mismatched = keys[-1], keys[0]
    state = {
        "pretrained." + k.removeprefix("backbone."): torch.randn(v.shape, generator=gen)
        for k, v in model.encoder.state_dict().items()
        if k != dropped
    }
    state["pretrained." + mismatched.removeprefix("backbone.")] = torch.zeros(2, 3)
    state["depth_head.conv.weight"] = torch.zeros(1, 4, 3, 3)
    return state, dropped, mismatched


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_external_checkpoint_is_remapped_and_reported(tmp_path, capsys, fmt):
    model = tiny_model(0, randomise=False)
    state, dropped, mismatched = external_encoder_state(model)
    if fmt == "safetensors":
        path = tmp_path / "encoder.safetensors"
        save_file(state, str(path))
    else:
        path = tmp_path / "encoder.pt"
        torch.save({"model": state, "epoch": 3}, path)  # nested, as training frameworks save them
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    report = load_external_checkpoint(model.encoder, path, {"pretrained.": "backbone."})

    assert report.missing == (dropped,)
    assert report.unexpected == ("depth_head.conv.weight",)
    assert [m[0] for m in report.mismatched] == [mismatched]
    assert report.remapped == len(state) - 1 and not report.complete
    after = model.encoder.state_dict()
    for key in report.loaded:
        assert torch.equal(after[key], state["pretrained." + key.removeprefix("backbone.")])
    assert torch.equal(after[dropped], before[dropped]) and torch.equal(after[mismatched], before[mismatched])
    printed = capsys.readouterr().err
    assert f"loaded {len(report.loaded)}/{len(after)}" in printed
    assert dropped in printed and "depth_head.conv.weight" in printed and "shape mismatch" in printed


def test_strict_checkpoint_loading_fails_without_loading(tmp_path):
    model = tiny_model(0, randomise=False)
    state, _, _ = external_encoder_state(model)
    save_file(state, str(tmp_path / "e.safetensors"))
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    with pytest.raises(ValueError, match="strict checkpoint loading failed"):
        load_external_checkpoint(model.encoder, tmp_path / "e.safetensors", strict=True)
    assert all(torch.equal(v, before[k]) for k, v in model.encoder.state_dict().items())


def test_bad_checkpoint_files_are_named(tmp_path):
    model = tiny_model(0, randomise=False)
    torch.save({"epoch": 3, "notes": "none"}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match=r"meta\.pt: no state dict found"):
        load_external_checkpoint(model.encoder, tmp_path / "meta.pt")
    save_file({"a.w": torch.zeros(1), "b.w": torch.zeros(1)}, str(tmp_path / "clash.safetensors"))
    with pytest.raises(ValueError, match=r"two checkpoint keys map to 'backbone\.w'"):
        load_external_checkpoint(
            model.encoder, tmp_path / "clash.safetensors", {"a.": "backbone.", "b.": "backbone."}
        )
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt"):
        load_external_checkpoint(model.encoder, tmp_path / "nothing.pt")


def test_build_student_loads_the_encoder_checkpoint_once(tmp_path):
    source = tiny_model(1)
    state = {"pretrained." + k.removeprefix("backbone."): v for k, v in source.encoder.state_dict().items()}
    ckpt = tmp_path / "encoder.safetensors"
    save_file(state, str(ckpt))
    cfg = ModelConfig.from_dict({**TINY, "encoder_checkpoint": str(ckpt)})
    model = build_student(cfg)
    for key, value in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value)
    save_student(tmp_path / "student.safetensors", model)
    ckpt.unlink()  # load_student rebuilds from its own weights and never reads the external file again
    assert load_student(tmp_path / "student.safetensors").config.encoder_checkpoint == str(ckpt)


# --- parameter groups and freezing --------------------------------------------------------------------------


def test_parameter_groups_split_decay_and_scale_the_encoder_lr():
    model = tiny_model(0, randomise=False)
    groups = model.parameter_groups(lr=1e-3, encoder_lr_factor=0.1, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert set(by_name) == {"backbone", "backbone_no_decay", "main", "main_no_decay"}
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    for leaf in ("A_log", "D", "dt_bias", "norm_mixer.weight", "conv_bias"):
        assert any(n.endswith(leaf) for n in no_decay) and not any(n.endswith(leaf) for n in decay)
    assert all(not n.endswith("bias") for n in decay)
    assert (
        "decoder.head_out.weight" in decay and "temporal.s32.temporal.blocks.0.mixer.in_proj.weight" in decay
    )
    backbone = {names[id(p)] for g in groups if g["name"].startswith("backbone") for p in g["params"]}
    assert backbone == {n for n, _ in model.named_parameters() if n.startswith("encoder.backbone.")}
    assert by_name["backbone"]["lr"] == pytest.approx(1e-4) and by_name["main"]["lr"] == 1e-3
    torch.optim.AdamW(groups)  # accepted as is
    # A temporal factor moves exactly the temporal blocks into groups of their own, decay split kept.
    split = {g["name"]: g for g in model.parameter_groups(1e-3, 0.1, 0.05, temporal_lr_factor=20.0)}
    assert set(split) == {*by_name, "temporal", "temporal_no_decay"}
    temporal = {names[id(p)] for key in ("temporal", "temporal_no_decay") for p in split[key]["params"]}
    assert temporal == {n for n, _ in model.named_parameters() if n.startswith("temporal.")}
    assert split["temporal"]["lr"] == split["temporal_no_decay"]["lr"] == pytest.approx(2e-2)
    assert split["temporal"]["weight_decay"] == 0.05 and split["temporal_no_decay"]["weight_decay"] == 0
    assert not any(n.startswith("temporal.") for p in split["main"]["params"] for n in [names[id(p)]])
    with pytest.raises(ValueError, match="temporal_lr_factor"):
        model.parameter_groups(1e-3, 0.1, 0.05, temporal_lr_factor=0.0)


def test_frozen_encoder_gets_no_updates():
    model = tiny_model(0, freeze_encoder=True).train()
    assert not model.encoder.backbone.training and model.decoder.training
    groups = model.parameter_groups(lr=1e-2, encoder_lr_factor=1.0, weight_decay=0.0)
    assert {g["name"] for g in groups} == {"main", "main_no_decay"}
    before = {n: p.clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(groups)
    rgb, K = clip_inputs(1, 1, 2, 30, 40)
    model(rgb, K).depth.log().mean().backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in before.items() if n.startswith("encoder."))
    assert not torch.equal(after["decoder.head_out.bias"], before["decoder.head_out.bias"])


# --- timm encoder -------------------------------------------------------------------------------------------


def test_missing_timm_raises_an_actionable_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'videomamba-depth\[timm\]'") as info:
        require_timm()
    assert "timm_pretrained_file" in str(info.value)
    with pytest.raises(ImportError, match="timm"):
        build_student(ModelConfig.from_dict({**TINY, "encoder": "timm"}))


class FakeViTFeatures(nn.Module):
    """What ``timm.create_model(..., features_only=True)`` returns for a ViT/14: 4 maps at stride 14."""

    def __init__(self, out_indices) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 12, 14, stride=14)
        self.norm = nn.BatchNorm2d(12)  # to check it stays in eval mode
        self.blocks = nn.ModuleList(nn.Conv2d(12, 12, 1) for _ in out_indices)
        self.feature_info = types.SimpleNamespace(channels=lambda: [12] * 4, reduction=lambda: [14] * 4)
        self.pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def forward(self, x):
        x = self.norm(self.patch(x))
        out = []
        for block in self.blocks:
            x = x + block(x)
            out.append(x)
        return out


@pytest.fixture
def fake_timm(monkeypatch):
    calls = []

    def create_model(name, pretrained=False, **kwargs):
        calls.append({"name": name, "pretrained": pretrained, **kwargs})
        return FakeViTFeatures(kwargs["out_indices"])

    monkeypatch.setitem(sys.modules, "timm", types.SimpleNamespace(create_model=create_model))
    return calls


def test_timm_encoder_adapts_a_stride_14_backbone(fake_timm):
    cfg = ModelConfig.from_dict(
        {**TINY, "encoder": "timm", "timm_pretrained_file": "/weights/vit.safetensors"}
    )
    torch.manual_seed(0)
    model = build_student(cfg)
    assert fake_timm[-1]["features_only"] and fake_timm[-1]["out_indices"] == (2, 5, 8, 11)
    assert fake_timm[-1]["pretrained"] and fake_timm[-1]["dynamic_img_size"]
    assert fake_timm[-1]["pretrained_cfg_overlay"] == {"file": "/weights/vit.safetensors"}
    build_student(cfg, pretrained=False)  # architecture only: no download, no file
    assert not fake_timm[-1]["pretrained"] and "pretrained_cfg_overlay" not in fake_timm[-1]

    encoder = model.encoder
    assert encoder.pad_multiple == 14 and encoder.backbone.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert torch.allclose(encoder.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    # 30 x 40 is padded to 42 x 42 (multiples of 14); scales are ceil(42 / stride).
    assert encoder.feature_sizes(30, 40) == {"s4": (11, 11), "s8": (6, 6), "s16": (3, 3), "s32": (2, 2)}
    features = encoder(encoder.normalize_and_pad(torch.rand(2, 3, 30, 40)))
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "s4": (2, 8, 11, 11),
        "s8": (2, 8, 6, 6),
        "s16": (2, 16, 3, 3),
        "s32": (2, 16, 2, 2),
    }

    model.train()
    assert not encoder.backbone.norm.training  # BatchNorm keeps its statistics, even in train mode
    stats = encoder.backbone.norm.running_mean.clone()
    rgb, K = clip_inputs(2, 2, 3, 30, 40)
    with torch.no_grad():
        full = model(rgb, K).depth
        stepped, _ = run_steps(model, rgb, K)
    assert torch.equal(encoder.backbone.norm.running_mean, stats)
    assert rel_err(stepped, full) <= 1e-5
    groups = {g["name"]: g for g in model.parameter_groups(1e-3, 0.1, 0.01)}
    backbone_ids = {id(p) for p in encoder.backbone.parameters()}
    assert {
        id(p) for p in groups["backbone"]["params"] + groups["backbone_no_decay"]["params"]
    } == backbone_ids
    assert model.backends["encoder"] == "timm:vit_small_patch14_dinov2.lvd142m"


def test_preprocessing_is_saved_with_the_model(tmp_path):
    """The prepare geometry a model was trained with travels in its file (infer reads it, no flags)."""
    from videomamba_depth.models.io import load_preprocessing

    model = tiny_model()
    save_student(tmp_path / "with.safetensors", model, {"long_edge": 112, "pad_multiple": 14})
    assert load_preprocessing(tmp_path / "with.safetensors") == {
        "long_edge": 112, "pad_multiple": 14, "canonical_focal": model.config.canonical_focal,
    }
    save_student(tmp_path / "without.safetensors", model)
    assert load_preprocessing(tmp_path / "without.safetensors") is None
    with pytest.raises(ValueError, match=r"bad\.safetensors: preprocessing must be positive integers"):
        save_student(tmp_path / "bad.safetensors", model, {"long_edge": 0, "pad_multiple": 14})
    assert not (tmp_path / "bad.safetensors").exists()
