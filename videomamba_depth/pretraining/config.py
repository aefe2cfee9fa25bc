"""The ``pretrain`` section of params.yaml: image datasets, optimisation, loss weights, logging."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from videomamba_depth.config import StageConfig
from videomamba_depth.datasets import ImageDatasetConfig
from videomamba_depth.losses.distill import WeightedTerms
from videomamba_depth.training.config import check_loop_settings

# The embedded default: the synthetic image set of the synth_images stage, in the file-list format.
SYNTH_IMAGES = "data/synth_images"
# Keys that do not change what a run computes (a state saved under other values still continues the run).
NON_SEMANTIC_KEYS = ("resume", "num_workers", "log_every", "threads")
# The weight fields of PretrainLossConfig, in the order the terms are computed and logged.
TERMS = ("metric_l1", "ssi", "grad", "silog", "ranking")


@dataclass(frozen=True)
class PretrainLossConfig(StageConfig, WeightedTerms):
    """Weights (>= 0; 0 skips the term) and settings of the image loss against ground truth.

    metric_l1: ``|log d - log d_gt|`` (``losses.metric_log_l1``); ssi: MiDaS scale-and-shift-invariant loss in
    disparity (``losses.ssi_loss``, trimmed by ``ssi_trim``); grad: multi-scale gradient matching of the
    log-depth residual over ``grad_scales`` scales; silog: scale-invariant log loss (``silog_lambda``);
    ranking: logistic ranking loss on relative-depth point pairs (``losses.pair_ranking_loss``; only
    datasets with pairs, e.g. DA2K, contribute).
    """

    terms = TERMS

    metric_l1: float = 1.0
    ssi: float = 0.5
    grad: float = 0.5
    silog: float = 0.0
    ranking: float = 1.0
    ssi_trim: float = 0.2
    silog_lambda: float = 0.85
    grad_scales: int = 4

    def __post_init__(self) -> None:
        self.check_weights()
        if not 0.0 <= self.ssi_trim < 1.0:
            raise ValueError(f"ssi_trim must be in [0, 1), got {self.ssi_trim}")
        if not 0.0 <= self.silog_lambda <= 1.0:
            raise ValueError(f"silog_lambda must be in [0, 1], got {self.silog_lambda}")
        if self.grad_scales < 1:
            raise ValueError(f"grad_scales must be >= 1, got {self.grad_scales}")


def _synth_images(split: str) -> tuple[ImageDatasetConfig, ...]:
    return (ImageDatasetConfig(format="filelist", root=SYNTH_IMAGES, split=split),)


@dataclass(frozen=True)
class PretrainConfig(StageConfig):
    """Per-frame pre-training of the student on image datasets (see params.yaml for units).

    The architecture is ``train.model`` and the image geometry ``prepare.long_edge`` and
    ``prepare.pad_multiple`` (read from those sections, so the pre-trained student is the video student and
    sees the same pixel scale); they are not keys of this section.

    Data:
        datasets: training datasets (``ImageDatasetConfig`` mappings: format, root, split, weight, ...),
            mixed by weight (``datasets.MixedImageSampler``).
        val_datasets: validation datasets (every sample, in order, no augmentation); metrics are over all
            their images together.
        hflip, color_jitter: augmentation, as the ``train`` stage's (K mirrored with the image).
        num_workers: DataLoader worker processes (0 = load in the training process).
    Model: freeze_encoder: no gradients to the encoder backbone here; it replaces ``train.model``'s own
        ``freeze_encoder``, which is about video training (the default pipeline pre-trains everything, then
        fine-tunes on video with the encoder frozen).
    Optimisation: steps, batch_size (images per step per process), lr, encoder_lr_factor, weight_decay,
        warmup_steps, lr_schedule, min_lr_ratio, lr_step_size, lr_gamma, grad_clip, precision, device,
        threads, seed: as in ``train``.
    Logging and checkpoints: log_every, val_every, image_every, checkpoint_every (steps; 0 disables images /
        periodic checkpoints; validation also runs after the last step), resume.
    """

    datasets: tuple[ImageDatasetConfig, ...] = field(default_factory=lambda: _synth_images("train.txt"))
    val_datasets: tuple[ImageDatasetConfig, ...] = field(default_factory=lambda: _synth_images("val.txt"))
    hflip: float = 0.5
    color_jitter: float = 0.2
    num_workers: int = 0
    freeze_encoder: bool = False
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    encoder_lr_factor: float = 1.0
    weight_decay: float = 0.01
    warmup_steps: int = 20
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
    image_every: int = 100
    checkpoint_every: int = 100
    resume: bool = True
    loss: PretrainLossConfig = field(default_factory=PretrainLossConfig)

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ValueError("datasets: at least one training dataset is needed")
        if not any(d.weight > 0 for d in self.datasets):
            raise ValueError("datasets: at least one dataset needs a weight > 0")
        check_loop_settings(
            self,
            positive=("batch_size", "steps", "log_every", "val_every"),
            non_negative=("num_workers", "warmup_steps", "threads", "image_every", "checkpoint_every"),
        )

    def run_identity(self) -> dict[str, Any]:
        """The config without :data:`NON_SEMANTIC_KEYS`: two runs with equal identities compute the same."""
        values = self.to_dict()
        for key in NON_SEMANTIC_KEYS:
            values.pop(key)
        return values
