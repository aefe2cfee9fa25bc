"""Training: data, step plan, chunked BPTT, schedule, resume, outputs (tiny stores and a tiny student)."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from training_fixtures import TINY_MODEL, editing_packed, killed_after_checkpoint, write_training_video

from videomamba_depth.config import ConfigError
from videomamba_depth.models import build_student
from videomamba_depth.training import (
    ClipDataset,
    Item,
    StepPlan,
    TrainConfig,
    collate,
    find_videos,
    learning_rate_factor,
    train,
    usage_notes,
)
from videomamba_depth.training import checkpoint as checkpoint_module
from videomamba_depth.training.distributed import Distributed
from videomamba_depth.training.loop import _Trainer, build_optimizer
from videomamba_depth.zarrio import StoreError


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project directory with two tiny training videos (data/...), as the working directory."""
    write_training_video(tmp_path, "a", frames=12, seed=0)
    write_training_video(tmp_path, "b", frames=14, seed=1)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def config(**overrides) -> TrainConfig:
    values = {
        "videos": ["a", "b"],
        "val_frames": 4,
        "clip_len": 4,
        "clip_stride": 2,
        "batch_size": 2,
        "chunk_size": 2,
        "steps": 6,
        "warmup_steps": 2,
        "p_single_frame": 0.0,
        "val_every": 3,
        "image_every": 3,
        "log_every": 2,
        "checkpoint_every": 3,
        "device": "cpu",
        "threads": 1,
        "model": TINY_MODEL,
        **overrides,
    }
    return TrainConfig.from_dict(values, "train")


def test_dataset_items_shapes_pairs_and_no_ground_truth(project):
    videos = find_videos(["a", "b"], val_frames=4)
    assert [(v.num_frames, v.train_frames) for v in videos] == [(12, 8), (14, 10)]
    dataset = ClipDataset(videos)
    sample = dataset[Item(1, 3, 4)]
    assert sample["rgb"].shape == (4, 3, 28, 42) and sample["rgb"].dtype == torch.uint8
    assert sample["K"].shape == (4, 3, 3) and sample["K"].dtype == torch.float32
    assert sample["depth"].shape == sample["confidence"].shape == sample["valid"].shape == (4, 28, 42)
    assert sample["static"].shape == sample["consistent"].shape == (3, 28, 42)
    # The fixture's pair t is static where u >= t % 3: the clip from frame 3 holds pairs 3, 4, 5.
    for i, pair in enumerate((3, 4, 5)):
        assert not sample["static"][i, :, : pair % 3].any() and sample["static"][i, :, pair % 3 :].any()
    batch = collate([dataset[Item(0, 0, 4)], dataset[Item(1, 2, 4)]])
    assert batch["rgb"].shape == (2, 4, 3, 28, 42) and batch["video"].tolist() == [0, 1]
    with pytest.raises(IndexError, match="out of range"):
        dataset[Item(0, 10, 4)]


def test_a_process_opens_only_the_stores_of_the_clips_it_reads(project):
    """A DDP rank (or loader worker) reads its share of the clips: it opens those videos' stores only."""
    dataset = ClipDataset(find_videos(["a", "b"], val_frames=4))
    (project / "data" / "teacher" / "a.zarr.zip").rename(project / "elsewhere")  # never needed below
    assert dataset[Item(1, 0, 2)]["depth"].shape == (2, 28, 42)
    assert list(dataset._stores) == [1]


def test_missing_or_mismatched_stores_are_named(project):
    with pytest.raises(StoreError, match=r"data/flow/c\.zarr\.zip: no such store"):
        write_training_video(project, "c")
        (project / "data" / "flow" / "c.zarr.zip").rename(project / "gone")
        find_videos(["c"], 0)

