"""Resumable training state: everything needed to continue a killed run exactly where it stopped.

One file, ``state.pt``, written atomically (temporary name, then rename) so a kill mid-write leaves the
previous state intact. It holds plain tensors and Python values only and is read with
``torch.load(weights_only=True)``: loading a state never executes pickled code.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

STATE_FILE = "state.pt"
STATE_VERSION = 1


def save_state(directory: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``directory/state.pt`` atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATE_FILE
    tmp = path.with_name(f"{STATE_FILE}.tmp-{os.getpid()}")
    torch.save({"version": STATE_VERSION, **state}, tmp)
    os.replace(tmp, path)
    return path


def load_state(directory: Path, run_identity: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The saved state if it belongs to a run with ``run_identity``, else None; and why, for the log."""
    path = directory / STATE_FILE
    if not path.is_file():
        return None, f"no resumable state at {path}: starting fresh"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: say so and start over rather than crash
        return None, f"{path}: unreadable resumable state ({exc}): starting fresh"
    if state.get("version") != STATE_VERSION:
        return None, f"{path}: state version {state.get('version')}, expected {STATE_VERSION}: starting fresh"
    if state.get("run_identity") != run_identity:
        return None, f"{path}: saved by a run with other params: starting fresh"
    return state, f"resuming from {path} at step {state['step']}"
