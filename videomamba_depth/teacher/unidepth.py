"""UniDepthV2 (Piccinelli et al., 2025; github.com/lpiccinelli-eth/UniDepth) as a teacher.

``unidepth`` is not on PyPI; it is imported only when this backend is used (:func:`_import_unidepth`).
Facts about ``UniDepthV2.infer(rgb, camera)`` this wrapper relies on (read from its source):

- ``rgb`` is ``(B, 3, H, W)`` with values 0-255; ``infer`` normalises, pads to its aspect-ratio range, resizes
  to an image area picked by the ``resolution_level`` attribute, and resamples outputs back to ``(H, W)``;
- a K tensor passed as ``camera`` becomes a ``Pinhole`` camera whose crop/resize modify that tensor in place,
  and a batched camera fails, so with K we call it once per frame with a fresh copy of that frame's K;
- the returned ``intrinsics`` are always the model's own prediction, even when K is given;
- ``depth`` and ``confidence`` are ``(B, 1, H, W)``; ``confidence`` is ``exp(e)`` where ``e`` is the
  model's estimate of its own (scale-aligned) error, meant as a ranking within one image, not an absolute
  uncertainty. We map it to [0, 1] per frame as ``exp(-e / median(e))`` (:func:`error_to_confidence`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from videomamba_depth.devices import resolve_device
from videomamba_depth.errors import MissingDependencyError
from videomamba_depth.provenance import file_sha256
from videomamba_depth.teacher.base import Teacher, TeacherConfig, TeacherOutput, VideoContext

INSTALL_HINT = (
    "teacher.backend=unidepth needs the `unidepth` package (UniDepthV2), which is not on PyPI. Install it "
    "into this environment with\n"
    '    pip install "unidepth @ git+https://github.com/lpiccinelli-eth/UniDepth"\n'
    "(it needs torchvision, timm and huggingface_hub matching your torch; see its README). Weights are "
    "downloaded from the Hugging Face hub by name (teacher.weights: lpiccinelli/unidepth-v2-vits14). Without "
    "internet, download them elsewhere and set teacher.weights to the local folder holding config.json and "
    "model.safetensors, and export HF_HUB_OFFLINE=1. Or run the embedded default, teacher.backend=synthetic."
)


def _import_unidepth() -> type:
    """The ``UniDepthV2`` class, or an ImportError that says how to install it and use local weights."""
    try:
        from unidepth.models import UniDepthV2
    except ImportError as exc:
        raise MissingDependencyError(f"{INSTALL_HINT}\n(import failed: {exc})") from exc
    return UniDepthV2


def weights_id(weights: str) -> str:
    """How the weights are recorded: the hub name, or ``local:<folder name>:<sha256 prefix of the weights>``.

    Local folders are identified by content, never by absolute path (outputs must not depend on the host).
    """
    folder = Path(weights)
    if not folder.is_dir():
        return weights
    files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin"))
    digest = file_sha256(files[0])[:16] if files else "no-weights-file"
    return f"local:{folder.name}:{digest}"


def error_to_confidence(raw: np.ndarray) -> np.ndarray:
    """UniDepthV2's ``confidence`` ``(B, H, W)`` (``exp`` of a predicted error) -> confidence in [0, 1].

    ``e = max(log(raw), 0)``; confidence ``exp(-e / median_frame(e))``: 1 for no predicted error, 1/e at the
    frame's median error. Per-frame normalisation because the authors define it as a within-image ranking.
    Non-finite input stays non-finite (the runner masks it).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        err = np.maximum(np.log(raw.astype(np.float64)), 0.0)
    median = np.array([np.median(e[np.isfinite(e)]) if np.isfinite(e).any() else 1.0 for e in err])
    return np.exp(-err / np.maximum(median, 1e-6)[:, None, None]).astype(np.float32)


class UniDepthTeacher(Teacher):
    """UniDepthV2 metric depth, run on the video's image window; K given per frame or predicted."""

    name = "unidepth"

    def __init__(self, model: Any, weights: str, resolution_level: int, device: str) -> None:
        self.model = model
        self.weights = weights
        self.resolution_level = resolution_level
        self.device = device

    @classmethod
    def from_config(cls, cfg: TeacherConfig, video: VideoContext) -> UniDepthTeacher:
        return cls.load(cfg, "teacher.device")

    @classmethod
    def load(cls, cfg: TeacherConfig, device_param: str) -> UniDepthTeacher:
        """UniDepthV2 with ``cfg``'s ``weights`` and ``resolution_level`` on ``cfg.device`` (named
        ``device_param`` in errors); it needs no video, so image pre-training uses it too."""
        UniDepthV2 = _import_unidepth()
        device = str(resolve_device(cfg.device, device_param))
        model = UniDepthV2.from_pretrained(cfg.weights)
        # infer() reads these attributes: the processed image area is the resolution_level-th tenth of the
        # training range (0.2-0.6 MP for the ViT models); outputs are resampled back bilinearly.
        model.resolution_level = cfg.resolution_level
        model.interpolation_mode = "bilinear"
        model = model.to(device).eval()
        return cls(model, weights_id(cfg.weights), cfg.resolution_level, device)

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "weights": self.weights, "resolution_level": self.resolution_level,
                "model": "UniDepthV2", "device": self.device}

    def predict(self, rgb: np.ndarray, K: np.ndarray | None, frames: np.ndarray) -> TeacherOutput:
        import torch

        # (B, H, W, 3) uint8 -> (B, 3, H, W), still 0-255: infer() normalises with ImageNet statistics itself.
        images = torch.from_numpy(np.ascontiguousarray(rgb)).permute(0, 3, 1, 2)
        if K is None:
            outs = [self.model.infer(images)]  # no camera: one batched call is supported
        else:
            # One call per frame with a fresh (1, 3, 3) tensor: infer() crops/resizes it in place and a
            # batched camera fails.
            outs = [self.model.infer(images[i : i + 1], torch.tensor(K[i : i + 1], dtype=torch.float32))
                    for i in range(len(images))]
        B, H, W = rgb.shape[:3]
        depth = _to_numpy(outs, "depth", (B, 1, H, W))[:, 0]
        confidence = error_to_confidence(_to_numpy(outs, "confidence", (B, 1, H, W))[:, 0])
        K_pred = _to_numpy(outs, "intrinsics", (B, 3, 3)).astype(np.float64)
        K_used = K_pred if K is None else np.asarray(K, dtype=np.float64)
        return TeacherOutput(depth=depth, confidence=confidence, K_used=K_used, K_pred=K_pred)


def _to_numpy(outs: list[dict], key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Concatenate ``key`` of the infer() outputs into a float32 array of ``shape`` (fp16 on CUDA -> fp32)."""
    import torch

    value = torch.cat([o[key] for o in outs]).detach().float().cpu().numpy()
    if value.shape != shape:
        raise ValueError(f"UniDepthV2 returned {key} of shape {value.shape}, expected {shape}")
    return value