def test_short_videos_are_trained_whole_and_reported(project):
    (short,) = find_videos(["a"], val_frames=12)  # 12 frames: none left after holding out 12
    assert (short.train_frames, short.val_frames) == (12, 0)
    notes = usage_notes([short], clip_len=16, p_single_frame=0.0)
    assert notes == [
        "a: 12 frame(s), too few to hold out validation frames: trained on whole, not validated",
        "a: 12 training frame(s), fewer than clip_len=16; unused (p_single_frame is 0)",
    ]
    with pytest.raises(ValueError, match="no training video has clip_len=16"):
        StepPlan([short], clip_len=16, clip_stride=2, batch_size=1, p_single_frame=0.0, seed=0, steps=1)
    single_only = StepPlan(
        [short], clip_len=16, clip_stride=2, batch_size=1, p_single_frame=1.0, seed=0, steps=2
    )
    assert all(item.length == 1 for batch in single_only for item in batch)


def test_forked_workers_open_their_own_stores(project):
    dataset = ClipDataset(find_videos(["a", "b"], 4))
    dataset[Item(0, 0, 2)]  # the parent has open stores before forking
    plan = StepPlan(
        dataset.videos, clip_len=4, clip_stride=2, batch_size=2, p_single_frame=0.3, seed=3, steps=6
    )
    serial = list(DataLoader(dataset, batch_sampler=plan, collate_fn=collate))
    forked = list(
        DataLoader(
            dataset, batch_sampler=plan, collate_fn=collate, num_workers=2, multiprocessing_context="fork"
        )
    )
    assert len(serial) == len(forked) == 6
    for x, y in zip(serial, forked, strict=True):
        for key in x:
            assert torch.equal(x[key], y[key]), key


def test_step_plan_is_deterministic_resumable_and_sharded(project):
    videos = find_videos(["a", "b"], 4)
    kwargs = {
        "clip_len": 4,
        "clip_stride": 2,
        "batch_size": 2,
        "p_single_frame": 0.25,
        "seed": 7,
        "steps": 40,
    }
    full = list(StepPlan(videos, **kwargs).batches())
    assert full == list(StepPlan(videos, **kwargs).batches())
    assert list(StepPlan(videos, **kwargs, start=17).batches()) == full[17:]
    assert full != list(StepPlan(videos, **{**kwargs, "seed": 8}).batches())
    singles = [b for b in full if b.single_frame]
    assert 0 < len(singles) < len(full)
    for b in full:
        lengths = {item.length for item in b.items}
        assert lengths == ({1} if b.single_frame else {4})
        assert len(b.items) == (8 if b.single_frame else 2)
        for item in b.items:
            assert item.start + item.length <= videos[item.video].train_frames  # never validation frames
    # Two ranks with batch 1 see exactly the clips of one rank with batch 2, split between them.
    ranks = [
        list(StepPlan(videos, **{**kwargs, "batch_size": 1}, rank=r, world_size=2).batches()) for r in (0, 1)
    ]
    for whole, r0, r1 in zip(full, *ranks, strict=True):
        if not whole.single_frame:
            assert sorted(r0.items + r1.items, key=repr) == sorted(whole.items, key=repr)


def test_step_plan_keeps_frame_sizes_apart(project):
    write_training_video(project, "wide", frames=12, height=28, width=56, seed=2)
    videos = find_videos(["a", "b", "wide"], 2)
    plan = StepPlan(videos, clip_len=4, clip_stride=2, batch_size=2, p_single_frame=0.5, seed=0, steps=30)
    for batch in plan.batches():
        assert len({(videos[i.video].height, videos[i.video].width) for i in batch.items}) == 1


