"""Image pre-training: the synthetic image set, the per-frame path, the pretrain loop and train.init_from."""

import dataclasses
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from test_objectives import use_fake_image_unidepth
from training_fixtures import TINY_MODEL, killed_after_checkpoint, tiny_model_config, write_training_video

from videomamba_depth.camera import make_K
from videomamba_depth.config import ConfigError
from videomamba_depth.datasets import (
    ImageDatasetConfig,
    open_image_dataset,
    write_filelist,
    write_image_sample,
)
from videomamba_depth.errors import InputError
from videomamba_depth.inference.intrinsics import DEFAULT_HFOV_DEG, K_from_hfov
from videomamba_depth.losses import pair_ranking_loss
from videomamba_depth.models import ModelConfig, build_student, load_student, save_student
from videomamba_depth.models.io import load_preprocessing
from videomamba_depth.pretraining import PretrainConfig, pretrain
from videomamba_depth.pretraining.loop import data_fingerprint, with_default_K
from videomamba_depth.synth.images import SynthImagesConfig, image_frame, write_synth_images
from videomamba_depth.synth.render import Renderer
from videomamba_depth.synth.scene import SynthConfig, sample_scene
from videomamba_depth.training import TrainConfig, train
from videomamba_depth.training.loop import init_from_pretrained

PREPROCESSING = {"long_edge": 56, "pad_multiple": 14}
REPO = Path(__file__).resolve().parents[1]
TINY_SYNTH = {"width": 32, "height": 24, "supersample": 1, "videos": {"held_out": 7}}


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# --- synthetic image set ------------------------------------------------------------------------------------


def test_image_set_is_deterministic_parallel_identical_and_readable(tmp_path):
    synth = SynthConfig.from_dict(TINY_SYNTH)
    config = SynthImagesConfig(count=5, val_count=2, seed_start=1000, processes=1)
    one = write_synth_images(config, synth, tmp_path / "one")
    again = tree_digest(one)
    write_synth_images(config, synth, one)  # a re-run replaces the folder with the same bytes
    two = write_synth_images(SynthImagesConfig(count=5, val_count=2, seed_start=1000, processes=2), synth,
                             tmp_path / "two")
    assert tree_digest(one) == again == tree_digest(two)
    assert len((one / "train.txt").read_text().splitlines()) == 5
    assert (one / "val.txt").read_text().split()[0] == "rgb/0001005.png"  # val seeds follow the train seeds
    # The file list loads, and the image is a frame of the scene of its seed (the video path's), the one
    # image_frame draws.
    dataset = open_image_dataset(
        ImageDatasetConfig(format="filelist", root=str(one), split="train.txt"), long_edge=32, pad_multiple=2
    )
    sample = dataset[0]
    # Single images have no motion blur (the sensor's other draws are the video's).
    scene = sample_scene(dataclasses.replace(synth, shutter=(0.0, 0.0)), 1000)
    frame = Renderer(scene).frame(image_frame(1000, scene.num_frames))
    assert frame.flow_fwd is not None  # the video path still renders flow
    assert np.array_equal(sample["rgb"].permute(1, 2, 0).numpy(), frame.rgb)
    assert np.array_equal(sample["depth"].numpy(), frame.depth)
    assert np.allclose(sample["K"].numpy(), frame.K) and bool(sample["has_K"])


def test_data_fingerprint_follows_contents_not_modification_times(tmp_path):
    # The fingerprint is saved in the resumable state, a dvc.lock output: a fresh clone re-renders the set,
    # so a time-stamped fingerprint would change the state's bytes on every machine.
    synth = SynthConfig.from_dict(TINY_SYNTH)
    root = write_synth_images(SynthImagesConfig(count=3, val_count=1, seed_start=1000, processes=1), synth,
                              tmp_path / "set")
    dataset_config = ImageDatasetConfig(format="filelist", root=str(root), split="train.txt")

    def fingerprint() -> str:
        return data_fingerprint([open_image_dataset(dataset_config, long_edge=32, pad_multiple=2)])

    before = fingerprint()
    rgb = root / (root / "train.txt").read_text().split()[0]
    rgb.write_bytes(rgb.read_bytes())  # same bytes, new modification time
    assert fingerprint() == before
    content = bytearray(rgb.read_bytes())
    content[-1] ^= 1  # same size, one bit flipped
    rgb.write_bytes(bytes(content))
    assert fingerprint() != before


