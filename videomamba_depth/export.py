"""Export the student's streaming step to ONNX, with the states as explicit graph inputs and outputs.

The exported graph is :meth:`VideoMambaDepth.step` for one stream (batch 1):

- inputs ``rgb (1, 3, H, W)`` uint8 (a prepared frame), ``K (1, 3, 3)`` float32 (its intrinsics, pixels),
  then one input per state tensor (:func:`state_layout`, names ``state.<scale>.<block>.<conv|ssm>``);
- outputs ``depth (1, H, W)`` float32 metres, then the next value of every state tensor
  (``next_state.<scale>.<block>.<conv|ssm>``, same order and shapes).

State tensors of temporal scale ``s`` (stride 16 or 32) hold one row per feature cell,
``L_s = ceil(H_p / s) * ceil(W_p / s)`` with ``H_p, W_p`` = H, W rounded up to the encoder's
``pad_multiple`` (the global scale path's state, ``state.global_scale.*``, has one row: stride null in the
metadata); per Mamba block ``conv (L_s, d_conv - 1, conv_dim)`` (float32) and ``ssm (L_s, nheads, headdim,
d_state)`` (float32). The first frame of a video gets zeros; every later frame
the previous call's ``next_state.*``. With a fixed image size (the default) H, W and every ``L_s`` are
constants of the graph; ``dynamic=True`` leaves H, W symbolic (``L_s`` follows them). The layout is also
stored in the model's metadata (``videomamba_depth.export``, JSON), which :class:`OnnxStreamingDepth` reads.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from videomamba_depth.errors import MissingDependencyError
from videomamba_depth.models import SCALES, STRIDES, StudentStates, VideoMambaDepth
from videomamba_depth.ssm import BlockState, ScaleState
from videomamba_depth.zarrio import atomic_file

# ONNX opset of the export (the dynamo exporter's default in torch 2.14; onnxruntime >= 1.20 runs it).
OPSET = 18
# Key of the model metadata entry holding :func:`export_metadata`'s JSON.
METADATA_KEY = "videomamba_depth.export"
EXPORT_FORMAT_VERSION = "1"
STATE_PARTS = ("conv", "ssm")

ONNX_HINT = (
    "ONNX export needs the `onnx` and `onnxscript` packages (and `onnxruntime` to run the result): "
    "pip install 'videomamba-depth[export]'"
)


def require_onnxruntime() -> ModuleType:
    """The ``onnxruntime`` module, or an ImportError that says how to install it."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(f"{ONNX_HINT} (import failed: {exc})") from exc
    return onnxruntime


@dataclass(frozen=True)
class StateTensor:
    """One state tensor of the exported step.

    Attributes:
        scale: temporal scale name (``s16``, ``s32``, or ``global_scale`` for the global scale path).
        block: Mamba block index within the scale.
        part: ``conv`` (the causal conv window) or ``ssm`` (the SSM state).
        shape: its shape for a given frame size, ``(L_s, ...)``.
    """

    scale: str
    block: int
    part: str
    shape: tuple[int, ...]

    @property
    def input_name(self) -> str:
        return f"state.{self.scale}.{self.block}.{self.part}"

    @property
    def output_name(self) -> str:
        return f"next_state.{self.scale}.{self.block}.{self.part}"


def state_layout(model: VideoMambaDepth, height: int, width: int) -> list[StateTensor]:
    """The state tensors of one stream of ``height x width`` frames, in graph order."""
    states = model.init_states(1, height, width)
    return [
        StateTensor(name, i, part, tuple(tensor.shape))
        for name, scale in states.items()
        for i, block in enumerate(scale.blocks)
        for part, tensor in zip(STATE_PARTS, block.tensors(), strict=True)
    ]


class StepGraph(nn.Module):
    """``model.step`` for one stream with flat tensor states: ``(rgb, K, *states) -> (depth, *next_states)``.

    The module the exporter traces; shapes as in the module docstring.
    """

    def __init__(self, model: VideoMambaDepth) -> None:
        super().__init__()
        self.model = model.eval()
        self.blocks = {name: len(mixer.temporal.blocks) for name, mixer in model.temporal.items()}

    def forward(self, rgb: Tensor, K: Tensor, *flat: Tensor) -> tuple[Tensor, ...]:
        height, width = rgb.shape[-2:]
        sizes = self.model.state_sizes(height, width)
        pairs = iter(zip(flat[0::2], flat[1::2], strict=True))  # (conv, ssm) per block, in graph order
        scales = [ScaleState(tuple(BlockState(*next(pairs)) for _ in range(n))) for n in self.blocks.values()]
        states = StudentStates(
            batch=1, names=tuple(self.blocks), sizes=tuple(sizes[name] for name in self.blocks),
            scales=tuple(scales),
        )
        depth, new = self.model.step(rgb, K, states)
        return (depth, *(t for _, scale in new.items() for t in scale.tensors()))


def export_metadata(model: VideoMambaDepth, height: int | None, width: int | None) -> dict[str, Any]:
    """What a runtime needs besides the graph: model config, padding, state layout (shapes for a fixed size,
    the ``L_s`` rule for a dynamic one)."""
    layout = state_layout(model, height or model.encoder.pad_multiple, width or model.encoder.pad_multiple)
    return {
        "format_version": EXPORT_FORMAT_VERSION,
        "image_size": None if height is None else [height, width],
        "pad_multiple": model.encoder.pad_multiple,
        "model_config": model.config.to_dict(),
        "inputs": ["rgb", "K", *(s.input_name for s in layout)],
        "outputs": ["depth", *(s.output_name for s in layout)],
        "states": [
            {"input": s.input_name, "output": s.output_name, "scale": s.scale,
             "stride": STRIDES[SCALES.index(s.scale)] if s.scale in SCALES else None,
             "block": s.block, "part": s.part,
             "shape_after_tokens": list(s.shape[1:]), "dtype": "float32"}
            for s in layout
        ],
    }


