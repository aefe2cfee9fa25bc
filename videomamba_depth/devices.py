"""The one device setting used by every stage: ``auto`` | ``cpu`` | ``cuda``."""

from __future__ import annotations

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
