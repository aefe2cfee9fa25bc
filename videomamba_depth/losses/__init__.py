"""Training losses: per-frame metric/relative terms, cross-context (crop) and feature terms, and temporal
stability terms."""

from videomamba_depth.losses.context import (
    crop_intrinsics,
    crop_resize,
    feature_alignment_loss,
    local_global_loss,
    sample_boxes,
)
from videomamba_depth.losses.distill import TERMS, DistillationLoss, LossConfig
from videomamba_depth.losses.spatial import (
    gradient_preservation_loss,
    hdn_loss,
    hierarchy_groups,
    metric_log_l1,
    multiscale_gradient_loss,
    normalize_groups,
    pair_ranking_loss,
    scale_shift_lstsq,
    silog_loss,
    ssi_loss,
)
from videomamba_depth.losses.temporal import (
    state_smoothing,
    static_weights,
    temporal_gradient_matching,
    warped_consistency,
)

__all__ = [
    "TERMS",
    "DistillationLoss",
    "LossConfig",
    "crop_intrinsics",
    "crop_resize",
    "feature_alignment_loss",
    "gradient_preservation_loss",
    "hdn_loss",
    "hierarchy_groups",
    "local_global_loss",
    "metric_log_l1",
    "multiscale_gradient_loss",
    "normalize_groups",
    "pair_ranking_loss",
    "sample_boxes",
    "scale_shift_lstsq",
    "silog_loss",
    "ssi_loss",
    "state_smoothing",
    "static_weights",
    "temporal_gradient_matching",
    "warped_consistency",
]
