"""The one device setting used by every stage: ``auto`` | ``cpu`` | ``cuda``."""

from __future__ import annotations

import os

import torch


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error, never a fallback.

    ``setting`` names the param in the error (e.g. ``train.device``).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{setting} is 'cuda' but torch sees no CUDA device; set {setting}: auto or cpu")
    return torch.device(name)


def cpu_threads(processes: int) -> int:
    """Torch threads per process when none are set: the cores available, shared between ``processes``."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // processes)