def test_learning_rate_schedule():
    cfg = replace(config(), steps=100, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate_factor(0, cfg) == pytest.approx(0.1)
    assert learning_rate_factor(9, cfg) == pytest.approx(1.0)
    assert learning_rate_factor(10, cfg) == pytest.approx(1.0)
    assert learning_rate_factor(55, cfg) == pytest.approx(0.1 + 0.9 * 0.5)
    assert learning_rate_factor(100, cfg) == pytest.approx(0.1)


def test_step_learning_rate_schedule():
    cfg = replace(config(), steps=100, warmup_steps=10, lr_schedule="step", lr_step_size=30, lr_gamma=0.5)
    assert learning_rate_factor(0, cfg) == pytest.approx(0.1)  # the same linear warm-up
    assert learning_rate_factor(10, cfg) == 1.0
    assert learning_rate_factor(39, cfg) == 1.0
    assert learning_rate_factor(40, cfg) == 0.5  # one step_size after the warm-up
    assert learning_rate_factor(70, cfg) == 0.25
    assert learning_rate_factor(99, cfg) == 0.25
    assert learning_rate_factor(100, cfg) == 0.125
    with pytest.raises(ConfigError, match="lr_gamma must be in"):
        config(lr_gamma=0.0)
    with pytest.raises(ConfigError, match="lr_step_size must be >= 1"):
        config(lr_step_size=0)
    with pytest.raises(ConfigError, match="lr_schedule"):
        config(lr_schedule="linear")


def test_optimizer_scales_the_encoder_lr_and_follows_the_schedule():
    model = build_student(config().model)
    cfg = config(lr=1e-3, encoder_lr_factor=0.1, warmup_steps=0, lr_schedule="step", lr_step_size=2,
                 lr_gamma=0.5)
    optimizer, scheduler = build_optimizer(model, cfg)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"backbone": 1e-4, "backbone_no_decay": 1e-4, "main": 1e-3,
                                 "main_no_decay": 1e-3})
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert {g["name"]: g["lr"] for g in optimizer.param_groups} == pytest.approx(
        {name: lr / 2 for name, lr in lrs.items()}
    )
    # With a temporal factor the temporal blocks get their own rate and follow the same schedule.
    optimizer, scheduler = build_optimizer(model, cfg, temporal_lr_factor=10.0)
    assert {g["name"]: g["lr"] for g in optimizer.param_groups}["temporal"] == pytest.approx(1e-2)
    for _ in range(2):
        optimizer.step()
        scheduler.step()
    assert {g["name"]: g["lr"] for g in optimizer.param_groups}["temporal"] == pytest.approx(5e-3)


def test_config_rejects_unknown_and_inconsistent_keys():
    with pytest.raises(ConfigError, match=r"train\.model: unknown key\(s\) \['widht'\]"):
        TrainConfig.from_dict({"videos": ["a"], "model": {"widht": 3}}, "train")
    with pytest.raises(ConfigError, match=r"train\.loss: unknown key\(s\) \['tgmm'\]"):
        TrainConfig.from_dict({"videos": ["a"], "loss": {"tgmm": 1.0}}, "train")
    with pytest.raises(ConfigError, match="chunk_size"):
        TrainConfig.from_dict({"videos": ["a"], "clip_len": 4, "chunk_size": 8}, "train")
    with pytest.raises(ConfigError, match="temporal_lr_factor"):
        TrainConfig.from_dict({"videos": ["a"], "temporal_lr_factor": 0}, "train")
    assert config(loss={"warp": 1.0}).single_frame_loss().weights().keys() <= {"metric_l1", "ssi"}


def _reference_gradients(cfg, batch, *, detach: bool) -> dict[str, torch.Tensor]:
    """Gradients of the chunked clip loss computed by hand, with or without truncating between chunks."""
    from videomamba_depth.losses import DistillationLoss

    torch.manual_seed(cfg.seed)
    model = build_student(cfg.model).train()
    _randomise(model)
    loss_fn, states, n = DistillationLoss(cfg.loss), None, batch["rgb"].shape[1]
    for start in range(0, n, cfg.chunk_size):
        f, p = slice(start, start + cfg.chunk_size), slice(start, start + cfg.chunk_size - 1)
        out = model(batch["rgb"][:, f], batch["K"][:, f], states)
        total, _ = loss_fn(
            out.depth,
            batch["depth"][:, f],
            batch["valid"][:, f],
            confidence=batch["confidence"][:, f],
            consistent=batch["consistent"][:, p],
            static=batch["static"][:, p],
            states=out.summaries,
        )
        (total * cfg.chunk_size / n).backward(retain_graph=not detach)
        states = out.states.detach() if detach else out.states
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _randomise(model):
    with torch.no_grad():  # zero-initialised temporal projections would make every chunking equivalent
        for p in model.parameters():
            if p.ndim >= 2 and p.abs().max() == 0:
                p.normal_(0.0, 0.1)


