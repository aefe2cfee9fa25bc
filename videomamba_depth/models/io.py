"""Saving and loading trained students as self-describing ``.safetensors`` files.

The file holds the weights and, in the safetensors metadata, the ``ModelConfig`` as JSON, so
``load_student(path)`` rebuilds the exact architecture without any other file; optionally also the
preprocessing of its training frames (``load_preprocessing``), so ``infer`` prepares videos the same way.
(Resumable training state — optimizer, scheduler, step, RNG — is the training loop's checkpoint, not this
file.)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from videomamba_depth.models.student import ModelConfig, VideoMambaDepth, build_student
from videomamba_depth.zarrio import atomic_file

FORMAT = "videomamba_depth.student"
FORMAT_VERSION = "2"
# The safetensors metadata key holding ``{"format", "format_version", "model_config"}`` as sorted JSON. One
# key, because safetensors writes its metadata map in a random order per process: with several keys the
# same weights gave different bytes from run to run.
METADATA_KEY = "videomamba_depth"
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


def _checked_preprocessing(values: Mapping[str, Any], path: str | Path) -> dict[str, int]:
    if set(values) - {"canonical_focal"} != set(PREPROCESSING_KEYS) or not all(
        isinstance(values[k], int) and not isinstance(values[k], bool) and values[k] > 0
        for k in PREPROCESSING_KEYS
    ):
        raise ValueError(f"{path}: preprocessing must be positive integers {list(PREPROCESSING_KEYS)}, got "
                         f"{dict(values)}")
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
        raise ValueError(f"{path}: preprocessing metadata is not a mapping: {values!r}")
    return {**_checked_preprocessing(values, path), "canonical_focal": values.get("canonical_focal")}


def load_student(
    path: str | Path, map_location: torch.device | str = "cpu", overrides: Mapping[str, Any] | None = None
) -> VideoMambaDepth:
    """Rebuild a saved student (in eval mode) on ``map_location``.

    ``overrides`` replaces config fields that do not change the weights, e.g. ``{"ssm_backend": "torch"}`` to
    run a model trained with the CUDA kernels on a CPU. No pretrained weights are fetched: the file has them.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: student model file not found")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        try:
            header = json.loads((f.metadata() or {})[METADATA_KEY])
        except (KeyError, ValueError):
            header = {}
        if header.get("format") != FORMAT or "model_config" not in header:
            raise ValueError(
                f"{path}: not a VideoMambaDepth student file (no {METADATA_KEY!r} metadata with format "
                f"{FORMAT!r}; saved by save_student?)"
            )
        if header.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: student file format version {header.get('format_version')!r}, this code "
                f"reads version {FORMAT_VERSION}"
            )
        state = {key: f.get_tensor(key) for key in f.keys()}
    values = {**header["model_config"], **(overrides or {})}
    config = ModelConfig.from_dict(values, where=f"{path} model_config")
    model = build_student(config, pretrained=False)
    model.load_state_dict(state, strict=True)
    return model.to(map_location).eval()
