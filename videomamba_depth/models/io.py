"""Saving and loading trained students as self-describing ``.safetensors`` files.

The file holds the weights and, in the safetensors metadata, the ``ModelConfig`` as JSON, so
``load_student(path)`` rebuilds the exact architecture without any other file; optionally also the
preprocessing of its training frames (``load_preprocessing``), so ``infer`` prepares videos the same way.
(Resumable training state — optimizer, scheduler, step, RNG — is the training loop's checkpoint, not this
file.) :func:`load_adding_camera_encoder` starts a ``camera: tokens`` student from a ``camera: rays`` one's
weights.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from videomamba_depth.errors import InputError
from videomamba_depth.models.checkpoint import CheckpointReport
from videomamba_depth.models.student import (
    CAMERA_ENCODER_PREFIX,
    RAY_FILM_PREFIX,
    ModelConfig,
    VideoMambaDepth,
    build_student,
)
from videomamba_depth.zarrio import atomic_file

FORMAT = "videomamba_depth.student"
FORMAT_VERSION = "2"
# The safetensors metadata key holding ``{"format", "format_version", "model_config"}`` as sorted JSON. One
# key, because safetensors writes its metadata map in a random order per process: with several keys the
# same weights gave different bytes from run to run.
METADATA_KEY = "videomamba_depth"
# Tensor names listed per kind of mismatch in an error message.
SHOWN = 3
# safetensors header dtype names -> torch dtypes (the ones a student's state dict can hold).
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
# Preprocessing recorded with a student (optional in format version 2: older files lack it).
PREPROCESSING_KEYS = ("long_edge", "pad_multiple")


def unwrap_student(model: nn.Module) -> VideoMambaDepth:
    """The ``VideoMambaDepth`` inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers.

    Saving the unwrapped model is what strips the wrappers' ``module.`` / ``_orig_mod.`` key prefixes.
    """
    while not isinstance(model, VideoMambaDepth):
        inner = model._modules.get("module") or model._modules.get("_orig_mod")
        if inner is None:
            raise TypeError(
                f"expected a VideoMambaDepth (possibly DDP- or compile-wrapped), got {type(model)}"
            )
        model = inner
    return model


def save_student(path: str | Path, model: nn.Module, preprocessing: Mapping[str, Any] | None = None) -> None:
    """Write the model's weights and config to ``path`` (``.safetensors``), atomically (temporary name, then
    rename: a kill mid-write leaves the previous file).

    ``preprocessing``: how the training frames were prepared, ``{"long_edge", "pad_multiple"}`` (the
    ``prepare`` params), stored with the model's ``canonical_focal`` so that ``infer`` prepares videos the
    same way (:func:`load_preprocessing`).
    """
    student = unwrap_student(model)
    tensors = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": student.config.to_dict()}
    if preprocessing is not None:
        header["preprocessing"] = {**_checked_preprocessing(preprocessing, path),
                                   "canonical_focal": student.config.canonical_focal}
    metadata = {METADATA_KEY: json.dumps(header, sort_keys=True)}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


class CheckpointError(InputError):
    """A student file that is unreadable, of another format, or whose tensors do not match its config."""


def _checked_preprocessing(values: Mapping[str, Any], path: str | Path) -> dict[str, int]:
    if set(values) - {"canonical_focal"} != set(PREPROCESSING_KEYS) or not all(
        isinstance(values[k], int) and not isinstance(values[k], bool) and values[k] > 0
        for k in PREPROCESSING_KEYS
    ):
        raise CheckpointError(
            f"{path}: preprocessing must be positive integers {list(PREPROCESSING_KEYS)}, got {dict(values)}"
        )
    return {k: values[k] for k in PREPROCESSING_KEYS}


def load_preprocessing(path: str | Path) -> dict[str, Any] | None:
    """The ``{"long_edge", "pad_multiple", "canonical_focal"}`` a student was trained with, or None when the
    file does not record it (saved without ``preprocessing``). Call after :func:`load_student` succeeded."""
    with safe_open(str(path), framework="pt", device="cpu") as f:
        header = json.loads((f.metadata() or {})[METADATA_KEY])
    if "preprocessing" not in header:
        return None
    values = header["preprocessing"]
    if not isinstance(values, dict):
        raise CheckpointError(f"{path}: preprocessing metadata is not a mapping: {values!r}")
    return {**_checked_preprocessing(values, path), "canonical_focal": values.get("canonical_focal")}


def load_student(
    path: str | Path, map_location: torch.device | str = "cpu", overrides: Mapping[str, Any] | None = None
) -> VideoMambaDepth:
    """Rebuild a saved student (in eval mode) on ``map_location``.

    ``overrides`` replaces config fields that do not change the weights, e.g. ``{"ssm_backend": "torch"}`` to
    run a model trained with the CUDA kernels on a CPU. No pretrained weights are fetched: the file has them.

    Nothing is allocated before the file is checked: the config (bounded by ``ModelConfig``) is built on the
    ``meta`` device and its tensor names, shapes and dtypes are compared with the file's header (read without
    its data). So the model built is never larger than the weights the file really holds, and a file whose
    metadata does not match its tensors fails with one :class:`CheckpointError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: student model file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            config = _student_config(path, f.metadata(), overrides)
            slices = {key: f.get_slice(key) for key in f.keys()}  # header entries: no data is read
            found = {key: (tuple(t.get_shape()), t.get_dtype()) for key, t in slices.items()}
            with torch.device("meta"):  # shapes only: no memory, whatever sizes the header declares
                expected = build_student(config, pretrained=False).state_dict()
            problem = state_mismatch(found, expected)
            if problem:
                raise CheckpointError(f"{path}: tensors do not match the file's model_config: {problem}")
            state = {key: f.get_tensor(key) for key in f.keys()}
    except SafetensorError as exc:
        raise CheckpointError(
            f"{path}: not a readable safetensors file, corrupt or truncated ({exc})"
        ) from exc
    model = build_student(config, pretrained=False)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()


def _student_config(
    path: Path, metadata: Mapping[str, str] | None, overrides: Mapping[str, Any] | None
) -> ModelConfig:
    """The ``ModelConfig`` stored in a student file's metadata, with ``overrides`` applied."""
    try:
        header = json.loads((metadata or {})[METADATA_KEY])
    except (KeyError, ValueError):
        header = {}
    if not isinstance(header, dict) or header.get("format") != FORMAT or "model_config" not in header:
        raise CheckpointError(
            f"{path}: not a VideoMambaDepth student file (no {METADATA_KEY!r} metadata with format "
            f"{FORMAT!r}; saved by save_student?)"
        )
    if header.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: student file format version {header.get('format_version')!r}, this code "
            f"reads version {FORMAT_VERSION}"
        )
    if not isinstance(header["model_config"], dict):
        raise CheckpointError(f"{path}: model_config must be a mapping, got {header['model_config']!r}")
    values = {**header["model_config"], **(overrides or {})}
    return ModelConfig.from_dict(values, where=f"{path} model_config")


def state_mismatch(
    found: Mapping[str, tuple[tuple[int, ...], torch.dtype | str]], expected: Mapping[str, Tensor]
) -> str | None:
    """What differs between tensors ``found`` (name -> shape and dtype, a torch dtype or a safetensors name
    such as ``F32``) and a model's ``expected`` state dict; None when names, shapes and dtypes all agree."""
    differ = []
    for key, tensor in expected.items():
        if key in found:
            shape, dtype = found[key]
            torch_dtype = SAFETENSORS_DTYPES.get(dtype) if isinstance(dtype, str) else dtype
            if tuple(shape) != tuple(tensor.shape) or torch_dtype != tensor.dtype:
                differ.append(f"{key} {list(shape)} {dtype} vs {list(tensor.shape)} {tensor.dtype}")
    kinds = {
        "missing": [k for k in expected if k not in found],
        "unexpected": [k for k in found if k not in expected],
        "of another shape or dtype (file vs config)": differ,
    }
    problems = [
        f"{len(items)} {title}: {', '.join(items[:SHOWN])}{', ...' if len(items) > SHOWN else ''}"
        for title, items in kinds.items()
        if items
    ]
    return "; ".join(problems) or None


def load_adding_camera_encoder(
    model: VideoMambaDepth, state: Mapping[str, Tensor], source: str
) -> CheckpointReport:
    """Load the state dict of a ``camera: rays`` student (no camera encoder) into a ``camera: tokens`` one.

    The Depth Anything 3 recipe: a depth model without camera input gains a camera encoder, initialised
    fresh, and is fine-tuned. Strict except for exactly the camera conditioning: every camera-encoder tensor
    (``camera.*``) must be missing from ``state`` and keeps its fresh initialisation, every ray-FiLM tensor
    (``rays.*``) is unused; any other missing, unexpected or mis-shaped tensor raises a
    :class:`CheckpointError` (loading nothing). Both lists are printed to stderr, every name.

    Returns:
        The report (``missing``: the camera-encoder keys, ``unexpected``: the ray-FiLM keys).
    """
    if model.config.camera != "tokens":
        raise ValueError(f"expected a camera: tokens student, got camera: {model.config.camera}")
    target = model.state_dict()
    report = CheckpointReport(
        path=source,
        loaded=tuple(k for k in state if k in target and state[k].shape == target[k].shape),
        missing=tuple(k for k in target if k not in state),
        unexpected=tuple(k for k in state if k not in target),
        mismatched=tuple(
            (k, tuple(state[k].shape), tuple(target[k].shape))
            for k in state
            if k in target and state[k].shape != target[k].shape
        ),
        remapped=0,
    )
    camera = tuple(k for k in target if k.startswith(CAMERA_ENCODER_PREFIX))
    rays = tuple(k for k in state if k.startswith(RAY_FILM_PREFIX))
    if report.missing != camera or report.unexpected != rays or report.mismatched:
        problems = {
            "missing": [k for k in report.missing if k not in camera],
            "unexpected": [k for k in report.unexpected if k not in rays],
            "of another shape": [k for k, _, _ in report.mismatched],
            "camera-encoder tensors present": [k for k in camera if k in state],
        }
        raise CheckpointError(
            f"{source}: only the camera encoder may be missing and only ray FiLMs unexpected when a "
            "camera: tokens student starts from a camera: rays one; also "
            + "; ".join(f"{title}: {', '.join(keys)}" for title, keys in problems.items() if keys)
        )
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    print(
        f"{source}: saved without a camera encoder (camera: rays); the {len(camera)} camera-encoder tensors "
        f"keep their fresh initialisation: {', '.join(camera)}; the {len(rays)} ray-FiLM tensors are not "
        f"used: {', '.join(rays)}",
        file=sys.stderr,
    )
    return report
