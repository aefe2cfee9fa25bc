"""The video manifest: ``data/manifest.yaml``, one entry per video.

Each entry names one video; the name is used for every output (``data/<stage>/<name>.zarr.zip``)::

    videos:
      kitchen:
        video: videos/kitchen.mp4          # a video file, or a folder of frames
        intrinsics: videos/kitchen_K.json  # .json or .npy, (3,3) or per-frame (T,3,3), pixels; or null
        ground_truth: null                 # a ground-truth Zarr store (synthetic set), or null

Why its own file and not a section of ``params.yaml``: DVC parses ``params.yaml`` (a pure-Python YAML parser)
once per stage on every ``dvc status`` and records a stage's params in ``dvc.lock``, so a manifest of
thousands of videos there made every DVC command and the lock grow with the video count. As a file
dependency it costs DVC one hash lookup, and the stages parse it once with libyaml.

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

import yaml

from videomamba_depth.config import YAML_LOADER, ConfigError, StageConfig
from videomamba_depth.zarrio import PACKED_SUFFIX, atomic_file

DATA_DIR = Path("data")
MANIFEST_FILE = DATA_DIR / "manifest.yaml"
MANIFEST_KEY = "videos"
# Names become file names (data/<kind>/<name>.zarr.zip): no separators, spaces, shell characters or a
# leading dot.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class VideoEntry(StageConfig):
    """One manifest entry; paths as written in the manifest (relative to the project root).

    - ``video``: a video file (.mp4, .mov, .mkv, ...) or a folder of frames (.png, .jpg, ...; natural order).
    - ``intrinsics``: a .json or .npy file with a (3,3) or per-frame (T,3,3) K in pixels of the original
      frames, or None when unknown.
    - ``ground_truth``: a ground-truth Zarr store (kind "ground_truth"), or None.
    """

    video: str
    intrinsics: str | None = None
    ground_truth: str | None = None


def load_manifest(path: str | Path = MANIFEST_FILE) -> dict[str, VideoEntry]:
    """Every entry of the manifest file ``path``, by name; else a :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the video manifest ({exc.strerror}; see README "
                          "'Your own videos')") from exc
    try:
        doc = yaml.load(text, Loader=YAML_LOADER)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse_manifest(doc, str(path))


def parse_manifest(doc: Any, where: str = str(MANIFEST_FILE)) -> dict[str, VideoEntry]:
    """Every entry of a manifest document (``{"videos": {name: entry}}``), validated; ``where`` names it."""
    videos = doc.get(MANIFEST_KEY) if isinstance(doc, Mapping) else None
    if not isinstance(videos, Mapping) or not videos:
        raise ConfigError(f"{where}: '{MANIFEST_KEY}' must map video names to entries (see README)")
    extra = sorted(set(doc) - {MANIFEST_KEY})
    if extra:
        raise ConfigError(f"{where}: unknown top-level key(s) {extra}; expected only '{MANIFEST_KEY}'")
    entries = {}
    for name, value in videos.items():
        check_name(str(name), f"{where}: video name")
        entries[str(name)] = VideoEntry.from_dict(value, where=f"{where}: {MANIFEST_KEY}.{name}")
    return entries


def write_manifest(videos: Mapping[str, Mapping[str, Any]], path: str | Path = MANIFEST_FILE) -> Path:
    """Write ``{"videos": videos}`` to ``path`` (atomically), as is: for scripts that generate a manifest of
    many videos, and for tests (the stages validate it, :func:`load_manifest`)."""
    doc = {MANIFEST_KEY: {str(name): dict(entry) for name, entry in videos.items()}}
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(doc, sort_keys=False))
    return Path(path)


def select_videos(manifest: Mapping[str, VideoEntry], names: Sequence[str]) -> dict[str, VideoEntry]:
    """The entries ``names`` of ``manifest`` (all of them when ``names`` is empty), in manifest order."""
    unknown = [n for n in names if n not in manifest]
    if unknown:
        raise ConfigError(
            f"{MANIFEST_FILE}: no video named {', '.join(map(repr, unknown))}; "
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
    """``data/<kind>/<name>.zarr.zip``: the (packed) store of ``kind`` (frames, prepared, ...) for video
    ``name``."""
    return DATA_DIR / kind / f"{name}{PACKED_SUFFIX}"
