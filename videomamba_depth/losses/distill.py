"""The distillation objective: a weighted sum of the spatial and temporal terms, set by :class:`LossConfig`.

A term whose weight is 0 is never computed (and is absent from the logged terms), so switching a term off in
``params.yaml`` costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from videomamba_depth.config import StageConfig
from videomamba_depth.losses.spatial import (
    HdnMode,
    gradient_preservation_loss,
    hdn_loss,
    metric_log_l1,
    multiscale_gradient_loss,
    silog_loss,
    ssi_loss,
)
from videomamba_depth.losses.temporal import state_smoothing, temporal_gradient_matching, warped_consistency

# The weight fields of LossConfig, in the order the terms are computed and logged.
TERMS = ("metric_l1", "ssi", "tgm", "warp", "state_smooth", "silog", "grad", "hdn", "grad_preserve")

# Largest hdn_levels: the groups are masks over every pixel, 2^L - 1 of them per frame by depth range and
# (4^L - 1) / 3 on the spatial grid (85 at 4 levels), so memory grows fast with more.
MAX_HDN_LEVELS = 4


class WeightedTerms:
    """What the loss configs (``train.loss``, ``pretrain.loss``) share. ``terms``: their weight fields.

    Both also have the settings ``ssi_trim``, ``silog_lambda``, ``grad_scales``, ``hdn_levels`` and
    ``hdn_mode``, checked by :meth:`check_settings`.
    """

    terms: ClassVar[tuple[str, ...]]

    def check_weights(self) -> None:
        """``ValueError`` unless every weight is finite and >= 0 and one is > 0."""
        for name in self.terms:
            weight = getattr(self, name)
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"loss weight {name} must be finite and >= 0, got {weight}")
        if all(getattr(self, name) == 0 for name in self.terms):
            raise ValueError(f"all loss weights are 0 ({', '.join(self.terms)}): nothing to train")

    def check_settings(self) -> None:
        """``ValueError`` naming the setting unless the shared settings are in range."""
        if not 0.0 <= self.ssi_trim < 1.0:
            raise ValueError(f"ssi_trim must be in [0, 1), got {self.ssi_trim}")
        if not 0.0 <= self.silog_lambda <= 1.0:
            raise ValueError(f"silog_lambda must be in [0, 1], got {self.silog_lambda}")
        if self.grad_scales < 1:
            raise ValueError(f"grad_scales must be >= 1, got {self.grad_scales}")
        if not 1 <= self.hdn_levels <= MAX_HDN_LEVELS:
            raise ValueError(f"hdn_levels must be in [1, {MAX_HDN_LEVELS}], got {self.hdn_levels}")

    def weights(self) -> dict[str, float]:
        """Term name -> weight, for the terms with a non-zero weight."""
        return {name: getattr(self, name) for name in self.terms if getattr(self, name) > 0}


@dataclass(frozen=True)
class LossConfig(StageConfig, WeightedTerms):
    """Weights and settings of the distillation loss (the train stage nests it, e.g. ``train.loss``).

    Weights (>= 0; 0 skips the term entirely):
        metric_l1: confidence-weighted ``|log d - log d_teacher|`` (:func:`metric_log_l1`).
        ssi: MiDaS scale-and-shift-invariant L1 in disparity (:func:`ssi_loss`).
        tgm: temporal gradient matching in log depth (:func:`temporal_gradient_matching`).
        warp: steadiness of static surfaces along the flow stage's optical flow, ``|log d_{t+1}(p + f) -
            log d_t(p)|`` on static, flow-consistent pixels (:func:`warped_consistency`).
        state_smooth: ``||s_{t+1} - s_t||^2`` of the student's state summaries (:func:`state_smoothing`).
        silog: scale-invariant log loss (:func:`silog_loss`).
        grad: multi-scale gradient matching of the log-depth residual (:func:`multiscale_gradient_loss`).
        hdn: hierarchical depth normalisation loss in disparity (:func:`hdn_loss`).
        grad_preserve: gradient matching in median/MAD-normalised disparity
            (:func:`gradient_preservation_loss`, over ``grad_scales`` scales).
    Settings:
        use_confidence: weight metric_l1 and ssi by the teacher's confidence.
        ssi_trim: fraction of the largest SSI residuals dropped per frame, in [0, 1).
        tgm_jump_threshold: teacher changes ``|log d_{t+1} - log d_t|`` above this are not matched (> 0).
        tgm_use_consistency: also drop TGM pixels that fail the flow stage's forward-backward check.
        state_moving_weight: state-smoothing weight of moving pixels, in [0, 1] (static pixels weigh 1).
        silog_lambda: SILog variance weight, in [0, 1].
        grad_scales: number of scales of the gradient terms (>= 1).
        hdn_levels: levels of the hierarchical normalisation, in [1, ``MAX_HDN_LEVELS``] (1 = global).
        hdn_mode: its groups: ``depth_range`` (quantile ranges of the teacher's depth) or ``spatial`` (grid).
    """

    terms = TERMS

    metric_l1: float = 1.0
    ssi: float = 0.5
    tgm: float = 1.0
    warp: float = 0.0
    state_smooth: float = 0.01
    silog: float = 0.0
    grad: float = 0.5
    hdn: float = 0.0
    grad_preserve: float = 0.0
    use_confidence: bool = True
    ssi_trim: float = 0.2
    tgm_jump_threshold: float = 0.05
    tgm_use_consistency: bool = True
    state_moving_weight: float = 0.1
    silog_lambda: float = 0.85
    grad_scales: int = 4
    hdn_levels: int = 3
    hdn_mode: HdnMode = "depth_range"

    def __post_init__(self) -> None:
        self.check_weights()
        self.check_settings()
        if not self.tgm_jump_threshold > 0:
            raise ValueError(f"tgm_jump_threshold must be > 0, got {self.tgm_jump_threshold}")
        if not 0.0 <= self.state_moving_weight <= 1.0:
            raise ValueError(f"state_moving_weight must be in [0, 1], got {self.state_moving_weight}")


class DistillationLoss(nn.Module):
    """Weighted sum of the distillation terms for a batch of clips.

    Terms with weight 0 are skipped. The temporal terms (tgm, state_smooth) are 0 for single-frame batches.
    """

    def __init__(self, config: LossConfig) -> None:
        super().__init__()
        self.config = config

    def forward(
        self,
        pred: Tensor,
        teacher: Tensor,
        valid: Tensor,
        *,
        confidence: Tensor | None = None,
        consistent: Tensor | None = None,
        static: Tensor | None = None,
        flow: Tensor | None = None,
        states: Mapping[str, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its terms.

        Args:
            pred: ``(B, N, H, W)`` student depth, metres, > 0 (any dtype; the loss runs in fp32).
            teacher: ``(B, N, H, W)`` teacher depth, metres.
            valid: ``(B, N, H, W)`` bool, teacher validity (and image, not padding).
            confidence: ``(B, N, H, W)`` teacher confidence in [0, 1], or None.
            consistent: ``(B, N-1, H, W)`` bool forward-backward flow consistency of pair (t, t+1), or None.
            static: ``(B, N-1, H, W)`` bool, pixel of frame t static between t and t+1, or None.
            flow: ``(B, N-1, H, W, 2)`` forward optical flow of pair (t, t+1), pixels; required (with
                ``consistent`` and ``static``) when ``warp > 0``.
            states: name -> ``(B, N, C, h, w)`` state summaries; required when ``state_smooth > 0``.

        Returns:
            total: 0-dim fp32 tensor ``sum_k weight_k * term_k`` (with autograd).
            terms: term name -> detached 0-dim tensor (unweighted), for every term with a non-zero weight,
                plus ``"total"``. Tensors, not floats, so logging does not force a device sync every step.
        """
        cfg = self.config
        if pred.ndim != 4 or pred.shape != teacher.shape or pred.shape != valid.shape:
            raise ValueError(
                f"pred, teacher and valid must share one (B, N, H, W) shape, got {tuple(pred.shape)}, "
                f"{tuple(teacher.shape)}, {tuple(valid.shape)}"
            )
        conf = confidence if cfg.use_confidence else None
        compute = {
            "metric_l1": lambda: metric_log_l1(pred, teacher, valid, conf),
            "ssi": lambda: ssi_loss(pred, teacher, valid, conf, trim=cfg.ssi_trim),
            "tgm": lambda: temporal_gradient_matching(
                pred,
                teacher,
                valid,
                jump_threshold=cfg.tgm_jump_threshold,
                pair_mask=consistent if cfg.tgm_use_consistency else None,
            ),
            "warp": lambda: warped_consistency(
                pred, valid, *_require_flow(flow, consistent, static, cfg.warp)
            ),
            "state_smooth": lambda: state_smoothing(
                _require_states(states, cfg.state_smooth), static, moving_weight=cfg.state_moving_weight
            ),
            "silog": lambda: silog_loss(pred, teacher, valid, lam=cfg.silog_lambda),
            "grad": lambda: multiscale_gradient_loss(pred, teacher, valid, scales=cfg.grad_scales),
            "hdn": lambda: hdn_loss(pred, teacher, valid, levels=cfg.hdn_levels, mode=cfg.hdn_mode),
            "grad_preserve": lambda: gradient_preservation_loss(pred, teacher, valid, scales=cfg.grad_scales),
        }
        total = torch.zeros((), dtype=torch.float32, device=pred.device)
        terms: dict[str, Tensor] = {}
        for name, weight in cfg.weights().items():
            value = compute[name]()
            total = total + weight * value
            terms[name] = value.detach()
        terms["total"] = total.detach()
        return total, terms


def _require_flow(flow: Tensor | None, consistent: Tensor | None, static: Tensor | None,
                  weight: float) -> tuple[Tensor, Tensor]:
    """The flow and the pixels the ``warp`` term uses (static and flow-consistent)."""
    if flow is None or consistent is None or static is None:
        raise ValueError(f"warp weight is {weight} but the flow, consistency and static masks were not all "
                         "passed to the loss")
    return flow, consistent & static


def _require_states(states: Mapping[str, Tensor] | None, weight: float) -> Mapping[str, Tensor]:
    if states is None:
        raise ValueError(f"state_smooth weight is {weight} but no state summaries were passed to the loss")
    return states
