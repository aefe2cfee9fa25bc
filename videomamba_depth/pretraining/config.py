"""The ``pretrain`` section of params.yaml: image datasets, optimisation, loss weights, logging."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from videomamba_depth.config import ConfigError, StageConfig
from videomamba_depth.datasets import ImageDatasetConfig
from videomamba_depth.losses.distill import WeightedTerms
from videomamba_depth.losses.spatial import HdnMode
from videomamba_depth.teacher.base import TeacherConfig
from videomamba_depth.training.config import check_loop_settings

# The embedded default: the synthetic image set of the synth_images stage, in the file-list format.
SYNTH_IMAGES = "data/synth_images"
# Keys that do not change what a run computes (a state saved under other values still continues the run).
NON_SEMANTIC_KEYS = ("resume", "num_workers", "log_every", "threads")
# The weight fields of PretrainLossConfig, in the order the terms are computed and logged.
TERMS = (
    "metric_l1", "ssi", "grad", "silog", "ranking", "hdn", "grad_preserve", "shared_context", "local_global",
    "feature_align",
)
# pretrain.teacher: these names, or STUDENT_TEACHER followed by the path of a saved student file.
TEACHERS = ("none", "synthetic", "unidepth")
STUDENT_TEACHER = "student:"


@dataclass(frozen=True)
class PretrainLossConfig(StageConfig, WeightedTerms):
    """Weights (>= 0; 0 skips the term) and settings of the image loss against the targets: ground truth, or
    the predictions of ``pretrain.teacher``.

    Weights:
        metric_l1: ``|log d - log d_target|`` (``losses.metric_log_l1``).
        ssi: MiDaS scale-and-shift-invariant loss in disparity (``losses.ssi_loss``, trimmed by ``ssi_trim``).
        grad: multi-scale gradient matching of the log-depth residual over ``grad_scales`` scales.
        silog: scale-invariant log loss (``silog_lambda``).
        ranking: logistic ranking loss on relative-depth point pairs (``losses.pair_ranking_loss``; only
            datasets with pairs, e.g. DA2K, contribute; always their annotations, whatever the teacher).
        hdn: hierarchical depth normalisation loss (``losses.hdn_loss``: ``hdn_levels``, ``hdn_mode``).
        grad_preserve: gradient matching in median/MAD-normalised disparity
            (``losses.gradient_preservation_loss``, ``grad_scales`` scales).
        shared_context: the student's prediction on a crop view (a random box zoomed to the image size,
            ``crop_fraction``) vs the teacher's on the same view, by ``losses.hdn_loss``.
        local_global: the teacher's prediction on that crop view vs the same box of the student's prediction
            on the whole image, up to scale and shift (``losses.local_global_loss``, trimmed by ``ssi_trim``).
        feature_align: ``1 - cos`` between the student's features at ``feature_align_scale``, projected by a
            trained 1x1 convolution, and the teacher's (``losses.feature_alignment_loss``); needs a teacher
            with features (``student:<path>``).
    Settings: ssi_trim, silog_lambda, grad_scales, hdn_levels, hdn_mode as in ``train.loss``;
        crop_fraction: ``(low, high)`` in (0, 1]: a crop view's sides are the image's times a fraction drawn
            uniformly from it; feature_align_scale: ``s4``, ``s8``, ``s16`` or ``s32``.
    """

    terms = TERMS

    metric_l1: float = 1.0
    ssi: float = 0.5
    grad: float = 0.5
    silog: float = 0.0
    ranking: float = 1.0
    hdn: float = 0.0
    grad_preserve: float = 0.0
    shared_context: float = 0.0
    local_global: float = 0.0
    feature_align: float = 0.0
    ssi_trim: float = 0.2
    silog_lambda: float = 0.85
    grad_scales: int = 4
    hdn_levels: int = 3
    hdn_mode: HdnMode = "depth_range"
    crop_fraction: tuple[float, float] = (0.5, 0.8)
    feature_align_scale: Literal["s4", "s8", "s16", "s32"] = "s16"

    def __post_init__(self) -> None:
        self.check_weights()
        self.check_settings()
        low, high = self.crop_fraction
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_fraction must be [low, high], 0 < low <= high <= 1, got {[low, high]}")

    @property
    def uses_crops(self) -> bool:
        """A crop view is needed: the shared-context or the local-global term is on."""
        return self.shared_context > 0 or self.local_global > 0


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
    Targets:
        teacher: what the loss terms compare the student with: ``none`` (the datasets' ground truth),
            ``synthetic`` (ground truth corrupted like a per-frame network, ``teacher.synthetic``),
            ``unidepth`` (UniDepthV2's predictions) or ``student:<path>`` (a saved, frozen student, e.g. a
            bigger one of this family; it exposes features for ``loss.feature_align``).
        teacher_settings: the ``synthetic`` and ``unidepth`` teachers' settings, keys of the ``teacher``
            section (``TeacherConfig``: ``seed``, ``synthetic_*``, ``weights``, ``resolution_level``,
            ``device``, ``min_depth`` / ``max_depth`` bounding every teacher's valid output); their own
            mapping, so sweeping the video teacher never re-runs pre-training. ``backend`` is not a key here.
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
    teacher: str = "none"
    teacher_settings: TeacherConfig = field(default_factory=TeacherConfig)
    loss: PretrainLossConfig = field(default_factory=PretrainLossConfig)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, where: str = "") -> PretrainConfig:
        settings = values.get("teacher_settings") if isinstance(values, Mapping) else None
        if isinstance(settings, Mapping) and "backend" in settings:
            raise ConfigError(
                f"{where or cls.__name__}.teacher_settings: no 'backend' key here (pretrain.teacher picks "
                "the teacher)"
            )
        return super().from_dict(values, where)

    @property
    def student_teacher(self) -> str | None:
        """The student file of ``teacher: student:<path>``, else None."""
        student = self.teacher.startswith(STUDENT_TEACHER)
        return self.teacher.removeprefix(STUDENT_TEACHER) if student else None

    def __post_init__(self) -> None:
        if self.teacher not in TEACHERS and not (
            self.student_teacher and self.student_teacher.endswith(".safetensors")
        ):
            raise ValueError(
                f"teacher must be {', '.join(TEACHERS)} or {STUDENT_TEACHER}<path to a saved .safetensors "
                f"student>, got {self.teacher!r}"
            )
        if self.loss.feature_align > 0 and self.student_teacher is None:
            raise ValueError(
                f"loss.feature_align is {self.loss.feature_align} but teacher {self.teacher!r} exposes no "
                f"features (only {STUDENT_TEACHER}<path> does): set loss.feature_align to 0"
            )
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
