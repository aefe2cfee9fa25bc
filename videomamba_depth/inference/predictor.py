"""``StreamingDepth``: the one streaming predictor used by both ``evaluate`` and ``infer``.

It wraps a trained student and feeds it one prepared frame at a time through ``VideoMambaDepth.step``,
carrying the SSM states between calls, so memory and cost per frame do not depend on the video length.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from videomamba_depth.inference.anchoring import AnchoringConfig, KeyframeAnchor
from videomamba_depth.models import StudentStates, VideoMambaDepth, load_student
from videomamba_depth.models.io import load_preprocessing
from videomamba_depth.provenance import file_sha256


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[VideoMambaDepth, dict[str, Any]]:
    """Load a student saved by ``save_student``; return it (eval mode, on ``device``) and its provenance.

    Provenance: ``{"name": file name, "sha256": ..., "model_config": ..., "backends": ...,
    "preprocessing": {"long_edge", "pad_multiple", "canonical_focal"} or None when the file does not record
    it}`` (no absolute path). A missing file raises a ``FileNotFoundError``; a truncated or foreign one, or
    one whose tensors do not match its config, a ``models.io.CheckpointError``; both name it.
    """
    path = Path(path)
    # The CUDA scan kernels are an inference-speed choice, not part of the weights: CPU runs use torch.
    overrides = None if torch.device(device).type == "cuda" else {"ssm_backend": "torch"}
    model = load_student(path, map_location=device, overrides=overrides)
    info = {
        "name": path.name,
        "sha256": file_sha256(path),
        "model_config": model.config.to_dict(),
        "backends": model.backends,
        "preprocessing": load_preprocessing(path),
    }
    return model, info


class StreamingDepth:
    """Metric depth of a video, one frame per call, in constant memory.

    Args:
        model: the student (put in eval mode here).
        reset_every_frame: the per-frame ablation: states are dropped before every frame, so the temporal
            blocks see a one-frame video each time (what the model does without its memory).
        anchoring: keyframe anchoring (:mod:`.anchoring`); None or ``enabled: false`` for none.

    Call :meth:`reset` between unrelated clips. Runs in fp32 under ``torch.inference_mode``.
    """

    def __init__(
        self,
        model: VideoMambaDepth,
        *,
        reset_every_frame: bool = False,
        anchoring: AnchoringConfig | None = None,
    ) -> None:
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.reset_every_frame = reset_every_frame
        self.anchor = KeyframeAnchor(anchoring) if anchoring is not None and anchoring.enabled else None
        self.states: StudentStates | None = None
        self.frames = 0

    def reset(self) -> None:
        """Start a new stream: zero states, no keyframes."""
        self.states = None
        self.frames = 0
        if self.anchor is not None:
            self.anchor.reset()

    @torch.inference_mode()
    def __call__(self, rgb: np.ndarray, K: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """Depth ``(H, W)`` float32 metres of the next frame.

        Args:
            rgb: ``(H, W, 3)`` uint8 prepared frame (resized and padded as by the ``prepare`` stage).
            K: ``(3, 3)`` intrinsics of that frame, pixels.
            valid: ``(H, W)`` bool image pixels (not padding), used by anchoring only; None: all.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 frame, got {rgb.shape} {rgb.dtype}")
        if self.reset_every_frame:
            self.states = None
        if self.anchor is not None:
            keyframe = self.anchor.before_step(rgb, valid)
            if keyframe is not None:
                self.states = keyframe.states.clone()
        frame = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device).permute(2, 0, 1)[None]
        K_t = torch.as_tensor(np.asarray(K, dtype=np.float32), device=self.device)[None]
        depth, self.states = self.model.step(frame, K_t, self.states)
        out = depth[0].float().cpu().numpy()
        if self.anchor is not None:
            out = self.anchor.after_step(out, self.states, valid)
        self.frames += 1
        return out

    def state_nbytes(self) -> int:
        """Bytes held by the stream's memory: SSM states and keyframe snapshots (0 before the first frame)."""
        held = 0 if self.states is None else self.states.nbytes
        return held + (0 if self.anchor is None else self.anchor.nbytes)
