"""The ``evaluate`` stage: teacher vs streaming student vs per-frame student on held-out videos."""

from videomamba_depth.evaluation.data import EvalVideo, load_eval_video
from videomamba_depth.evaluation.pipeline import (
    HEADLINE_ALIGNMENT,
    METHODS,
    EvaluateConfig,
    evaluate,
    predict_video,
)
from videomamba_depth.evaluation.scoring import (
    DEPTH_METRICS,
    REGION_METRICS,
    REGIONS,
    TEMPORAL_METRICS,
    Score,
    ScoreSettings,
    score,
)

__all__ = [
    "DEPTH_METRICS",
    "HEADLINE_ALIGNMENT",
    "METHODS",
    "REGIONS",
    "REGION_METRICS",
    "TEMPORAL_METRICS",
    "EvalVideo",
    "EvaluateConfig",
    "Score",
    "ScoreSettings",
    "evaluate",
    "load_eval_video",
    "predict_video",
    "score",
]
