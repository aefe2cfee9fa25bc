"""Optical flow backends: OpenCV DIS (no weights, the default) and RAFT through ptlflow (optional extra).

A backend maps two batches of RGB frames to the flow from the first to the second:
``(N, H, W, 3) uint8, (N, H, W, 3) uint8 -> (N, H, W, 2) float32`` in pixels (du, dv), where pixel (u, v) of
the first frame moves to (u + du, v + dv) in the second. The backend is chosen by name (``flow.backend``),
never by what happens to be installed, and :meth:`FlowBackend.describe` is recorded in the store attributes.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from einops import rearrange

from videomamba_depth.errors import MissingDependencyError
from videomamba_depth.provenance import file_sha256

DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
RAFT_MODELS = ("raft", "raft_small")


class FlowBackend:
    """Base class: dense flow from ``first[i]`` to ``second[i]`` for a batch of frame pairs."""

    name: ClassVar[str]

    def flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """``(N, H, W, 3) uint8`` RGB pairs -> ``(N, H, W, 2) float32`` flow in pixels, first -> second."""
        first, second = np.asarray(first), np.asarray(second)
        if first.shape != second.shape or first.ndim != 4 or first.shape[-1] != 3 or first.dtype != np.uint8:
            raise ValueError(
                f"flow backend '{self.name}': expected two (N, H, W, 3) uint8 batches of equal shape, got "
                f"{first.shape} {first.dtype} and {second.shape} {second.dtype}"
            )
        if len(first) == 0:
            return np.zeros((*first.shape[:3], 2), dtype=np.float32)
        return self._flow(first, second)

    def _flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Backend name, library version and settings, for the store's provenance."""
        raise NotImplementedError


class DISBackend(FlowBackend):
    """OpenCV's Dense Inverse Search flow (Kroeger et al., ECCV 2016) on grayscale frames. CPU, no weights."""

    name = "dis"

    def __init__(
        self,
        preset: str = "medium",
        finest_scale: int | None = 0,
        patch_size: int | None = None,
        patch_stride: int | None = None,
        refine_iters: int | None = None,
    ) -> None:
        """Settings left None keep the preset's own.

        ``finest_scale``: pyramid level where DIS stops refining (0 = full resolution; presets: 2 for
        ultrafast and fast, 1 for medium, tuned for larger frames). ``patch_size`` / ``patch_stride``: side
        and spacing of the matched patches, px (presets: 8 / 4, 8 / 4, 8 / 3); a patch straddling a motion
        boundary drags its flow across it, so smaller patches leave thinner halos around moving objects.
        ``refine_iters``: variational refinement iterations per pyramid level (presets: 0, 5, 5).
        """
        if preset not in DIS_PRESETS:
            raise ValueError(f"unknown DIS preset {preset!r}; choose one of {sorted(DIS_PRESETS)}")
        if finest_scale is not None and finest_scale < 0:
            raise ValueError(f"DIS finest_scale must be >= 0 or None, got {finest_scale}")
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])
        size = self._dis.getPatchSize() if patch_size is None else patch_size
        stride = self._dis.getPatchStride() if patch_stride is None else patch_stride
        if not 1 <= stride <= size:
            raise ValueError(f"DIS needs 1 <= patch_stride <= patch_size, got stride {stride}, size {size}")
        if refine_iters is not None and refine_iters < 0:
            raise ValueError(f"DIS refine_iters must be >= 0 or None, got {refine_iters}")
        if finest_scale is not None:
            self._dis.setFinestScale(finest_scale)
        self._dis.setPatchSize(size)
        self._dis.setPatchStride(stride)
        if refine_iters is not None:
            self._dis.setVariationalRefinementIterations(refine_iters)
        self.preset, self.finest_scale = preset, self._dis.getFinestScale()
        self.patch_size, self.patch_stride = self._dis.getPatchSize(), self._dis.getPatchStride()
        self.refine_iters = self._dis.getVariationalRefinementIterations()

    def _flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        out = np.empty((*first.shape[:3], 2), dtype=np.float32)
        for i, (a, b) in enumerate(zip(first, second, strict=True)):
            ga = cv2.cvtColor(np.ascontiguousarray(a), cv2.COLOR_RGB2GRAY)
            gb = cv2.cvtColor(np.ascontiguousarray(b), cv2.COLOR_RGB2GRAY)
            out[i] = self._dis.calc(ga, gb, None)
        return out

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "library": "opencv", "version": cv2.__version__, "preset": self.preset,
                "finest_scale": self.finest_scale, "patch_size": self.patch_size,
                "patch_stride": self.patch_stride, "refine_iters": self.refine_iters}