def test_train_step_truncates_backprop_between_chunks(project):
    cfg = config(clip_len=4, chunk_size=2, grad_clip=0.0)
    trainer = _Trainer(cfg, project / "out", Distributed(0, 1, torch.device("cpu")))
    torch.manual_seed(cfg.seed)
    trainer.model = build_student(cfg.model)
    _randomise(trainer.model)
    trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=0.0)
    trainer.scheduler = torch.optim.lr_scheduler.LambdaLR(trainer.optimizer, lambda step: 1.0)
    dataset = ClipDataset(find_videos(["a", "b"], 4))
    batch = collate([dataset[Item(0, 0, 4)], dataset[Item(1, 3, 4)]])
    trainer._train_step(trainer.model, batch)
    got = {name: p.grad for name, p in trainer.model.named_parameters() if p.grad is not None}
    truncated = _reference_gradients(cfg, batch, detach=True)
    full = _reference_gradients(cfg, batch, detach=False)
    assert got.keys() == truncated.keys()
    for name in got:
        torch.testing.assert_close(got[name], truncated[name], rtol=1e-5, atol=1e-7)
    # The truncation is real: full backprop through the carried states gives other temporal gradients.
    temporal = [n for n in got if n.startswith("temporal") and "in_proj" in n]
    assert temporal and any(not torch.allclose(truncated[n], full[n], rtol=1e-4, atol=1e-8) for n in temporal)


def test_train_writes_outputs_and_logs(project):
    result = train(config(p_single_frame=0.5))
    out = project / "data" / "train"
    assert result.final.resolve() == out / "model_final.safetensors" and result.final.is_file()
    assert (out / "model_best.safetensors").is_file() and math.isfinite(result.best_metric)
    assert json.loads((out / "config.json").read_text())["model"]["widths"] == [8, 8, 8, 8]
    summary = json.loads((out / "dvclive" / "metrics.json").read_text())
    assert summary["step"] == 6 and "log_l1" in summary["val"] and "total" in summary["train"]
    assert (out / "dvclive" / "plots" / "metrics" / "train" / "metric_l1.tsv").is_file()
    assert sorted(
        p.name for p in (out / "dvclive" / "plots" / "images" / "rgb_teacher_student").iterdir()
    ) == [
        "000003.png",
        "000006.png",
    ]
    final = load_file(result.final)
    assert all(torch.isfinite(t).all() for t in final.values())


def test_train_with_the_normalised_objectives_and_a_step_schedule(project):
    loss = {"hdn": 0.5, "grad_preserve": 0.5, "hdn_mode": "spatial", "hdn_levels": 2}
    result = train(config(steps=2, val_every=2, image_every=0, checkpoint_every=0, lr_schedule="step",
                          lr_step_size=1, lr_gamma=0.5, warmup_steps=0, loss=loss))
    summary = json.loads((project / "data" / "train" / "dvclive" / "metrics.json").read_text())["train"]
    assert summary["hdn"] > 0 and summary["grad_preserve"] > 0 and math.isfinite(result.best_metric)
    assert summary["lr"] == pytest.approx(1e-3 * 0.25)


def test_trainer_gives_the_temporal_blocks_their_factor(project):
    trainer = _Trainer(config(lr=1e-3, temporal_lr_factor=4.0), project / "out",
                       Distributed(0, 1, torch.device("cpu")))
    lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert lrs["temporal"] / lrs["main"] == pytest.approx(4.0)


def test_train_with_the_warp_term(project):
    result = train(config(steps=2, val_every=2, image_every=0, checkpoint_every=0, hflip=1.0,
                          loss={"warp": 1.0, "tgm": 0.0}))
    summary = json.loads((project / "data" / "train" / "dvclive" / "metrics.json").read_text())["train"]
    assert summary["warp"] > 0 and "tgm" not in summary and math.isfinite(result.best_metric)


