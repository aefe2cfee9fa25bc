"""Per-frame pre-training of the student on image datasets (the ``pretrain`` stage).

Public API: ``PretrainConfig`` (params ``pretrain``), ``PretrainLossConfig``,
``pretrain(config, model_config, preprocessing, out_dir) -> PretrainResult``, ``default_K``.
"""

from videomamba_depth.pretraining.config import PretrainConfig, PretrainLossConfig
from videomamba_depth.pretraining.loop import PretrainResult, default_K, pretrain

__all__ = ["PretrainConfig", "PretrainLossConfig", "PretrainResult", "default_K", "pretrain"]
