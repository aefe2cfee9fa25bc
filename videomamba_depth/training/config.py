"""The ``train`` section of params.yaml: loop settings, with the model and loss configs nested."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from videomamba_depth.config import StageConfig
from videomamba_depth.losses import LossConfig
from videomamba_depth.models import ModelConfig

# Keys that do not change what a run computes: a resumable state saved under other values of these still
# continues the same run.
NON_SEMANTIC_KEYS = ("resume", "num_workers", "log_every", "threads")


def check_loop_settings(config: Any, positive: Sequence[str], non_negative: Sequence[str]) -> None:
    """The range checks the ``train`` and ``pretrain`` sections share (``ValueError`` naming the key): the
    ``positive`` (>= 1) and ``non_negative`` counts, then ``hflip``, ``color_jitter``, ``lr``,
    ``encoder_lr_factor``, ``weight_decay``, ``min_lr_ratio``, ``lr_step_size``, ``lr_gamma`` and
    ``grad_clip``."""
    for name in positive:
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in non_negative:
        if getattr(config, name) < 0:
            raise ValueError(f"{name} must be >= 0, got {getattr(config, name)}")
    if not 0.0 <= config.hflip <= 1.0:
        raise ValueError(f"hflip must be in [0, 1], got {config.hflip}")
    if not 0.0 <= config.color_jitter < 1.0:
        raise ValueError(f"color_jitter must be in [0, 1), got {config.color_jitter}")
    if not (config.lr > 0 and config.encoder_lr_factor >= 0 and config.weight_decay >= 0):
        raise ValueError("need lr > 0, encoder_lr_factor >= 0 and weight_decay >= 0")
    if not 0.0 <= config.min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {config.min_lr_ratio}")
    if config.lr_step_size < 1:
        raise ValueError(f"lr_step_size must be >= 1, got {config.lr_step_size}")
    if not 0.0 < config.lr_gamma <= 1.0:
        raise ValueError(f"lr_gamma must be in (0, 1], got {config.lr_gamma}")
    if config.grad_clip < 0:
        raise ValueError(f"grad_clip must be >= 0, got {config.grad_clip}")


@dataclass(frozen=True)
class TrainConfig(StageConfig):
    """Training of the student on the teacher and flow caches of ``videos`` (see params.yaml for units).

    Data:
        videos: training videos (manifest names); held-out videos (``evaluate.videos``) must not be here.
        val_frames: the last frames of every training video, never trained on, used for validation and for
            picking ``model_best`` (a video of at most this many frames is trained on whole, not validated).
        clip_len: frames per training clip (N).
        clip_stride: spacing of clip starts; each epoch shifts all starts by a random offset below it.
        batch_size: clips per step (per process under DDP).
        p_single_frame: probability that a step trains on single frames instead (states reset; only the
            metric and SSI terms); such a step has ``batch_size * clip_len`` frames.
        hflip: probability of mirroring a clip left-right (its K is mirrored too).
        color_jitter: clips get a brightness gain and a gamma from ``[1 - color_jitter, 1 + color_jitter]``.
        num_workers: DataLoader worker processes (0 = load in the training process).
    Optimisation:
        steps: optimizer steps (a fixed count, never a timer, so runs are reproducible).
        chunk_size: truncated-BPTT chunk length: states are carried between chunks and detached.
        lr, encoder_lr_factor, weight_decay: AdamW; the encoder backbone gets ``lr * encoder_lr_factor``.
        temporal_lr_factor: the temporal blocks get ``lr * temporal_lr_factor`` (> 0): they start as the
            identity after per-frame pre-training and need larger steps than the fine-tuned rest.
        lr_schedule: after a linear warm-up of ``warmup_steps``, ``cosine`` decay to ``lr * min_lr_ratio``
            at the last step, or ``step`` decay: ``lr * lr_gamma ** k`` after ``k * lr_step_size`` steps
            (:func:`~videomamba_depth.training.loop.learning_rate_factor`).
        grad_clip: max global gradient norm (0 = no clipping).
        precision: ``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``fp32`` or ``bf16``.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: torch CPU threads (0 = the cores available, shared between DDP processes).
        seed: base seed; process ``rank`` uses ``seed + rank`` for anything not shared.
    Logging and checkpoints:
        log_every, val_every, image_every, checkpoint_every: in steps (0 disables images / periodic
            checkpoints; validation also runs after the last step).
        resume: continue from ``data/train/state`` when it holds a run with the same config.
    Initialisation:
        init_from: ``pretrain``: start from the ``pretrain`` stage's ``data/pretrain/model_best.safetensors``
            (same architecture, temporal blocks still the identity); null: a fresh student.
    """

    videos: tuple[str, ...]
    val_frames: int = 8
    clip_len: int = 8
    clip_stride: int = 4
    batch_size: int = 2
    p_single_frame: float = 0.1
    hflip: float = 0.5
    color_jitter: float = 0.2
    num_workers: int = 0
    steps: int = 600
    chunk_size: int = 4
    lr: float = 1e-3
    encoder_lr_factor: float = 1.0
    temporal_lr_factor: float = 1.0
    weight_decay: float = 0.01
    warmup_steps: int = 30
    lr_schedule: Literal["cosine", "step"] = "cosine"
    min_lr_ratio: float = 0.05
    lr_step_size: int = 1000
    lr_gamma: float = 0.1
    grad_clip: float = 1.0
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0
    seed: int = 0
    log_every: int = 10
    val_every: int = 100
    image_every: int = 200
    checkpoint_every: int = 100
    resume: bool = True
    init_from: Literal["pretrain"] | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if not self.videos:
            raise ValueError("videos: at least one training video is needed")
        if len(set(self.videos)) != len(self.videos):
            raise ValueError(f"videos: duplicate names in {list(self.videos)}")
        check_loop_settings(
            self,
            positive=("clip_len", "clip_stride", "batch_size", "steps", "chunk_size", "log_every",
                      "val_every"),
            non_negative=("val_frames", "num_workers", "warmup_steps", "threads", "image_every",
                          "checkpoint_every"),
        )
        if self.chunk_size > self.clip_len:
            raise ValueError(f"chunk_size ({self.chunk_size}) must not exceed clip_len ({self.clip_len})")
        if not 0.0 <= self.p_single_frame <= 1.0:
            raise ValueError(f"p_single_frame must be in [0, 1], got {self.p_single_frame}")
        if not self.temporal_lr_factor > 0:
            raise ValueError(f"temporal_lr_factor must be > 0, got {self.temporal_lr_factor}")
        model = self.model
        if model.freeze_encoder and self.init_from is None and model.encoder == "cnn" and (
            model.encoder_checkpoint is None
        ):
            raise ValueError(
                "model.freeze_encoder with init_from null freezes a randomly initialised CNN encoder: set "
                "init_from: pretrain, give model.encoder_checkpoint, or set model.freeze_encoder: false"
            )

    def run_identity(self) -> dict[str, Any]:
        """The config without :data:`NON_SEMANTIC_KEYS`: two runs with equal identities compute the same."""
        values = self.to_dict()
        for key in NON_SEMANTIC_KEYS:
            values.pop(key)
        return values

    def single_frame_loss(self) -> LossConfig:
        """Loss of single-frame steps: the metric and SSI terms only (no temporal or extra spatial terms)."""
        return dataclasses.replace(
            self.loss, tgm=0.0, warp=0.0, state_smooth=0.0, silog=0.0, grad=0.0, hdn=0.0, grad_preserve=0.0
        )
