"""The video manifest: the top-level ``videos`` section of ``params.yaml``.

Each entry names one video; the name is used for every output (``data/<stage>/<name>.zarr``)::

    videos:
      kitchen:
        video: videos/kitchen.mp4          # a video file, or a folder of frames
        intrinsics: videos/kitchen_K.json  # .json or .npy, (3,3) or per-frame (T,3,3), pixels; or null
        ground_truth: null                 # a ground-truth Zarr store (synthetic set), or null

The data stages (``decode``, ``prepare``, ...) validate every entry with :func:`load_manifest` before any
work (names never reach ``dvc.yaml``: see :mod:`videomamba_depth.pervideo`) and find their stores with
:func:`store_path`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videomamba_depth.config import ConfigError, StageConfig, load_params

MANIFEST_SECTION = "videos"
DATA_DIR = Path("data")
# Names become file names (data/<kind>/<name>.zarr): no separators, spaces, shell characters or leading dots.
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


def select_videos(manifest: Mapping[str, VideoEntry], names: Sequence[str]) -> dict[str, VideoEntry]:
    """The entries ``names`` of ``manifest`` (all of them when ``names`` is empty), in manifest order."""
    unknown = [n for n in names if n not in manifest]
    if unknown:
        raise ConfigError(
            f"params.yaml: no video named {', '.join(map(repr, unknown))} in '{MANIFEST_SECTION}'; "
            f"known videos: {', '.join(manifest)}"
        )
    return {n: e for n, e in manifest.items() if not names or n in names}


def check_name(name: str, what: str) -> None:
    """Raise a :class:`ConfigError` unless ``name`` is a legal video name (see :data:`NAME_PATTERN`)."""
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{what} {name!r} must start with a letter or digit and contain only letters, digits, '_', '.' "
            "and '-' (it becomes a file name)"
        )


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
    check_name(name, "params.yaml: video name")
    return VideoEntry.from_dict(value, where=f"{MANIFEST_SECTION}.{name}")
