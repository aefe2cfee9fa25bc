"""Training losses of the distillation: per-frame metric/relative terms and temporal stability terms."""

from videomamba_depth.losses.distill import TERMS, DistillationLoss, LossConfig
from videomamba_depth.losses.spatial import (
    metric_log_l1,
    multiscale_gradient_loss,
    pair_ranking_loss,
    scale_shift_lstsq,
    silog_loss,
    ssi_loss,
)
from videomamba_depth.losses.temporal import state_smoothing, static_weights, temporal_gradient_matching

__all__ = [
    "TERMS",
    "DistillationLoss",
    "LossConfig",
    "metric_log_l1",
    "multiscale_gradient_loss",
    "pair_ranking_loss",
    "scale_shift_lstsq",
    "silog_loss",
    "ssi_loss",
    "state_smoothing",
    "static_weights",
    "temporal_gradient_matching",
]