def import_ptlflow() -> tuple[ModuleType, type]:
    """Import ptlflow for the RAFT backend; a loud, actionable ImportError when it cannot be imported.

    Returns the ``ptlflow`` module and its ``IOAdapter`` class. ptlflow imports torchvision, and a torchvision
    built for another torch (e.g. the PyPI wheel next to a CPU-only torch) fails at import with a
    RuntimeError or OSError rather than an ImportError, so those are caught and explained too.
    """
    try:
        import ptlflow
        from ptlflow.utils.io_adapter import IOAdapter
    except (ImportError, RuntimeError, OSError) as exc:
        raise MissingDependencyError(
            "flow.backend=raft needs ptlflow, which could not be imported "
            f"({type(exc).__name__}: {exc}). Install it with `pip install 'videomamba-depth[raft]'` "
            "together with the torchvision build that matches your torch (same CUDA or CPU variant, from the "
            "index you installed torch from). Named checkpoints (flow.raft_ckpt: things) download on first "
            "use; offline, set flow.raft_ckpt to a local .ckpt path. Or use flow.backend=dis (no weights)."
        ) from exc
    return ptlflow, IOAdapter


class RAFTBackend(FlowBackend):
    """RAFT (Teed & Deng, ECCV 2020) through ptlflow's ``get_model`` registry.

    ``ckpt`` is a ptlflow checkpoint name (``things``, ``sintel``, ... downloaded and cached by torch.hub) or
    a local checkpoint path (works offline); ``None`` keeps ptlflow's random initialisation, which is only
    meaningful for tests and speed benchmarks and is recorded as such.
    """

    name = "raft"

    def __init__(
        self,
        model: str = "raft_small",
        ckpt: str | None = "things",
        iters: int = 12,
        batch_pairs: int = 4,
        device: str = "cpu",
    ) -> None:
        if model not in RAFT_MODELS:
            raise ValueError(f"unknown RAFT model {model!r}; choose one of {list(RAFT_MODELS)}")
        if iters < 1 or batch_pairs < 1:
            raise ValueError(f"RAFT iters and batch_pairs must be >= 1, got {iters}, {batch_pairs}")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("flow.raft_device=cuda but torch.cuda.is_available() is False")
        ptlflow, self._io_adapter_cls = import_ptlflow()
        self.model_name, self.ckpt, self.iters, self.batch_pairs = model, ckpt, iters, batch_pairs
        self.device = torch.device(device)
        self.ptlflow_version = metadata.version("ptlflow")
        self._model = ptlflow.get_model(model, ckpt_path=ckpt)
        # ptlflow's RAFT reads the number of recurrent refinement steps from this attribute in forward().
        self._model.iters = iters
        self._model.eval().to(self.device)

    @property
    def min_side(self) -> int:
        """Smallest frame side RAFT handles, px: its correlation pyramid halves the stride-8 feature map
        ``corr_levels - 1`` times, and its bilinear lookup divides by (size - 1) of every level, so the
        coarsest level needs at least 2 cells (a 1-cell level gives NaN flow everywhere)."""
        return 8 * 2 ** (getattr(self._model, "corr_levels", 4) - 1) * 2

    @torch.inference_mode()
    def _flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        n, h, w = first.shape[:3]
        # Smaller frames are padded bottom/right by edge replication (pixels keep their coordinates) and the
        # flow is cropped back.
        ph, pw = max(h, self.min_side), max(w, self.min_side)
        if (ph, pw) != (h, w):
            widths = ((0, 0), (0, ph - h), (0, pw - w), (0, 0))
            first, second = np.pad(first, widths, mode="edge"), np.pad(second, widths, mode="edge")
        adapter = self._io_adapter_cls(
            output_stride=self._model.output_stride, input_size=(ph, pw), cuda=self.device.type == "cuda"
        )
        out = np.empty((n, h, w, 2), dtype=np.float32)
        for start in range(0, n, self.batch_pairs):
            stop = min(n, start + self.batch_pairs)
            # ptlflow models take BGR frames (as read by cv2.imread) and flip them to RGB themselves; each
            # prepare_inputs call gives (1, 2, 3, H, W) float in [0, 1], stacked here into a batch of pairs.
            images = torch.cat(
                [
                    adapter.prepare_inputs(images=[first[i][..., ::-1], second[i][..., ::-1]])["images"]
                    for i in range(start, stop)
                ]
            )
            preds = adapter.unscale(self._model({"images": images}))
            # "flows": (B, 1, 2, H, W), the model has already removed its own stride padding.
            flows = rearrange(preds["flows"][:, 0].float().cpu().numpy(), "b c h w -> b h w c")
            out[start:stop] = flows[:, :h, :w]
        return out

    def describe(self) -> dict[str, Any]:
        if self.ckpt is None:
            weights: dict[str, Any] = {"kind": "random", "note": "untrained ptlflow initialisation"}
        elif Path(self.ckpt).is_file():
            weights = {"kind": "file", "name": Path(self.ckpt).name, "sha256": file_sha256(self.ckpt)}
        else:
            weights = {"kind": "named", "name": self.ckpt}
        return {
            "name": self.name,
            "library": "ptlflow",
            "version": self.ptlflow_version,
            "model": self.model_name,
            "weights": weights,
            "iters": self.iters,
            "device": self.device.type,
        }
