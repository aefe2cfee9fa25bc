"""The split files: exactly the stores train and evaluate read, by fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from videomamba_depth.config import ConfigError
from videomamba_depth.errors import InputError
from videomamba_depth.manifest import write_manifest
from videomamba_depth.pervideo import index_path, write_index
from videomamba_depth.split import KINDS, split_path, write_split


def _store(name: str, kind: str, value: str) -> None:
    """Record ``value`` as the fingerprint of ``name``'s ``kind`` store, as the stage does (its index)."""
    root = Path("data") / kind
    fingerprints = json.loads(index_path(root).read_text())["videos"] if index_path(root).exists() else {}
    write_index(root, {**fingerprints, name: value})


def _params(train: list[str], held_out: list[str]) -> dict:
    """Write the manifest of ``train + held_out``; the params of split."""
    write_manifest({n: {"video": f"{n}.mp4", "intrinsics": None, "ground_truth": None}
                    for n in train + held_out})
    return {"train": {"videos": train}, "evaluate": {"videos": held_out}}


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    for name in ("a", "b", "c"):
        for kind in KINDS:
            _store(name, kind, f"{kind}-{name}-1")
    return tmp_path


def test_each_file_lists_its_videos_stores(project: Path):
    write_split(_params(["a", "b"], ["c"]))
    train = json.loads(split_path("train").read_text())
    assert train["videos"] == {n: {k: f"{k}-{n}-1" for k in KINDS} for n in ("a", "b")}
    assert list(json.loads(split_path("evaluate").read_text())["videos"]) == ["c"]


def test_a_held_out_video_never_changes_the_training_file(project: Path):
    write_split(_params(["a", "b"], ["c"]))
    train, held_out = split_path("train").read_bytes(), split_path("evaluate").read_bytes()
    for kind in KINDS:  # a new held-out video
        _store("d", kind, f"{kind}-d-1")
    write_split(_params(["a", "b"], ["c", "d"]))
    assert split_path("train").read_bytes() == train and split_path("evaluate").read_bytes() != held_out
    _store("c", "flow", "flow-c-2")  # a held-out video recomputed
    write_split(_params(["a", "b"], ["c", "d"]))
    assert split_path("train").read_bytes() == train
    _store("a", "teacher", "teacher-a-2")  # a training video recomputed: training must re-run
    write_split(_params(["a", "b"], ["c", "d"]))
    assert split_path("train").read_bytes() != train


def test_a_video_missing_from_an_index_is_named(project: Path):
    _store("d", "prepared", "prepared-d-1")
    with pytest.raises(InputError, match=r"data/index/teacher.json: no video 'd'; run `dvc repro teacher`"):
        write_split(_params(["a", "d"], ["c"]))
    index_path(Path("data/teacher")).unlink()
    with pytest.raises(InputError, match=r"data/index/teacher.json: missing or unreadable"):
        write_split(_params(["a"], ["c"]))
    with pytest.raises(ConfigError, match="no video named 'x'"):
        write_split(_params(["a"], ["c"]) | {"train": {"videos": ["x"]}})