def test_resume_after_a_crash_reaches_the_uninterrupted_result(project, monkeypatch):
    cfg = config(steps=8, checkpoint_every=3, p_single_frame=0.3)
    uninterrupted = load_file(train(cfg, out_dir=project / "full").final)

    with killed_after_checkpoint(monkeypatch, 3), pytest.raises(KeyboardInterrupt):
        train(cfg, out_dir=project / "resumed")
    assert not (project / "resumed" / "model_final.safetensors").exists()
    resumed = load_file(train(cfg, out_dir=project / "resumed").final)
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    steps = np.loadtxt(
        project / "resumed" / "dvclive" / "plots" / "metrics" / "train" / "total.tsv", skiprows=1, usecols=0
    )
    assert list(steps) == [2, 4, 6, 8]  # the log continues where the crashed run left it


def test_resumed_run_logs_the_same_curves_as_an_uninterrupted_run(project, monkeypatch):
    """Killed after logging steps 4 and 6 but before the step-6 state: the resume from step 3 drops those
    rows (no 2, 4, 6, 4, 6) and the curve files end byte-identical to an uninterrupted run's."""
    cfg = config(steps=8, checkpoint_every=3, val_every=2, log_every=2, image_every=2)
    train(cfg, out_dir=project / "full")
    real_save = checkpoint_module.save_state

    def crash_before_step_6(directory, state):
        if state["step"] == 6:
            raise KeyboardInterrupt("killed after logging step 6, before its checkpoint")
        real_save(directory, state)

    monkeypatch.setattr("videomamba_depth.training.loop.save_state", crash_before_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out_dir=project / "resumed")
    killed = project / "resumed" / "dvclive" / "plots" / "metrics" / "val" / "log_l1.tsv"
    assert list(np.loadtxt(killed, skiprows=1, usecols=0)) == [2, 4, 6]  # rows beyond the saved step 3
    monkeypatch.setattr("videomamba_depth.training.loop.save_state", real_save)
    train(cfg, out_dir=project / "resumed")
    full, resumed = (project / run / "dvclive" for run in ("full", "resumed"))
    tsvs = sorted(p.relative_to(full) for p in full.rglob("*.tsv"))
    assert len(tsvs) > 5 and tsvs == sorted(p.relative_to(resumed) for p in resumed.rglob("*.tsv"))
    for tsv in tsvs:
        assert (resumed / tsv).read_bytes() == (full / tsv).read_bytes(), tsv
    assert list(np.loadtxt(killed, skiprows=1, usecols=0)) == [2, 4, 6, 8]
    summaries = [json.loads((d / "metrics.json").read_text()) for d in (full, resumed)]
    assert summaries[0] == summaries[1] and summaries[0]["step"] == 8
    images = [sorted(p.name for p in (d / "plots" / "images").rglob("*.png")) for d in (full, resumed)]
    assert images[0] == images[1] == ["000002.png", "000004.png", "000006.png", "000008.png"]


def test_changed_params_start_fresh_instead_of_resuming(project, capsys):
    train(config(steps=3, val_every=3))
    train(config(steps=3, val_every=3, lr=5e-4))
    assert "saved by a run with other params (lr): starting fresh" in capsys.readouterr().err
    train(config(steps=3, val_every=3, lr=5e-4, num_workers=1))  # loader workers change nothing computed
    assert "resuming from" in capsys.readouterr().err


def test_rerun_of_a_finished_run_restores_its_outputs(project, capsys):
    """DVC deletes a stage's outputs (not the persisted state) before re-running it, e.g. after
    `dvc repro -f`: the resumed, finished run must write the same model_best and model_final again."""
    cfg = config(steps=6, val_every=2)
    first = train(cfg)
    saved = {name: load_file(project / "data" / "train" / name)
             for name in ("model_best.safetensors", "model_final.safetensors")}
    for name in (*saved, "config.json"):
        (project / "data" / "train" / name).unlink()
    capsys.readouterr()
    again = train(cfg)
    assert "resuming from data/train/state/state.pt at step 6" in capsys.readouterr().err
    assert again.best_metric == first.best_metric
    for name, tensors in saved.items():
        restored = load_file(project / "data" / "train" / name)
        assert restored.keys() == tensors.keys(), name
        assert all(torch.equal(restored[k], tensors[k]) for k in tensors), name


