"""Caching and name safety of the data stages, with the real dvc.yaml stages on a tiny DVC project.

Adding a video computes only that video; a prepare param never re-runs decode; train.* never touches a data
stage; a second repro does nothing; a broken video fails alone and every other store is kept; a failed
re-run keeps the previous good store; hostile manifest names never reach a shell or a path outside the
project; names with dots work end to end. The project gets only the library files the stages list as deps
(plus package markers), so a missing dep shows up as an ImportError.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from video_inputs import smooth_frames, tiny_K, write_video

from videomamba_depth.camera import save_intrinsics_json
from videomamba_depth.zarrio import open_store

REPO = Path(__file__).resolve().parents[1]
STAGES = ("decode", "prepare")


def _dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True,
                            text=True, timeout=300)
    if check and result.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def _computed(result: subprocess.CompletedProcess) -> set[str]:
    """``stage:video`` for every video a stage computed (rather than found up to date)."""
    return {f"{s}:{v}" for s, v in re.findall(r"^(\w+): (\S+): computed$", result.stdout, re.M)}


def _ran(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr))


def _write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _copy_stages(project: Path, names: tuple[str, ...]) -> None:
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = {name: pipeline["stages"][name] for name in names}
    files = {"videomamba_depth/__init__.py", "videomamba_depth/video/__init__.py"}
    for stage in stages.values():
        files |= {d for d in stage["deps"] if d.startswith(("stages/", "videomamba_depth/"))}
        # This project's videos stand where the embedded default's synthetic ones do.
        stage["deps"] = [d for d in stage["deps"] if d != "data/synth"]
        if stage["cmd"].endswith("stages.decode"):
            stage["deps"].append("videos")
    for file in files:
        src = REPO / file
        if src.is_dir():
            shutil.copytree(src, project / file, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (project / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, project / file)
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    _dvc(project, "init", "--no-scm", "-q")


def _entry(path: str, **extra) -> dict:
    return {"video": path, "intrinsics": None, "ground_truth": None, **extra}


@pytest.fixture
def project(tmp_path):
    project = tmp_path / "project"
    (project / "videos").mkdir(parents=True)
    write_video(project / "videos" / "a.mp4", smooth_frames(6, seed=1))
    write_video(project / "videos" / "b.mp4", smooth_frames(5, seed=2))
    save_intrinsics_json(project / "videos" / "b.json", tiny_K(), 64, 48)
    _copy_stages(project, STAGES)
    return project


def _params(**videos) -> dict:
    return {
        "videos": videos or {
            "a": _entry("videos/a.mp4"),
            "b": {"video": "videos/b.mp4", "intrinsics": "videos/b.json"},  # optional key omitted
        },
        "decode": {"backend": "pyav", "folder_fps": 30.0},
        "prepare": {"long_edge": 32, "pad_multiple": 14},
        "train": {"lr": 0.001},
    }


@pytest.mark.slow
def test_caching_granularity(project):
    params = _params()
    _write_params(project, params)
    assert _computed(_dvc(project, "repro")) == {"decode:a", "decode:b", "prepare:a", "prepare:b"}
    assert open_store(project / "data/prepared/b.zarr", "prepared")["K"].shape == (5, 3, 3)

    # Nothing changed: nothing runs.
    again = _dvc(project, "repro")
    assert _ran(again) == set() and "Data and pipelines are up to date" in again.stdout

    # A training param is no data stage's business.
    params["train"]["lr"] = 0.01
    _write_params(project, params)
    assert "up to date" in _dvc(project, "status").stdout
    assert _ran(_dvc(project, "repro")) == set()

    # A prepare param re-runs prepare only, for every video.
    params["prepare"]["long_edge"] = 40
    _write_params(project, params)
    result = _dvc(project, "repro")
    assert _ran(result) == {"prepare"} and _computed(result) == {"prepare:a", "prepare:b"}
    assert open_store(project / "data/prepared/a.zarr")["rgb"].shape == (6, 42, 42, 3)

    # A new video computes only its own outputs; its name may hold dots.
    write_video(project / "videos" / "c.mp4", smooth_frames(4, seed=3))
    params["videos"]["clip.v2"] = _entry("videos/c.mp4")
    _write_params(project, params)
    inode = (project / "data/frames/a.zarr/zarr.json").stat().st_ino
    assert _computed(_dvc(project, "repro")) == {"decode:clip.v2", "prepare:clip.v2"}
    assert (project / "data/frames/a.zarr/zarr.json").stat().st_ino == inode  # not rewritten
    assert open_store(project / "data/prepared/clip.v2.zarr")["rgb"].shape[0] == 4

    # A broken video fails alone, with the file named, and leaves no store; the others are done and kept,
    # and the next repro does only what is left.
    (project / "videos" / "d.mp4").write_bytes(b"\x00" * 4096)
    params["videos"]["d"] = _entry("videos/d.mp4")
    _write_params(project, params)
    result = _dvc(project, "repro", check=False)
    assert result.returncode != 0 and _computed(result) == set()
    assert "decode: d: " in result.stdout and "videos/d.mp4: not a readable video" in result.stdout
    assert re.search(r"d: videos/d.mp4: not a readable video .*\(1 of 4 videos failed", result.stderr)
    assert sorted(p.name for p in (project / "data/frames").iterdir()) == ["a.zarr", "b.zarr", "clip.v2.zarr"]
    write_video(project / "videos" / "d.mp4", smooth_frames(3, seed=4))
    assert _computed(_dvc(project, "repro")) == {"decode:d", "prepare:d"}

    # A video removed from the manifest takes its stores with it.
    del params["videos"]["d"]
    _write_params(project, params)
    _dvc(project, "repro")
    assert sorted(p.name for p in (project / "data/prepared").iterdir()) == [
        "a.zarr", "b.zarr", "clip.v2.zarr"
    ]
    assert _ran(_dvc(project, "repro")) == set()


@pytest.mark.slow
def test_a_failed_rerun_keeps_the_previous_good_store(project):
    """DVC deletes ordinary outputs before a stage runs; ours persist, so a failing re-run loses nothing."""
    params = _params()
    _write_params(project, params)
    _dvc(project, "repro")
    before = (project / "data/frames/a.zarr/rgb/c/0/0/0/0").read_bytes()
    # Newly corrupt input: the store made from the good file is kept, and DVC records nothing new.
    (project / "videos" / "a.mp4").write_bytes(b"\x00" * 4096)
    result = _dvc(project, "repro", check=False)
    assert result.returncode != 0 and "videos/a.mp4: not a readable video" in result.stdout
    assert (project / "data/frames/a.zarr/rgb/c/0/0/0/0").read_bytes() == before
    # Bad params: refused before any store is touched.
    params["prepare"]["long_edge"] = -3
    _write_params(project, params)
    result = _dvc(project, "repro", "-s", "prepare", check=False)
    assert result.returncode != 0 and re.search(r"prepare: .*got -3", result.stdout + result.stderr)
    assert open_store(project / "data/prepared/a.zarr", "prepared")["rgb"].shape[0] == 6


HOSTILE_NAMES = {
    "parent_dirs": ("../../../victim", r"video name '\.\./\.\./\.\./victim' must start with a letter"),
    "shell": ("x;touch PWNED", r"video name 'x;touch PWNED' must start with a letter or digit"),
    "space": ("my clip", r"video name 'my clip' must start with a letter or digit"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(HOSTILE_NAMES))
def test_hostile_manifest_names_are_refused_before_anything_happens(tmp_path, project, case):
    name, message = HOSTILE_NAMES[case]
    victim = tmp_path / "victim.zarr"
    (victim / "keep.txt").parent.mkdir()
    (victim / "keep.txt").write_text("the user's file")
    params = _params()
    _write_params(project, params)
    _dvc(project, "repro")
    params["videos"][name] = _entry("videos/a.mp4")
    _write_params(project, params)
    result = _dvc(project, "repro", check=False)
    assert result.returncode != 0 and re.search(message, result.stdout + result.stderr)
    assert (victim / "keep.txt").read_text() == "the user's file"
    assert not list(tmp_path.rglob("PWNED"))
    assert sorted(p.name for p in (project / "data/frames").iterdir()) == ["a.zarr", "b.zarr"]


@pytest.mark.slow
def test_hostile_synth_names_are_refused(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "victim2").mkdir()
    (tmp_path / "victim2" / "keep.txt").write_text("the user's file")
    _copy_stages(project, ("synth",))
    synth = yaml.safe_load((REPO / "params.yaml").read_text())["synth"]
    _write_params(project, {"synth": {**synth, "videos": {"../../victim2": 9, "x;touch PWNED": 1}}})
    result = _dvc(project, "repro", check=False)
    assert result.returncode != 0
    assert re.search(r"videos: name '\.\./\.\./victim2' must start with", result.stdout + result.stderr)
    assert (tmp_path / "victim2" / "keep.txt").read_text() == "the user's file"
    assert not list(tmp_path.rglob("PWNED")) and not (project / "data/synth").exists()
