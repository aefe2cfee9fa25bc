"""Resumable training state: everything needed to continue a killed run exactly where it stopped.

One file, ``state.pt``, written atomically (temporary name, then rename) so a kill mid-write leaves the
previous state intact. It holds plain tensors and Python values only and is read with
``torch.load(weights_only=True)``: loading a state never executes pickled code. That is why the RNG states
are converted (:func:`rng_state`): numpy's generator state becomes a tensor plus plain numbers.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from videomamba_depth.models.io import state_mismatch

STATE_FILE = "state.pt"
STATE_VERSION = 2


def save_state(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    tmp = path.with_name(f"{STATE_FILE}.tmp-{os.getpid()}")
    torch.save({"version": STATE_VERSION, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_state(
    directory: Path, run_identity: dict[str, Any], model: Mapping[str, torch.Tensor]
) -> tuple[dict[str, Any] | None, str]:
    """The saved state if it belongs to a run with ``run_identity`` and its weights fit ``model`` (the
    model's state dict: names, shapes, dtypes), else None; and why, for the log."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None, f"no resumable state at {path}: starting fresh"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say so and start over rather than crash
        return None, f"{path}: unreadable resumable state ({exc}): starting fresh"
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        version = state.get("version") if isinstance(state, dict) else None
        return None, f"{path}: state version {version}, expected {STATE_VERSION}: starting fresh"
    saved = state.get("run_identity", {})
    if saved != run_identity:
        changed = sorted(k for k in saved.keys() | run_identity.keys() if saved.get(k) != run_identity.get(k))
        return None, f"{path}: saved by a run with other params ({', '.join(changed)}): starting fresh"
    # Same params and code, yet weights that do not fit the model: a damaged or foreign file.
    weights = state.get("model")
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        return None, f"{path}: no model weights in the resumable state: starting fresh"
    problem = state_mismatch({k: (tuple(v.shape), v.dtype) for k, v in weights.items()}, model)
    if problem:
        return None, f"{path}: weights do not fit the model ({problem}): starting fresh"
    return state, f"resuming from {path} at step {state['step']}"


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's torch (and CUDA), numpy and Python RNG states, in a ``weights_only``-loadable form."""
    # The project itself draws only from seeded np.random.Generator objects (ruff NPY002); libraries may still
    # use numpy's legacy global generator, so its state is kept too.
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
