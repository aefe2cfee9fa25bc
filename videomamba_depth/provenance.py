"""Provenance recorded in every store and checkpoint: stage, resolved params, backend and package versions.

Deliberately free of timestamps, host names and absolute paths, so identical inputs give identical outputs.
"""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from videomamba_depth import __version__
from videomamba_depth.config import StageConfig

# Packages whose version can change numbers in our outputs; every provenance block records these.
CORE_PACKAGES = ("numpy", "zarr", "numcodecs", "torch")


def package_versions(*packages: str) -> dict[str, str]:
    """Installed versions of ``CORE_PACKAGES`` and ``packages`` ('absent' when not installed)."""
    out = {"python": platform.python_version(), "videomamba_depth": __version__}
    for name in (*CORE_PACKAGES, *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def provenance(
    stage: str, config: StageConfig | None, *, packages: tuple[str, ...] = (), **extra: Any
) -> dict:
    """The ``provenance`` attribute block: stage name, resolved params, versions and stage-specific extras."""
    return {
        "stage": stage,
        "params": config.to_dict() if config is not None else {},
        "versions": package_versions(*packages),
        **extra,
    }


def file_sha256(path: str | Path) -> str:
    """Content hash of a file (recorded for inputs DVC tracks only by path, such as intrinsics files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
