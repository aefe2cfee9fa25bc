"""The ``split`` stage: one small file per consumer naming exactly the stores it reads, by fingerprint.

``train`` reads the prepared, teacher and flow stores of ``train.videos``; ``evaluate`` those of
``evaluate.videos``. Were they to depend on all of them (the folders, or their indexes
``data/index/<kind>.json``), adding any video (a held-out one too) would re-run training. Instead this cheap
stage depends on the indexes and writes ``data/split/train.json`` and ``data/split/evaluate.json``: for each
of their videos, the fingerprint of each store, the record of what it was computed from
(:mod:`videomamba_depth.pervideo`). DVC re-runs ``split`` on any change but re-runs ``train`` (``evaluate``)
only when the content of its own file changes, that is when one of its videos' stores does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from videomamba_depth.config import VIDEO_LISTS, ConfigError
from videomamba_depth.errors import InputError
from videomamba_depth.manifest import DATA_DIR, load_manifest, select_videos
from videomamba_depth.pervideo import index_path, read_index
from videomamba_depth.zarrio import atomic_file

SPLIT_DIR = DATA_DIR / "split"
KINDS = {"prepared": "prepare", "teacher": "teacher", "flow": "flow"}  # stores train and evaluate read: stage
CONSUMERS = ("train", "evaluate")  # params sections whose ``videos`` (data/<section>_videos.yaml) split lists


def split_path(consumer: str) -> Path:
    """``data/split/<consumer>.json``."""
    return SPLIT_DIR / f"{consumer}.json"


def consumer_videos(params: Mapping[str, Any], consumer: str) -> list[str]:
    """``params[consumer]["videos"]`` (from ``data/<consumer>_videos.yaml``), checked against the manifest."""
    names = params.get(consumer, {}).get("videos") if isinstance(params.get(consumer), Mapping) else None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{VIDEO_LISTS[consumer]}: videos must be a list of video names, got {names!r}")
    return list(select_videos(load_manifest(), names)) if names else []


def split_record(names: Sequence[str], kinds: Sequence[str] = KINDS) -> dict[str, Any]:
    """``{"kinds": kinds, "videos": {name: {kind: fingerprint}}}``, from the index of each kind
    (``data/index/<kind>.json``); an error naming the index that lacks a video."""
    indexes = {kind: read_index(DATA_DIR / kind) for kind in kinds}
    videos = {}
    for name in names:
        missing = [kind for kind in kinds if name not in indexes[kind]]
        if missing:
            raise InputError(f"{index_path(DATA_DIR / missing[0])}: no video {name!r}; run `dvc repro "
                             f"{KINDS.get(missing[0], missing[0])}`")
        videos[name] = {kind: indexes[kind][name] for kind in kinds}
    return {"kinds": list(kinds), "videos": videos}


def write_split(params: Mapping[str, Any]) -> dict[str, Path]:
    """Write every consumer's split file (atomically); return their paths."""
    paths = {}
    for consumer in CONSUMERS:
        record = split_record(consumer_videos(params, consumer))
        path = split_path(consumer)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"split: {path}: {len(record['videos'])} videos", flush=True)
        paths[consumer] = path
    return paths
