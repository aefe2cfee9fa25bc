"""Streaming inference with the trained student.

- :mod:`.predictor`: ``StreamingDepth``, the one streaming predictor (used by ``evaluate`` and ``infer``),
  and ``load_checkpoint``;
- :mod:`.anchoring`: keyframe anchoring (``AnchoringConfig``, params ``evaluate.anchoring.*``);
- :mod:`.infer`: ``infer_video``, the ``videomamba-depth infer`` command (video decoding, intrinsics,
  preview, PLY); imported from there, so the evaluate stage does not depend on the video code;
- :mod:`.pipeline`: the bounded background threads ``infer`` overlaps decoding and writing with.
"""

from videomamba_depth.inference.anchoring import AnchoringConfig, Keyframe, KeyframeAnchor, describe
from videomamba_depth.inference.predictor import StreamingDepth, load_checkpoint

__all__ = [
    "AnchoringConfig",
    "Keyframe",
    "KeyframeAnchor",
    "StreamingDepth",
    "describe",
    "load_checkpoint",
]