def test_image_seeds_must_avoid_video_seeds(tmp_path):
    synth = SynthConfig.from_dict({**TINY_SYNTH, "videos": {"scene_x": 1003}})
    with pytest.raises(ConfigError, match=r"scene_x.*seed_start past 1003"):
        write_synth_images(SynthImagesConfig(count=5, val_count=2, seed_start=1000), synth, tmp_path / "s")
    assert not (tmp_path / "s").exists()
    # Just past the video seeds (and the validation range too) is fine.
    write_synth_images(SynthImagesConfig(count=1, val_count=1, seed_start=1004, processes=1), synth,
                       tmp_path / "s")


# --- per-image fixture ---------------------------------------------------------------------------------


def write_image_set(root: Path, count: int, seed: int) -> None:
    """``root/{train,val}.txt``: textured 40x30 images of tilted planes 1-4 m; every third without K."""
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:30, 0:40]
    rows = {"train.txt": [], "val.txt": []}
    for i in range(count):
        depth = (rng.uniform(1.0, 3.0) + rng.uniform(-0.02, 0.02) * u + 0.01 * v).astype(np.float32)
        rgb = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
        K = make_K(35.0, 35.0, 19.5, 14.5) if i % 3 else None
        split = "val.txt" if i >= count - 2 else "train.txt"
        rows[split].append(write_image_sample(root, f"{i:03d}", rgb, depth, K))
    for name, listed in rows.items():
        write_filelist(root / name, listed)


def pretrain_config(root: Path, **overrides) -> PretrainConfig:
    return PretrainConfig.from_dict(
        {
            "datasets": [{"format": "filelist", "root": str(root), "split": "train.txt"}],
            "val_datasets": [{"format": "filelist", "root": str(root), "split": "val.txt"}],
            "steps": 6,
            "batch_size": 3,
            "warmup_steps": 2,
            "val_every": 3,
            "image_every": 3,
            "checkpoint_every": 2,
            "log_every": 2,
            "device": "cpu",
            "threads": 1,
            **overrides,
        }
    )


@pytest.fixture
def images(tmp_path):
    write_image_set(tmp_path / "images", count=10, seed=0)
    return tmp_path / "images"


def test_default_K_fills_only_samples_without_intrinsics():
    K = torch.stack([torch.eye(3) * 2, torch.eye(3) * 3])
    filled = with_default_K(K, torch.tensor([True, False]), 30, 40)
    assert torch.equal(filled[0], K[0])
    assert np.allclose(filled[1].numpy(), K_from_hfov(40, 30, DEFAULT_HFOV_DEG))