def example_inputs(model: VideoMambaDepth, height: int, width: int, seed: int = 0) -> tuple[Tensor, ...]:
    """Random frame, a plausible K and zero states: the tracing inputs."""
    gen = torch.Generator().manual_seed(seed)
    rgb = torch.randint(0, 256, (1, 3, height, width), dtype=torch.uint8, generator=gen)
    f = 0.8 * max(height, width)
    K = torch.tensor([[[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]]])
    states = [torch.zeros(s.shape) for s in state_layout(model, height, width)]
    return (rgb, K, *states)


def export_onnx(
    model: VideoMambaDepth,
    out: str | Path,
    *,
    height: int = 168,
    width: int = 224,
    dynamic: bool = False,
) -> dict[str, Any]:
    """Write the streaming step of ``model`` to ``out`` (ONNX, written atomically); returns its metadata.

    Args:
        model: the student (any encoder; the SSM runs its PyTorch ``step`` path, as in streaming inference).
        out: the ``.onnx`` file.
        height, width: the frame size the graph is traced (and, unless ``dynamic``, fixed) at: the prepared
            size, e.g. 168 x 224.
        dynamic: leave H and W symbolic (any frame size; the states' ``L_s`` follow).
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency: fail here with the hint)
    except ImportError as exc:
        raise MissingDependencyError(f"{ONNX_HINT} (import failed: {exc})") from exc
    if height < 1 or width < 1:
        raise ValueError(f"export image size must be positive, got {height} x {width}")
    graph = StepGraph(model).eval()
    args = example_inputs(model, height, width)
    layout = state_layout(model, height, width)
    dynamic_shapes = None
    if dynamic:
        auto = torch.export.Dim.AUTO
        # One entry per forward argument; the states arrive as one varargs tuple.
        dynamic_shapes = ({2: auto, 3: auto}, None, tuple({0: auto} for _ in layout))
    meta = export_metadata(model, None if dynamic else height, None if dynamic else width)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress chatter and deprecation notes
        program = torch.onnx.export(
            graph, args, input_names=meta["inputs"], output_names=meta["outputs"], opset_version=OPSET,
            dynamo=True, dynamic_shapes=dynamic_shapes, verbose=False,
        )
    proto = program.model_proto
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta, sort_keys=True)
    with atomic_file(out) as tmp:
        onnx.save_model(proto, str(tmp))
    return meta


def read_export_metadata(path: str | Path, session: Any = None) -> dict[str, Any]:
    """The :func:`export_metadata` JSON of an exported file (from an onnxruntime session if given)."""
    if session is not None:
        props = session.get_modelmeta().custom_metadata_map
    else:
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    if METADATA_KEY not in props:
        raise ValueError(f"{path}: not a videomamba-depth step export (no {METADATA_KEY!r} metadata)")
    meta = json.loads(props[METADATA_KEY])
    if meta.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ValueError(
            f"{path}: export format version {meta.get('format_version')!r}, this code reads "
            f"{EXPORT_FORMAT_VERSION}"
        )
    return meta


def zero_states(meta: dict[str, Any], height: int, width: int) -> dict[str, np.ndarray]:
    """Initial (zero) states of a stream of ``height x width`` frames, by input name."""
    m = meta["pad_multiple"]
    hp, wp = (height + m - 1) // m * m, (width + m - 1) // m * m
    out = {}
    for s in meta["states"]:
        stride = s["stride"]  # None: one row for the whole frame (the global scale path)
        tokens = 1 if stride is None else ((hp + stride - 1) // stride) * ((wp + stride - 1) // stride)
        out[s["input"]] = np.zeros((tokens, *s["shape_after_tokens"]), dtype=np.float32)
    return out


class OnnxStreamingDepth:
    """Run an exported step with onnxruntime on the CPU, carrying the states: ``(rgb, K) -> depth``.

    Args:
        path: the ``.onnx`` file written by :func:`export_onnx`.
        threads: onnxruntime intra-op threads (0: its default).
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        ort = require_onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # No busy-waiting of idle worker threads between frames: they would take the cores from the decoding
        # and writing that run between two steps.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.meta = read_export_metadata(path, self.session)
        self.path = Path(path)
        self.states: dict[str, np.ndarray] | None = None

    def reset(self) -> None:
        """Start a new stream (zero states)."""
        self.states = None

    def __call__(self, rgb: np.ndarray, K: np.ndarray) -> np.ndarray:
        """Depth ``(H, W)`` float32 metres of the next frame ``rgb (H, W, 3)`` uint8 with intrinsics ``K``."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 frame, got {rgb.shape} {rgb.dtype}")
        height, width = rgb.shape[:2]
        fixed = self.meta["image_size"]
        if fixed is not None and [height, width] != fixed:
            raise ValueError(f"{self.path}: exported for {fixed[0]}x{fixed[1]} frames, got {height}x{width}")
        if self.states is None:
            self.states = zero_states(self.meta, height, width)
        feeds = {
            "rgb": np.ascontiguousarray(rgb.transpose(2, 0, 1))[None],
            "K": np.asarray(K, dtype=np.float32).reshape(1, 3, 3),
            **self.states,
        }
        depth, *new = self.session.run(self.meta["outputs"], feeds)
        self.states = {s["input"]: t for s, t in zip(self.meta["states"], new, strict=True)}
        return depth[0]
