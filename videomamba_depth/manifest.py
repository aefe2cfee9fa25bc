"""The video manifest: the top-level ``videos`` section of ``params.yaml``.

Each entry names one video; the name is used for every output (``data/<stage>/<name>.zarr``)::

    videos:
      kitchen:
        video: videos/kitchen.mp4          # a video file, or a folder of frames
        intrinsics: videos/kitchen_K.json  # .json or .npy, (3,3) or per-frame (T,3,3), pixels; or null
        ground_truth: null                 # a ground-truth Zarr store (synthetic set), or null

Per-video stages (``decode@<name>``, ``prepare@<name>``, ...) load their entry with
:func:`load_manifest_entry` and find their stores with :func:`store_path`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videomamba_depth.config import ConfigError, StageConfig, load_params

MANIFEST_SECTION = "videos"
DATA_DIR = Path("data")
# Names become file names and DVC stage names (decode@<name>): no separators, spaces or leading dots.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class VideoEntry(StageConfig):
    """One manifest entry; paths as written in ``params.yaml`` (relative to the project root).

    - ``video``: a video file (.mp4, .mov, .mkv, ...) or a folder of frames (.png, .jpg, ...; natural order).
    - ``intrinsics``: a .json or .npy file with a (3,3) or per-frame (T,3,3) K in pixels of the original
      frames, or None when unknown.
    - ``ground_truth``: a ground-truth Zarr store (kind "ground_truth"), or None.
    """

    video: str
    intrinsics: str | None = None
    ground_truth: str | None = None


def load_manifest(params: Mapping[str, Any] | None = None) -> dict[str, VideoEntry]:
    """Every manifest entry, by name (default: ``params.yaml`` in the working directory)."""
    videos = _videos(params)
    return {str(name): _entry(str(name), value) for name, value in videos.items()}


def load_manifest_entry(name: str, params: Mapping[str, Any] | None = None) -> VideoEntry:
    """The entry ``videos.<name>``, validating only that entry (a broken entry never blocks another video)."""
    videos = _videos(params)
    if name not in videos:
        raise ConfigError(
            f"params.yaml: no video named {name!r} in '{MANIFEST_SECTION}'; known videos: {', '.join(videos)}"
        )
    return _entry(name, videos[name])


def store_path(kind: str, name: str) -> Path:
    """``data/<kind>/<name>.zarr``: the store of ``kind`` (frames, prepared, ...) for video ``name``."""
    return DATA_DIR / kind / f"{name}.zarr"


def _videos(params: Mapping[str, Any] | None) -> Mapping[str, Any]:
    params = load_params() if params is None else params
    videos = params.get(MANIFEST_SECTION)
    if not isinstance(videos, Mapping) or not videos:
        raise ConfigError(f"params.yaml: '{MANIFEST_SECTION}' must map video names to entries (see README)")
    return videos


def _entry(name: str, value: Any) -> VideoEntry:
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"params.yaml: video name {name!r} must start with a letter or digit and contain only letters, "
            "digits, '_', '.' and '-' (it becomes a file name)"
        )
    return VideoEntry.from_dict(value, where=f"{MANIFEST_SECTION}.{name}")
