"""Caching granularity of the decode/prepare stages, with the real dvc.yaml stages on a tiny DVC project.

Adding a video computes only that video; a prepare param never re-runs decode; train.* never touches a data
stage; a second repro does nothing; a broken video fails alone (``dvc repro -k``). The project gets only the
library files the stages list as deps (plus package markers), so a missing dep shows up as an ImportError.
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


def _ran(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr))


def _write_params(project: Path, params: dict) -> None:
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture
def project(tmp_path):
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = {name: pipeline["stages"][name] for name in STAGES}
    files = {"videomamba_depth/__init__.py", "videomamba_depth/video/__init__.py"}
    for stage in stages.values():
        files |= {d for d in stage["do"]["deps"] if d.startswith(("stages/", "videomamba_depth/"))}
    for file in files:
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / file, tmp_path / file)
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (tmp_path / "videos").mkdir()
    write_video(tmp_path / "videos" / "a.mp4", smooth_frames(6, seed=1))
    write_video(tmp_path / "videos" / "b.mp4", smooth_frames(5, seed=2))
    save_intrinsics_json(tmp_path / "videos" / "b.json", tiny_K(), 64, 48)
    _dvc(tmp_path, "init", "--no-scm", "-q")
    return tmp_path


@pytest.mark.slow
def test_caching_granularity(project):
    params = {
        "videos": {
            "a": {"video": "videos/a.mp4", "intrinsics": None, "ground_truth": None},
            "b": {"video": "videos/b.mp4", "intrinsics": "videos/b.json"},  # optional key omitted
        },
        "decode": {"backend": "decord", "folder_fps": 30.0},
        "prepare": {"long_edge": 32, "pad_multiple": 14},
        "train": {"lr": 0.001},
    }
    _write_params(project, params)
    assert _ran(_dvc(project, "repro")) == {"decode@a", "decode@b", "prepare@a", "prepare@b"}
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
    assert _ran(_dvc(project, "repro")) == {"prepare@a", "prepare@b"}
    assert open_store(project / "data/prepared/a.zarr")["rgb"].shape == (6, 42, 42, 3)

    # A new video computes only its own outputs.
    write_video(project / "videos" / "c.mp4", smooth_frames(4, seed=3))
    params["videos"]["c"] = {"video": "videos/c.mp4", "intrinsics": None, "ground_truth": None}
    _write_params(project, params)
    assert _ran(_dvc(project, "repro")) == {"decode@c", "prepare@c"}

    # A broken video fails alone, with the file named, and leaves no store; the others stay cached.
    (project / "videos" / "d.mp4").write_bytes(b"\x00" * 4096)
    params["videos"]["d"] = {"video": "videos/d.mp4", "intrinsics": None, "ground_truth": None}
    _write_params(project, params)
    result = _dvc(project, "repro", "--keep-going", check=False)
    assert result.returncode != 0 and _ran(result) == {"decode@d"}
    assert "videos/d.mp4: not a readable video" in result.stdout + result.stderr
    assert sorted(p.name for p in (project / "data/frames").iterdir()) == ["a.zarr", "b.zarr", "c.zarr"]
    del params["videos"]["d"]
    _write_params(project, params)
    assert _ran(_dvc(project, "repro")) == set()