def test_changed_code_starts_fresh_and_drops_the_old_best(project, capsys, monkeypatch):
    train(config(steps=3, val_every=3))
    best = project / "data" / "train" / "state" / "best.safetensors"
    assert best.is_file()
    monkeypatch.setattr("videomamba_depth.training.loop.code_fingerprint", lambda module: "edited library")
    monkeypatch.setattr("videomamba_depth.training.loop._Trainer._validate", lambda self, live: {})
    capsys.readouterr()
    train(config(steps=3, val_every=3))
    assert "saved by a run with other params (code): starting fresh" in capsys.readouterr().err
    # Never validated this time: model_best is the final model, not the first run's best.
    train_dir = project / "data" / "train"
    assert not best.exists()
    best_now, final = (load_file(train_dir / f"model_{n}.safetensors") for n in ("best", "final"))
    assert all(torch.equal(best_now[k], final[k]) for k in final)


def test_flip_augmentation_mirrors_frames_and_intrinsics(project):
    from videomamba_depth.camera import backproject
    from videomamba_depth.training.data import flip_K

    dataset = ClipDataset(find_videos(["a"], 4))
    plain, flipped = dataset[Item(0, 2, 3)], dataset[Item(0, 2, 3, flip=True)]
    for key in ("rgb", "depth", "valid", "static", "consistent"):
        assert torch.equal(flipped[key], plain[key].flip(-1)), key
    assert "flow_fwd" not in plain  # read only for the warp term
    with_flow = ClipDataset(find_videos(["a"], 4), with_flow=True)
    # A flow that varies along x and y (the fixture's is constant), so a mirrored wrong axis shows.
    with editing_packed(project / "data" / "flow" / "a.zarr.zip") as group:
        flow_store = group["flow_fwd"]
        ramp = np.stack(np.meshgrid(np.arange(flow_store.shape[2]), np.arange(flow_store.shape[1])), axis=-1)
        flow_store[:] = (ramp[None] * np.array([0.5, -0.25])
                         + np.arange(flow_store.shape[0])[:, None, None, None]).astype(np.float16)
    flow, flow_flipped = with_flow[Item(0, 2, 3)]["flow_fwd"], with_flow[Item(0, 2, 3, flip=True)]["flow_fwd"]
    assert flow.shape == (2, *plain["depth"].shape[1:], 2) and flow.abs().max() > 0
    assert flow[0, 0, 3, 0] == 2 + 1.5 and flow[0, 3, 0, 1] == 2 - 0.75  # pair 2: its x and y ramps
    # Mirrored: the x axis reversed and du negated, so a point's mirrored path is its path mirrored.
    assert torch.equal(flow_flipped, flow.flip(-2) * torch.tensor([-1.0, 1.0]))
    K = plain["K"][0].double().numpy()
    K[0, 1] = 0.7  # a skewed camera exercises the skew term too
    depth = plain["depth"][0].double().numpy()
    points = backproject(depth, K)
    mirrored = backproject(depth[:, ::-1], flip_K(K, depth.shape[1]))
    np.testing.assert_allclose(mirrored[:, ::-1] * [-1, 1, 1], points, atol=1e-9)
    dim = dataset[Item(0, 2, 3, gain=0.8, gamma=1.2)]["rgb"].float().mean()
    assert dim < plain["rgb"].float().mean()


def test_prepared_preprocessing_is_read_from_the_stores_and_must_agree(tmp_path):
    from videomamba_depth.training.data import TrainingVideo, prepared_preprocessing
    from videomamba_depth.zarrio import StoreError, writing_store

    def video(name, params):
        path = tmp_path / f"{name}.zarr"
        with writing_store(path, "prepared", {"provenance": {"stage": "prepare", "params": params}}):
            pass
        return TrainingVideo(name, path, path, path, 10, 8, 4, 4)

    a = video("a", {"long_edge": 224, "pad_multiple": 14})
    assert prepared_preprocessing([a, a]) == {"long_edge": 224, "pad_multiple": 14}
    with pytest.raises(StoreError, match=r"b\.zarr: long_edge=112, pad_multiple=14"):
        prepared_preprocessing([a, video("b", {"long_edge": 112, "pad_multiple": 14})])
    assert prepared_preprocessing([a, video("c", {})]) is None  # a store not written by prepare
