"""Training of the student on the teacher and flow caches (the ``train`` stage).

Public API: ``TrainConfig`` (params ``train``), ``train(config, out_dir) -> TrainResult``, and the data
pieces ``find_videos``, ``usage_notes``, ``ClipDataset``, ``StepPlan``, ``collate``.
"""

from videomamba_depth.training.config import TrainConfig
from videomamba_depth.training.data import (
    ClipDataset,
    Item,
    StepPlan,
    TrainingVideo,
    collate,
    find_videos,
    usage_notes,
)
from videomamba_depth.training.loop import TrainResult, learning_rate_factor, train

__all__ = [
    "ClipDataset",
    "Item",
    "StepPlan",
    "TrainConfig",
    "TrainResult",
    "TrainingVideo",
    "collate",
    "find_videos",
    "learning_rate_factor",
    "train",
    "usage_notes",
]