def test_ranking_loss_prefers_the_annotated_order_and_ignores_scale():
    depth = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2)
    right = torch.tensor([[[0.0, 0.0, 1.0, 1.0, 1.0]]])  # point 1 (1 m) is the closer one: true
    wrong = torch.tensor([[[0.0, 0.0, 1.0, 1.0, -1.0]]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    assert pair_ranking_loss(depth, right, valid) < pair_ranking_loss(depth, wrong, valid)
    assert torch.isclose(pair_ranking_loss(depth * 7, right, valid), pair_ranking_loss(depth, right, valid))
    assert pair_ranking_loss(depth, wrong, ~valid) == 0


def test_pretrain_writes_models_metrics_and_images_and_keeps_temporal_blocks_identity(images, tmp_path):
    out = tmp_path / "pretrain"
    result = pretrain(pretrain_config(images), tiny_model_config(), PREPROCESSING, out)
    assert result.steps == 6 and np.isfinite(result.best_metric)
    summary = json.loads((out / "dvclive" / "metrics.json").read_text())
    assert set(summary["val"]) == {"abs_rel", "sq_rel", "rmse", "rmse_log", "silog", "delta1", "delta2",
                                   "delta3"}
    assert summary["val"]["abs_rel"] >= result.best_metric
    assert {"total", "metric_l1", "ssi", "grad", "lr"} <= set(summary["train"])
    images_dir = out / "dvclive" / "plots" / "images" / "rgb_target_prediction"
    assert sorted(p.name for p in images_dir.iterdir()) == ["000003.png", "000006.png"]
    # 8 training images at 3 a step: an epoch is 3 steps, so 6 steps leave two epoch checkpoints.
    epochs = sorted(p.name for p in (out / "epochs").iterdir())
    assert epochs == ["epoch_001.safetensors", "epoch_002.safetensors"]
    assert torch.equal(load_file(out / "epochs" / "epoch_002.safetensors")["decoder.head_out.weight"],
                       load_file(out / "model_latest.safetensors")["decoder.head_out.weight"])
    best = load_student(out / "model_best.safetensors")
    assert load_preprocessing(out / "model_best.safetensors")["long_edge"] == PREPROCESSING["long_edge"]
    assert json.loads((out / "config.json").read_text())["preprocessing"] == PREPROCESSING
    # Trained where it runs, untouched where it is bypassed: temporal weights are the fresh init's.
    torch.manual_seed(0)
    fresh = build_student(tiny_model_config()).state_dict()
    latest = load_file(out / "model_latest.safetensors")
    temporal = [k for k in fresh if k.startswith("temporal.")]
    assert temporal and all(torch.equal(latest[k], fresh[k]) for k in temporal)
    assert any(not torch.equal(latest[k], fresh[k]) for k in fresh if k.startswith("decoder."))
    assert best.temporal_identity_violations() == []


# Model variants pre-trained here: the ZoeDepth bins head (CNN), and camera tokens in a tiny random timm ViT
# (vit_tiny_patch16_224 cut to 4 blocks), whose unknown-camera token is what the images without K train.
VARIANTS = {
    "zoe_bins": ({"head": "zoe_bins", "n_bins": 8, "bin_embedding_dim": 8}, ("decoder.head_out.",)),
    "tokens": (
        {"encoder": "timm", "timm_name": "vit_tiny_patch16_224", "timm_out_indices": [0, 1, 2, 3],
         "timm_pretrained": False, "camera": "tokens", "cam_tokens": 2, "cam_blocks": 1,
         "cam_token_inject_layer": 1},
        ("camera.unknown", "camera.mlp.0.weight", "camera.blocks.0."),
    ),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_pretrain_trains_the_model_variants(images, tmp_path, variant):
    overrides, trained = VARIANTS[variant]
    if "encoder" in overrides:
        pytest.importorskip("timm")
    model_config = ModelConfig.from_dict({**TINY_MODEL, **overrides}, "model")
    torch.manual_seed(0)  # the pretrain config's seed: the same initial weights
    fresh = build_student(model_config).state_dict()
    config = pretrain_config(images, steps=3, val_every=3, image_every=0, checkpoint_every=0)
    result = pretrain(config, model_config, PREPROCESSING, tmp_path / "p")
    assert result.steps == 3 and np.isfinite(result.best_metric)
    latest = load_file(result.latest)
    for prefix in trained:
        keys = [k for k in fresh if k.startswith(prefix)]
        assert keys and all(not torch.equal(latest[k], fresh[k]) for k in keys), prefix
    assert load_student(result.latest).config == model_config


def test_pretrain_resumes_to_the_uninterrupted_weights(images, tmp_path, monkeypatch):
    config = pretrain_config(images, color_jitter=0.3, hflip=0.5)
    uninterrupted = load_file(pretrain(config, tiny_model_config(), PREPROCESSING, tmp_path / "full").latest)
    with killed_after_checkpoint(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        pretrain(config, tiny_model_config(), PREPROCESSING, tmp_path / "resumed")
    assert not (tmp_path / "resumed" / "model_best.safetensors").exists()
    resumed = load_file(pretrain(config, tiny_model_config(), PREPROCESSING, tmp_path / "resumed").latest)
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    curve = tmp_path / "resumed" / "dvclive" / "plots" / "metrics" / "train" / "total.tsv"
    assert list(np.loadtxt(curve, skiprows=1, usecols=0)) == [2, 4, 6]


def test_config_rejects_unknown_keys_and_empty_mixtures(images):
    with pytest.raises(ConfigError, match="unknown key"):
        pretrain_config(images, stepz=3)
    with pytest.raises(ConfigError, match="at least one"):
        pretrain_config(images, datasets=[])


# --- objectives and teachers ------------------------------------------------------------------------------

NEW_TERMS = ("hdn", "grad_preserve", "shared_context", "local_global", "feature_align")


def test_zero_weight_objectives_and_the_default_teacher_compute_nothing_new(images, tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a term with weight 0 (or its crop view) was computed")

    for name in ("hdn_loss", "gradient_preservation_loss", "local_global_loss", "feature_alignment_loss",
                 "sample_boxes"):
        monkeypatch.setattr(f"videomamba_depth.pretraining.loop.{name}", forbidden)
    config = pretrain_config(images, steps=2, val_every=2, image_every=0, checkpoint_every=0)
    out = tmp_path / "p"
    pretrain(config, tiny_model_config(), PREPROCESSING, out)
    logged = set(json.loads((out / "dvclive" / "metrics.json").read_text())["train"])
    assert logged == {"total", "metric_l1", "ssi", "grad", "ranking", "grad_norm", "lr"}
    assert torch.load(out / "state" / "state.pt", weights_only=True)["aux"] == {}  # no feature projector


def test_pretrain_distils_a_bigger_student_with_every_objective_and_resumes(images, tmp_path, monkeypatch):
    torch.manual_seed(3)
    big = build_student(ModelConfig.from_dict({**TINY_MODEL, "widths": [16, 16, 16, 16]}))
    save_student(tmp_path / "big.safetensors", big, PREPROCESSING)
    config = pretrain_config(
        images, steps=3, val_every=3, image_every=0, checkpoint_every=1,
        teacher=f"student:{tmp_path / 'big.safetensors'}", lr_schedule="step", lr_step_size=1, lr_gamma=0.5,
        warmup_steps=0, encoder_lr_factor=0.5,
        loss={**dict.fromkeys(NEW_TERMS, 0.5), "hdn_mode": "spatial", "hdn_levels": 2},
    )
    result = pretrain(config, tiny_model_config(), PREPROCESSING, tmp_path / "full")
    summary = json.loads((tmp_path / "full" / "dvclive" / "metrics.json").read_text())
    assert set(NEW_TERMS) <= set(summary["train"])
    assert all(np.isfinite(summary["train"][k]) for k in NEW_TERMS)
    assert summary["train"]["lr"] == pytest.approx(1e-3 * 0.5**3)  # logged after 3 steps, 3 decays
    assert np.isfinite(result.best_metric)
    state = torch.load(tmp_path / "full" / "state" / "state.pt", weights_only=True)
    lrs = {g["name"]: g["lr"] for g in state["optimizer"]["param_groups"]}
    lr = 1.25e-4  # encoder at lr x encoder_lr_factor; the projector (extra) at lr
    assert lrs == pytest.approx({"backbone": 0.5 * lr, "backbone_no_decay": 0.5 * lr, "main": lr,
                                 "main_no_decay": lr, "extra": lr})
    assert state["aux"]["weight"].shape == (16, 8, 1, 1)  # the projector, 8 student -> 16 teacher channels
    assert state["run_identity"]["teacher_weights"] == hashlib.sha256(
        (tmp_path / "big.safetensors").read_bytes()
    ).hexdigest()

    with killed_after_checkpoint(monkeypatch, 2), pytest.raises(KeyboardInterrupt):
        pretrain(config, tiny_model_config(), PREPROCESSING, tmp_path / "resumed")
    resumed = load_file(pretrain(config, tiny_model_config(), PREPROCESSING, tmp_path / "resumed").latest)
    uninterrupted = load_file(result.latest)
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_pretrain_with_the_synthetic_teacher(images, tmp_path):
    config = pretrain_config(
        images, steps=2, val_every=2, image_every=0, checkpoint_every=0, teacher="synthetic",
        teacher_settings={"synthetic_noise_std": 0.1},
        loss={"hdn": 0.5, "grad_preserve": 0.5, "local_global": 0.5, "shared_context": 0.5},
    )
    result = pretrain(config, tiny_model_config(), PREPROCESSING, tmp_path / "p")
    summary = json.loads((tmp_path / "p" / "dvclive" / "metrics.json").read_text())["train"]
    assert {"hdn", "grad_preserve", "local_global", "shared_context"} <= set(summary)
    assert np.isfinite(result.best_metric)


def test_pretrain_with_a_fake_unidepth_teacher(images, tmp_path, monkeypatch):
    fake = use_fake_image_unidepth(monkeypatch)
    config = pretrain_config(images, steps=2, val_every=2, image_every=0, checkpoint_every=0,
                             teacher="unidepth", teacher_settings={"device": "cpu"},
                             loss={"local_global": 1.0})
    pretrain(config, tiny_model_config(), PREPROCESSING, tmp_path / "p")
    # Per step: 3 images, each once whole and once as its crop view, one call each (K given).
    assert len(fake.calls) == 2 * 3 * 2 and all(shape[0] == 1 for shape, _ in fake.calls)


# --- train.init_from -----------------------------------------------------------------------------------


def test_init_from_loads_pretrained_weights_strictly(tmp_path):
    torch.manual_seed(1)
    pretrained = build_student(tiny_model_config())
    with torch.no_grad():
        pretrained.decoder.head_out.weight.normal_()  # trained-looking, temporal blocks left alone
    save_student(tmp_path / "p.safetensors", pretrained, PREPROCESSING)
    torch.manual_seed(2)
    model = build_student(tiny_model_config())
    digest = init_from_pretrained(model, tmp_path / "p.safetensors")
    assert len(digest) == 64
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 pretrained.state_dict().values(), strict=True))

    other = build_student(ModelConfig.from_dict({**TINY_MODEL, "head_width": 8}))
    save_student(tmp_path / "other.safetensors", other)
    with pytest.raises(InputError, match=r"another architecture.*head_width"):
        init_from_pretrained(model, tmp_path / "other.safetensors")

    with torch.no_grad():
        pretrained.temporal["s16"].premix.conv.weight.fill_(0.1)  # temporal blocks no longer the identity
    save_student(tmp_path / "temporal.safetensors", pretrained)
    with pytest.raises(InputError, match=r"not the identity.*premix"):
        init_from_pretrained(model, tmp_path / "temporal.safetensors")


def test_train_starts_from_the_pretrained_model_or_says_it_is_missing(tmp_path, monkeypatch):
    write_training_video(tmp_path, "a", frames=8, seed=0)
    monkeypatch.chdir(tmp_path)
    config = TrainConfig.from_dict({
        "videos": ["a"], "val_frames": 2, "clip_len": 4, "clip_stride": 2, "batch_size": 1, "chunk_size": 2,
        "steps": 1, "warmup_steps": 0, "device": "cpu", "threads": 1, "model": TINY_MODEL,
        "init_from": "pretrain", "image_every": 0,
    })
    with pytest.raises(InputError, match=r"missing\.safetensors.*does not exist.*pretrain"):
        train(config, out_dir=tmp_path / "train", pretrained=tmp_path / "missing.safetensors")
    torch.manual_seed(5)
    pretrained = build_student(tiny_model_config())
    save_student(tmp_path / "p.safetensors", pretrained, PREPROCESSING)
    # lr ~ 0: after one step the weights are still the pre-trained ones (a fresh init would differ).
    config = TrainConfig.from_dict({**config.to_dict(), "lr": 1e-12, "warmup_steps": 0})
    final = load_file(train(config, out_dir=tmp_path / "train", pretrained=tmp_path / "p.safetensors").final)
    for name, value in pretrained.state_dict().items():
        assert torch.allclose(final[name], value, atol=1e-6), name


def test_pretrain_freeze_encoder_is_its_own_not_train_models(images, tmp_path):
    """train.model.freeze_encoder is about video training: pre-training trains the encoder unless
    pretrain.freeze_encoder says otherwise."""
    torch.manual_seed(0)
    fresh = build_student(tiny_model_config()).state_dict()
    frozen_for_video = ModelConfig.from_dict({**TINY_MODEL, "freeze_encoder": True})
    result = pretrain(pretrain_config(images), frozen_for_video, PREPROCESSING, tmp_path / "a")
    trained = load_file(result.latest)
    backbone = [k for k in fresh if k.startswith("encoder.backbone.") and fresh[k].is_floating_point()]
    assert backbone and any(not torch.equal(trained[k], fresh[k]) for k in backbone)
    frozen = load_file(
        pretrain(pretrain_config(images, freeze_encoder=True), tiny_model_config(), PREPROCESSING,
                 tmp_path / "b").latest
    )
    weights = [k for k in backbone if "running" not in k and "num_batches" not in k]
    assert weights and all(torch.equal(frozen[k], fresh[k]) for k in weights)


def test_frozen_random_encoder_is_refused():
    base = {"videos": ["a"], "model": {**TINY_MODEL, "freeze_encoder": True}}
    with pytest.raises(ConfigError, match="randomly initialised CNN encoder"):
        TrainConfig.from_dict({**base, "init_from": None})
    assert TrainConfig.from_dict({**base, "init_from": "pretrain"}).model.freeze_encoder


@pytest.mark.slow
def test_two_gloo_processes_pretrain_like_one_process_with_the_global_batch(tmp_path, monkeypatch):
    """``torchrun -m stages.pretrain`` with 2 gloo processes of 2 images each = one process with 4: the
    sampler gives the ranks disjoint halves of the same global batch, DDP averages their gradients."""
    write_image_set(tmp_path / "images", count=12, seed=3)

    def params(batch_size: int) -> dict:
        return {
            "datasets": [{"format": "filelist", "root": "images", "split": "train.txt"}],
            "val_datasets": [{"format": "filelist", "root": "images", "split": "val.txt"}],
            "steps": 4, "batch_size": batch_size, "warmup_steps": 1, "val_every": 4, "image_every": 0,
            "checkpoint_every": 0, "log_every": 2, "device": "cpu", "threads": 1, "resume": False,
            # The ranking term has no pairs here; SSI and the gradient term are per-image means.
            "loss": {"metric_l1": 1.0, "ssi": 0.5, "grad": 0.5, "ranking": 0.0},
        }

    sections = {"pretrain": params(2), "prepare": PREPROCESSING, "train": {"model": TINY_MODEL}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(sections))
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "stages.pretrain"],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "DDP: 2 replicas hold identical weights" in run.stderr
    ddp = load_file(tmp_path / "data" / "pretrain" / "model_latest.safetensors")

    monkeypatch.chdir(tmp_path)
    single = load_file(pretrain(PretrainConfig.from_dict(params(4)), tiny_model_config(), PREPROCESSING,
                                tmp_path / "single").latest)
    half = load_file(pretrain(PretrainConfig.from_dict(params(2)), tiny_model_config(), PREPROCESSING,
                              tmp_path / "half").latest)

    def distance(x: dict, y: dict) -> float:
        return float(torch.sqrt(sum(((x[k].double() - y[k].double()) ** 2).sum() for k in x)))

    assert ddp.keys() == single.keys()
    assert distance(ddp, single) < 0.01 * distance(ddp, half)
