"""A tiny DVC project with the repository's real data stages, for the caching and bad-input tests.

It gets only the library files the stages list as deps (plus package markers), so a missing dep shows up as
an ImportError.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from video_inputs import smooth_frames, tiny_K, write_video

from videomamba_depth.camera import save_intrinsics_json
from videomamba_depth.config import VIDEO_LISTS, write_video_list
from videomamba_depth.manifest import MANIFEST_FILE, write_manifest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("decode", "prepare")


def dvc(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True,
                            text=True, timeout=300)
    if check and result.returncode:
        raise AssertionError(f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def computed(result: subprocess.CompletedProcess) -> set[str]:
    """``stage:video`` for every video a stage computed (rather than found up to date)."""
    return {f"{s}:{v}" for s, v in re.findall(r"^(\w+): (\S+): computed$", result.stdout, re.M)}


def ran(result: subprocess.CompletedProcess) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", result.stdout + result.stderr))


def write_params(project: Path, params: dict) -> None:
    """``params.yaml`` of ``params``, its ``videos`` (when given) in the project's ``data/manifest.yaml`` and
    each section's ``videos`` in its list file (``data/<section>_videos.yaml``), where stages read them."""
    params = {k: dict(v) if isinstance(v, dict) else v for k, v in params.items()}
    videos = params.pop("videos", None)
    for section in VIDEO_LISTS:
        if isinstance(params.get(section), dict) and "videos" in params[section]:
            write_video_list(section, params[section].pop("videos"), project)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if videos is not None:
        write_manifest(videos, project / MANIFEST_FILE)


def copy_stages(project: Path, names: tuple[str, ...]) -> None:
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text())
    stages = {name: pipeline["stages"][name] for name in names}
    files = {"videomamba_depth/__init__.py", "videomamba_depth/video/__init__.py"}
    for stage in stages.values():
        files |= {d for d in stage["deps"] if d.startswith(("stages/", "videomamba_depth/"))}
        # This project's videos stand where the embedded default's synthetic ones do.
        stage["deps"] = [d for d in stage["deps"] if d != "data/index/synth.json"]
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
    dvc(project, "init", "--no-scm", "-q")


def entry(path: str, **extra) -> dict:
    return {"video": path, "intrinsics": None, "ground_truth": None, **extra}


def make_project(root: Path) -> Path:
    """``root/project``: the real decode and prepare stages, two tiny videos (b with intrinsics)."""
    project = root / "project"
    (project / "videos").mkdir(parents=True)
    write_video(project / "videos" / "a.mp4", smooth_frames(6, seed=1))
    write_video(project / "videos" / "b.mp4", smooth_frames(5, seed=2))
    save_intrinsics_json(project / "videos" / "b.json", tiny_K(), 64, 48)
    copy_stages(project, STAGES)
    return project


def project_params(**videos) -> dict:
    """Params of :func:`make_project`, for :func:`write_params` (``videos`` replaces the manifest)."""
    return {
        "videos": videos or {
            "a": entry("videos/a.mp4"),
            "b": {"video": "videos/b.mp4", "intrinsics": "videos/b.json"},  # optional key omitted
        },
        "decode": {"backend": "pyav", "folder_fps": 30.0},
        "prepare": {"long_edge": 32, "pad_multiple": 14},
        "train": {"lr": 0.001},
    }
