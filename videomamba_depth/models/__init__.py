"""The student: a streaming metric video depth model (per-frame encoder + temporal Mamba SSM + DPT decoder).

Public API:

- ``ModelConfig`` (params ``train.model.*``), ``build_student(cfg)`` -> ``VideoMambaDepth``.
- ``VideoMambaDepth``: ``init_states(batch, H, W)``, ``forward(rgb (B, N, 3, H, W), K (B, N, 3, 3), states)``
  -> ``StudentOutput(depth (B, N, H, W), states, summaries)``, ``step(rgb (B, 3, H, W), K (B, 3, 3), states)``
  -> ``(depth (B, H, W), states)``, ``forward_frames(rgb (F, 3, H, W), K (F, 3, 3), has_K (F,) | None)``
  -> depth ``(F, H, W)`` (temporal blocks bypassed), ``forward_frames_with_features`` (also the per-scale
  features), ``temporal_identity_violations()``,
  ``parameter_groups(lr, encoder_lr_factor, weight_decay)``, ``backends``.
- ``StudentStates``: immutable per-scale SSM states with ``detach``, ``clone``, ``to``, ``reset``, ``nbytes``.
- Encoders: ``ENCODERS`` (``cnn``, ``timm``), ``require_timm``.
- ``load_external_checkpoint(module, path, prefix_map, strict)`` -> ``CheckpointReport``.
- ``models.io``: ``save_student(path, model)``, ``load_student(path, map_location)`` (``CheckpointError``),
  ``load_adding_camera_encoder(model, state, source)`` (``camera: rays`` weights into a ``camera: tokens``
  model).
"""

from videomamba_depth.models.checkpoint import CheckpointReport, load_external_checkpoint, read_state_dict
from videomamba_depth.models.encoders import ENCODERS, SCALES, STRIDES, CnnEncoder, TimmEncoder, require_timm
from videomamba_depth.models.io import CheckpointError, load_adding_camera_encoder, load_student, save_student
from videomamba_depth.models.rays import RayFiLM, canonical_log_scale, focal_length, ray_features
from videomamba_depth.models.states import StudentStates
from videomamba_depth.models.student import (
    DEPTH_RANGE,
    ModelConfig,
    StudentOutput,
    VideoMambaDepth,
    build_student,
)

__all__ = [
    "DEPTH_RANGE",
    "ENCODERS",
    "SCALES",
    "STRIDES",
    "CheckpointError",
    "CheckpointReport",
    "CnnEncoder",
    "ModelConfig",
    "RayFiLM",
    "StudentOutput",
    "StudentStates",
    "TimmEncoder",
    "VideoMambaDepth",
    "build_student",
    "canonical_log_scale",
    "focal_length",
    "load_adding_camera_encoder",
    "load_external_checkpoint",
    "load_student",
    "ray_features",
    "read_state_dict",
    "require_timm",
    "save_student",
]
