"""The training loop: chunked BPTT over clips, AdamW with warm-up + decay, DVCLive, resumable checkpoints.

Outputs (``out_dir``, default ``data/train``):

- ``model_final.safetensors``: weights after the last step; ``model_best.safetensors``: weights at the
  validation with the lowest teacher log-L1 on the held-out tail frames of the training videos.
- ``config.json``: the resolved train config.
- ``state/state.pt``: resumable state, and ``state/best.safetensors``: the best weights so far (DVC keeps
  both between runs: ``persist: true``). A state is resumed only by a run with the same params, process
  count and library code: the files this module can import
  (:func:`videomamba_depth.codehash.code_fingerprint`) and, with ``init_from: pretrain``, the same
  pre-trained weights.
- ``dvclive/``: metrics.json (summary), plots/metrics/*.tsv (curves), plots/images/*.png.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from videomamba_depth.codehash import code_fingerprint
from videomamba_depth.devices import cpu_threads
from videomamba_depth.errors import InputError
from videomamba_depth.losses import DistillationLoss
from videomamba_depth.models import (
    VideoMambaDepth,
    build_student,
    load_adding_camera_encoder,
    load_student,
    save_student,
)
from videomamba_depth.models.student import CAMERA_CONFIG_KEYS
from videomamba_depth.provenance import file_sha256
from videomamba_depth.training.checkpoint import load_state, rng_state, save_state, set_rng_state
from videomamba_depth.training.config import TrainConfig
from videomamba_depth.training.data import (
    ClipDataset,
    Item,
    StepPlan,
    collate,
    find_videos,
    prepared_preprocessing,
    usage_notes,
)
from videomamba_depth.training.distributed import Distributed, setup, teardown
from videomamba_depth.viz import colorize, robust_range
from videomamba_depth.zarrio import atomic_file

OUT_DIR = Path("data/train")
# The weights ``train.init_from: pretrain`` starts from (the pretrain stage's best model).
PRETRAINED_MODEL = Path("data/pretrain/model_best.safetensors")
# Config fields that may differ between a pre-trained student and the one it initialises: they change how
# the model runs or what a fresh one holds, not what its weights mean.
INIT_FREE_KEYS = (
    "ssm_backend", "ssm_chunk_size", "timm_pretrained", "timm_pretrained_file", "encoder_checkpoint",
    "encoder_prefix_map", "freeze_encoder", "init_depth",
)
BEST_METRIC = "val/log_l1"
# The best weights so far, next to the resumable state (both persist between DVC runs).
BEST_FILE = "best.safetensors"


@dataclass(frozen=True)
class TrainResult:
    """Where the run left its weights, and its last and best validation metrics."""

    final: Path
    best: Path
    steps: int
    best_metric: float
    last_validation: dict[str, float]


class Schedule(Protocol):
    """What :func:`learning_rate_factor` and :func:`build_optimizer` read from a stage config (``train``,
    ``pretrain``)."""

    steps: int
    lr: float
    encoder_lr_factor: float
    weight_decay: float
    warmup_steps: int
    lr_schedule: str
    min_lr_ratio: float
    lr_step_size: int
    lr_gamma: float


def learning_rate_factor(step: int, config: Schedule) -> float:
    """Multiplier of the base learning rates at ``step``: linear warm-up over ``warmup_steps``, then
    ``cosine`` decay to ``min_lr_ratio`` at ``steps``, or ``step`` decay by ``lr_gamma`` every
    ``lr_step_size`` steps after the warm-up."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.lr_schedule == "step":
        return config.lr_gamma ** ((step - config.warmup_steps) // config.lr_step_size)
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def build_optimizer(
    model: VideoMambaDepth, config: Schedule, extra: nn.Module | None = None, temporal_lr_factor: float = 1.0
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``model``'s trainable parameters (:meth:`VideoMambaDepth.parameter_groups`: the encoder
    backbone at ``lr * encoder_lr_factor``, the temporal blocks at ``lr * temporal_lr_factor``, no decay on
    biases and norms) and its :func:`learning_rate_factor` schedule; the one optimizer of both training
    stages (pre-training never trains the temporal blocks, so only ``train`` passes a factor).

    ``extra``: training-only modules (pretrain's feature projector) trained at ``lr`` with weight decay on
    all their parameters (its bias too), in a group named ``extra``.
    """
    groups = model.parameter_groups(config.lr, config.encoder_lr_factor, config.weight_decay,
                                    temporal_lr_factor)
    if extra is not None:
        groups.append({"name": "extra", "params": list(extra.parameters()), "lr": config.lr,
                       "weight_decay": config.weight_decay})
    optimizer = torch.optim.AdamW(groups)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))
    return optimizer, scheduler


def rewind_dvclive(directory: Path, step: int) -> None:
    """Forget what DVCLive logged in ``directory`` after ``step``, the step a resumed run continues from.

    A run killed after its last saved state has already logged later rows; appending to them would give
    curves such as steps 20, 40, 60, 40, 60. So every metrics TSV keeps only its rows at steps <= ``step``
    (a file left with none is deleted), images named after a later step (``{step:06d}.png``) are deleted, and
    the summary (``metrics.json``) is set back to ``step`` and the last kept values: the files then match an
    uninterrupted run's at that step, and the resumed run continues them as that run did.
    """
    metrics_dir = directory / "plots" / "metrics"
    latest: dict[tuple[str, ...], str | None] = {}
    for tsv in sorted(metrics_dir.rglob("*.tsv")):
        header, *rows = tsv.read_text(encoding="utf-8").splitlines(keepends=True)
        column = header.rstrip("\r\n").split("\t").index("step")
        kept = [row for row in rows if int(row.split("\t")[column]) <= step]
        if len(kept) == len(rows):
            continue
        if kept:
            with atomic_file(tsv) as tmp:
                tmp.write_text("".join([header, *kept]), encoding="utf-8")
        else:
            tsv.unlink()
        key = tsv.relative_to(metrics_dir).with_suffix("").parts
        latest[key] = kept[-1].rstrip("\r\n").split("\t")[-1] if kept else None
    for image in (directory / "plots" / "images").rglob("*.png"):
        if image.stem.isdigit() and int(image.stem) > step:
            image.unlink()
    summary_file = directory / "metrics.json"
    if not summary_file.is_file():
        return
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    summary["step"] = step
    for (*groups, name), value in latest.items():
        parent = summary
        for group in groups:
            parent = parent.setdefault(group, {})
        if value is None:
            parent.pop(name, None)
        else:  # DVCLive keeps non-finite values as strings ("nan"), finite ones as numbers
            parent[name] = value if isinstance(parent.get(name), str) else float(value)
    summary = _without_empty_groups(summary)
    with atomic_file(summary_file) as tmp:
        tmp.write_text(json.dumps(summary, indent=4) + "\n", encoding="utf-8")


def _without_empty_groups(summary: dict) -> dict:
    groups = {k: _without_empty_groups(v) if isinstance(v, dict) else v for k, v in summary.items()}
    return {k: v for k, v in groups.items() if v != {}}


def open_live(directory: Path, step: int) -> Any:
    """A DVCLive logger writing to ``directory``: fresh at step 0, else continuing the files of a resumed run
    at ``step`` (later rows forgotten first: :func:`rewind_dvclive`)."""
    from dvclive import Live

    if step > 0:
        rewind_dvclive(directory, step)
    # DVCLive only writes files here; dvc.yaml declares them (it must not rewrite dvc.yaml itself).
    live = Live(dir=str(directory), resume=step > 0, save_dvc_exp=False, dvcyaml=False)
    live.step = step
    return live


def gather_rng_states(context: Distributed) -> list[dict[str, Any]]:
    """Every rank's RNG states (:func:`rng_state`, on the CPU), in rank order; a collective call under DDP."""
    rng = rng_state(context.device)
    ranks = [rng]
    if context.world_size > 1:
        ranks = [None] * context.world_size
        torch.distributed.all_gather_object(ranks, rng)
    return [{k: v.cpu() if isinstance(v, Tensor) else v for k, v in r.items()} for r in ranks]


def check_replicas_in_sync(model: nn.Module, context: Distributed) -> None:
    """Under DDP every rank must end with the same weights; a mismatch means a broken set-up."""
    if context.world_size == 1:
        return
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    gathered = [torch.zeros_like(checksum) for _ in range(context.world_size)]
    torch.distributed.all_gather(gathered, checksum.to(context.device))
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"DDP replicas diverged: parameter checksums {[float(g) for g in gathered]}")
    if context.is_main:
        print(f"DDP: {context.world_size} replicas hold identical weights", file=sys.stderr)


def init_from_pretrained(model: VideoMambaDepth, path: Path) -> str:
    """Load the pre-trained student ``path`` into ``model`` (strict: same architecture); returns the file's
    sha256 (part of the run identity, so new pre-trained weights never resume an old state).

    One exception: a ``camera: tokens`` model may start from a ``camera: rays`` file. The camera fields may
    then differ, and :func:`~videomamba_depth.models.io.load_adding_camera_encoder` loads everything else
    strictly, reporting the camera-encoder tensors it leaves freshly initialised.

    The pre-training stage never trains the temporal blocks (it bypasses them), so they must still be the
    identity (:meth:`VideoMambaDepth.temporal_identity_violations`): video training then starts from exactly
    the per-frame model that was pre-trained. Anything else is an :class:`InputError` naming the file.
    """
    if not path.is_file():
        raise InputError(
            f"{path}: train.init_from is 'pretrain' but the pre-trained model does not exist; run the "
            "pretrain stage first (dvc repro pretrain) or set train.init_from: null"
        )
    pretrained = load_student(path)
    adds_camera_encoder = model.config.camera == "tokens" and pretrained.config.camera == "rays"
    free = INIT_FREE_KEYS + (CAMERA_CONFIG_KEYS if adds_camera_encoder else ())
    ours, theirs = model.config.to_dict(), pretrained.config.to_dict()
    differ = sorted(k for k in ours if k not in free and ours[k] != theirs.get(k))
    if differ:
        raise InputError(
            f"{path}: pre-trained with another architecture than train.model ({', '.join(differ)} differ); "
            "re-run the pretrain stage"
        )
    violations = pretrained.temporal_identity_violations()
    if violations:
        raise InputError(
            f"{path}: its temporal blocks are not the identity ({len(violations)} zero-initialised tensors "
            f"are not zero, e.g. {violations[0]}): not a per-frame pre-trained model"
        )
    if adds_camera_encoder:
        load_adding_camera_encoder(model, pretrained.state_dict(), str(path))
    else:
        model.load_state_dict(pretrained.state_dict(), strict=True)
    return file_sha256(path)


def train(
    config: TrainConfig, out_dir: Path = OUT_DIR, pretrained: Path = PRETRAINED_MODEL
) -> TrainResult:
    """Train the student on ``config.videos``; see the module docstring for what is written. ``pretrained``:
    the weights ``config.init_from == "pretrain"`` starts from."""
    context = setup(config.device)
    try:
        return _Trainer(config, Path(out_dir), context, Path(pretrained)).run()
    finally:
        teardown(context)


class ResumableRun:
    """The resumable state both training stages keep under ``out_dir/state`` (:mod:`training.checkpoint`'s
    format) with the best weights so far beside it: ``train``'s ``_Trainer`` and ``pretrain``'s
    ``_Pretrainer`` set the attributes below and call :meth:`_maybe_resume` / :meth:`_save_state`."""

    stage: str  # the params section, for messages
    config: Any  # with ``resume`` and ``to_dict()``
    out_dir: Path
    ctx: Distributed
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    step: int
    best_metric: float
    running: dict[str, list[float]]
    run_identity: dict[str, Any]
    # Training-only modules (pretrain's feature projector): kept in the state, never in a model file.
    aux: nn.Module | None = None

    @property
    def _best_in_state(self) -> Path:
        return self.out_dir / "state" / BEST_FILE

    def _discard_stale_outputs(self) -> None:
        """Rank 0, starting fresh: best weights of another run must not become this run's model_best."""
        self._best_in_state.unlink(missing_ok=True)

    def _maybe_resume(self) -> dict | None:
        """Load the resumable state when it belongs to this run; return this rank's saved RNG states."""
        if not self.config.resume:
            state, message = None, f"{self.stage}.resume is false: starting fresh"
        else:
            state, message = load_state(self.out_dir / "state", self.run_identity, self.model.state_dict())
        if self.ctx.is_main:
            print(message, file=sys.stderr)
        if state is None:
            if self.ctx.is_main:
                self._discard_stale_outputs()
            return None
        self.model.load_state_dict(state["model"])
        if self.aux is not None:
            self.aux.load_state_dict(state["aux"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.best_metric = int(state["step"]), float(state["best_metric"])
        self.running.update({name: list(values) for name, values in state["running"].items()})
        # The batches need no sampler state: what a step trains on is a pure function of (seed, step).
        # Nothing draws from the global RNGs after initialisation today (no dropout; the samplers have their
        # own generators); restoring them keeps any future use reproducible across a resume.
        return state["rng"][self.ctx.rank]

    def _save_state(self) -> None:
        """Rank 0 writes the resumable state, with every rank's RNG states (a collective call under DDP)."""
        ranks = gather_rng_states(self.ctx)
        if not self.ctx.is_main:
            return
        save_state(
            self.out_dir / "state",
            {
                "step": self.step,
                "best_metric": self.best_metric,
                "running": {name: list(values) for name, values in self.running.items()},
                "run_identity": self.run_identity,
                "config": self.config.to_dict(),
                "model": self.model.state_dict(),
                "aux": self.aux.state_dict() if self.aux is not None else {},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": ranks,
            },
        )


class _Trainer(ResumableRun):
    stage = "train"

    def __init__(
        self, config: TrainConfig, out_dir: Path, context: Distributed, pretrained: Path = PRETRAINED_MODEL
    ) -> None:
        self.config, self.out_dir, self.ctx = config, out_dir, context
        torch.set_num_threads(config.threads or cpu_threads(context.world_size))
        # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's at wrap time).
        torch.manual_seed(config.seed)
        self.videos = find_videos(config.videos, config.val_frames)
        self.preprocessing = prepared_preprocessing(self.videos)  # saved with every model file
        self.dataset = ClipDataset(self.videos, with_flow=config.loss.warp > 0)
        self.model: VideoMambaDepth = build_student(config.model)
        init_weights = None
        if config.init_from == "pretrain":
            init_weights = init_from_pretrained(self.model, pretrained)
        self.model.to(context.device)
        self.optimizer, self.scheduler = build_optimizer(self.model, config,
                                                         temporal_lr_factor=config.temporal_lr_factor)
        # fp16 is not used (bf16 needs no loss scaling); the scaler is kept so checkpoints have one schema.
        self.scaler = torch.amp.GradScaler(context.device.type, enabled=False)
        self.clip_loss = DistillationLoss(config.loss)
        self.frame_loss = DistillationLoss(config.single_frame_loss())
        use_bf16 = config.precision == "bf16" or (
            config.precision == "auto" and context.device.type == "cuda"
        )
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        self.step, self.best_metric = 0, math.inf
        # Loss terms of the steps since the last train/ log row (their means are the next row); saved with
        # the state, so a resumed run logs the same rows as an uninterrupted one.
        self.running: dict[str, list[float]] = defaultdict(list)
        # What a resumable state must match: the params that change results, the number of processes (it
        # sets the global batch and each rank's share) and the library code (DVC re-runs this stage after a
        # code change; resuming a finished state then would return the old weights).
        self.run_identity = {
            **config.run_identity(),
            "world_size": context.world_size,
            "code": code_fingerprint(__name__),
            "init_weights": init_weights,
        }

    # ------------------------------------------------------------------------------------------------ run
    def run(self) -> TrainResult:
        cfg, ctx = self.config, self.ctx
        if ctx.is_main:
            for note in usage_notes(self.videos, cfg.clip_len, cfg.p_single_frame):
                print(f"note: {note}", file=sys.stderr)
        rng = self._maybe_resume()
        if rng is None:  # a fresh run: the rank's own RNG streams for anything not shared between ranks
            torch.manual_seed(cfg.seed + ctx.rank)
            np.random.seed(cfg.seed + ctx.rank)  # noqa: NPY002 (legacy global generator, for libraries)
            random.seed(cfg.seed + ctx.rank)
        else:
            set_rng_state(rng, ctx.device)
        net: nn.Module = self.model
        if ctx.world_size > 1:
            net = DistributedDataParallel(
                self.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )
        plan = StepPlan(
            self.videos,
            clip_len=cfg.clip_len,
            clip_stride=cfg.clip_stride,
            batch_size=cfg.batch_size,
            p_single_frame=cfg.p_single_frame,
            seed=cfg.seed,
            steps=cfg.steps,
            hflip=cfg.hflip,
            color_jitter=cfg.color_jitter,
            start=self.step,
            rank=ctx.rank,
            world_size=ctx.world_size,
        )
        loader = DataLoader(
            self.dataset,
            batch_sampler=plan,
            num_workers=cfg.num_workers,
            collate_fn=collate,
            multiprocessing_context="fork" if cfg.num_workers and sys.platform != "win32" else None,
            # Its own generator: creating the loader's iterator then draws nothing from the global RNG, so a
            # resumed run's RNG streams continue exactly as an uninterrupted run's.
            generator=torch.Generator().manual_seed(cfg.seed + ctx.rank),
        )
        live = self._live()
        last_validation: dict[str, float] = {}
        progress = tqdm(
            total=cfg.steps,
            initial=self.step,
            desc="train",
            unit="step",
            disable=not ctx.is_main,
            file=sys.stderr,
        )
        for batch in loader:
            terms = self._train_step(net, batch)
            self.step += 1
            for name, value in terms.items():
                self.running[name].append(value)
            progress.update(1)
            progress.set_postfix(loss=f"{terms['total']:.4f}", lr=f"{self.scheduler.get_last_lr()[-1]:.2e}")
            last = self.step == cfg.steps
            if ctx.is_main and (self.step % cfg.log_every == 0 or last):
                self._log_train(live, self.running)
                self.running.clear()
            if ctx.is_main and (self.step % cfg.val_every == 0 or last):
                last_validation = self._validate(live)
            if ctx.is_main and cfg.image_every and (self.step % cfg.image_every == 0 or last):
                self._log_images(live)
            if (cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0) or last:
                self._save_state()  # every rank: each contributes its RNG state
        progress.close()
        self._check_replicas_in_sync()
        if ctx.is_main:
            self._write_outputs(live)
        ctx.barrier()
        return TrainResult(
            self.out_dir / "model_final.safetensors",
            self.out_dir / "model_best.safetensors",
            self.step,
            self.best_metric,
            last_validation,
        )

    # ----------------------------------------------------------------------------------------------- steps
    def _train_step(self, net: nn.Module, batch: dict[str, Tensor]) -> dict[str, float]:
        """One optimizer step on a batch of clips (chunked BPTT) or single frames; returns the mean terms."""
        cfg, device = self.config, self.ctx.device
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        num_frames = batch["rgb"].shape[1]
        loss_fn = self.clip_loss if num_frames > 1 else self.frame_loss
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        states = None
        sums: dict[str, float] = defaultdict(float)
        starts = list(range(0, num_frames, cfg.chunk_size))
        for index, start in enumerate(starts):
            stop = min(start + cfg.chunk_size, num_frames)
            frames, pairs = slice(start, stop), slice(start, stop - 1)
            # Gradients of all chunks accumulate into one optimizer step; DDP averages them across ranks only
            # on the last chunk's backward (no_sync must cover the forward, where DDP decides).
            sync = index == len(starts) - 1 or not isinstance(net, DistributedDataParallel)
            with contextlib.nullcontext() if sync else net.no_sync():
                with self._autocast():
                    out = net(batch["rgb"][:, frames], batch["K"][:, frames], states)
                # Pairs that straddle two chunks are in neither chunk's temporal terms (the first frame's
                # prediction is detached): with chunk_size 4 of clip_len 8, 1 of 7 pairs.
                total, terms = loss_fn(
                    out.depth,
                    batch["depth"][:, frames],
                    batch["valid"][:, frames],
                    confidence=batch["confidence"][:, frames],
                    consistent=batch["consistent"][:, pairs],
                    static=batch["static"][:, pairs],
                    flow=batch["flow_fwd"][:, pairs] if "flow_fwd" in batch else None,
                    states=out.summaries,
                )
                weight = (stop - start) / num_frames  # chunk losses add up to the clip mean
                (total * weight).backward()
            states = out.states.detach()  # truncated BPTT: no gradient into earlier chunks
            for name, value in terms.items():
                sums[name] += weight * float(value)
        if cfg.grad_clip > 0:
            sums["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        return dict(sums)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        # The SSM keeps its fp32 islands (decays, scan) inside autocast; the losses run in fp32 too.
        return torch.autocast(self.ctx.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------------------------------ validation
    def _val_items(self) -> list[Item]:
        return [Item(i, v.train_frames, v.val_frames) for i, v in enumerate(self.videos) if v.val_frames]

    @torch.inference_mode()
    def _predict(self, item: Item) -> tuple[dict[str, Tensor], Tensor]:
        sample = {k: v[None].to(self.ctx.device) for k, v in self.dataset[item].items()}
        self.model.eval()
        with self._autocast():
            depth = self.model(sample["rgb"], sample["K"]).depth.float()
        return sample, depth

    def _validate(self, live: object) -> dict[str, float]:
        """Student vs teacher on the held-out tail of every training video (no ground truth is read).

        ``val/log_l1``: mean ``|log d - log d_teacher|`` over valid pixels. ``val/flicker_ratio``: mean
        frame-to-frame ``|Δ log d|`` of the student over static, consistent pixels divided by the teacher's
        (below 1: the student is steadier than its teacher).
        """
        items = self._val_items()
        if not items:
            return {}
        log_l1, student_change, teacher_change = [], [], []
        for item in items:
            sample, depth = self._predict(item)
            valid = sample["valid"]
            log_pred, log_teacher = depth.clamp_min(1e-3).log(), sample["depth"].clamp_min(1e-3).log()
            log_l1.append(float((log_pred - log_teacher).abs()[valid].mean()))
            steady = sample["static"] & sample["consistent"] & valid[:, 1:] & valid[:, :-1]
            if steady.any():
                student_change.append(float((log_pred[:, 1:] - log_pred[:, :-1]).abs()[steady].mean()))
                teacher_change.append(float((log_teacher[:, 1:] - log_teacher[:, :-1]).abs()[steady].mean()))
        metrics = {BEST_METRIC: float(np.mean(log_l1))}
        if teacher_change:
            metrics["val/flicker_ratio"] = float(
                np.mean(student_change) / max(np.mean(teacher_change), 1e-12)
            )
        for name, value in metrics.items():
            live.log_metric(name, value)
        if metrics[BEST_METRIC] < self.best_metric:
            self.best_metric = metrics[BEST_METRIC]
            # Kept with the resumable state (DVC deletes model_best before re-running the stage, and a
            # resumed run may not see this validation again); copied to model_best at the end.
            save_student(self._best_in_state, self.model, self.preprocessing)
        live.make_summary()
        return metrics

    def _log_images(self, live: object) -> None:
        """rgb | teacher | student for the middle validation frame of the first training video."""
        items = self._val_items() or [Item(0, 0, 1)]
        sample, depth = self._predict(items[0])
        t = sample["rgb"].shape[1] // 2
        teacher, valid = sample["depth"][0, t].cpu().numpy(), sample["valid"][0, t].cpu().numpy()
        vmin, vmax = robust_range(teacher, valid)
        strip = np.concatenate(
            [
                sample["rgb"][0, t].permute(1, 2, 0).cpu().numpy(),
                colorize(teacher, vmin, vmax, valid=valid),
                colorize(depth[0, t].cpu().numpy(), vmin, vmax),
            ],
            axis=1,
        )
        live.log_image(f"rgb_teacher_student/{self.step:06d}.png", strip)

    def _log_train(self, live: object, running: dict[str, list[float]]) -> None:
        live.step = self.step
        for name, values in running.items():
            live.log_metric(f"train/{name}", float(np.mean(values)))
        live.log_metric("train/lr", self.scheduler.get_last_lr()[-1])

    # --------------------------------------------------------------------------------- state and outputs
    def _live(self) -> object:
        return open_live(self.out_dir / "dvclive", self.step) if self.ctx.is_main else None

    def _check_replicas_in_sync(self) -> None:
        check_replicas_in_sync(self.model, self.ctx)

    def _write_outputs(self, live: object) -> None:
        save_student(self.out_dir / "model_final.safetensors", self.model, self.preprocessing)
        if math.isinf(self.best_metric):  # never validated (no video has validation frames): best = final
            save_student(self.out_dir / "model_best.safetensors", self.model, self.preprocessing)
        else:
            with atomic_file(self.out_dir / "model_best.safetensors") as tmp:
                shutil.copyfile(self._best_in_state, tmp)
        (self.out_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        live.end()
