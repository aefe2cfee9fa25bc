"""The ``teacher`` DVC stage end to end: ``kill -9`` half-way, re-run, finished videos are not redone, and the
killed writer's partial store is cleaned up."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from dvc_project import write_params
from test_teacher import scene, write_prepared

from videomamba_depth.pervideo import stored_fingerprint, write_index
from videomamba_depth.zarrio import open_store

REPO = Path(__file__).resolve().parents[1]
VIDEOS = ("v0", "v1", "v2")
NUM_FRAMES = 48


def _project(root: Path) -> dict[str, str]:
    """A DVC project with the repo's real ``teacher`` stage and params, and three prepared videos."""
    shutil.copytree(REPO / "videomamba_depth", root / "videomamba_depth",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "stages").mkdir()
    shutil.copy(REPO / "stages" / "teacher.py", root / "stages" / "teacher.py")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    videos = {v: {"video": f"{v}.mp4", "intrinsics": None, "ground_truth": f"{v}_gt.zarr"} for v in VIDEOS}
    write_params(root, {"videos": videos, "teacher": params["teacher"]})
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["teacher"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"teacher": stage}}))
    (root / ".dvcignore").write_text((REPO / ".dvcignore").read_text())
    rgb, depth, K = scene(T=NUM_FRAMES, h=96, w=128)
    for v in VIDEOS:
        write_prepared(root / "data" / "prepared" / f"{v}.zarr.zip", rgb, K=K, gt_depth=depth, gt_K=K)
    write_index(root / "data" / "prepared", {v: f"fixture-{v}" for v in VIDEOS})  # as prepare would
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=root, env=env, check=True)
    return env


def _finished(stores: Path) -> set[str]:
    """Videos whose store is complete: in place and carrying its fingerprint (written with it)."""
    return {v for v in VIDEOS if stored_fingerprint(stores / f"{v}.zarr.zip")}


def _wait_gone(pgid: int, timeout: float = 30.0) -> None:
    """Wait until no live process of the group is left (DVC frees a dead PID's locks only then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for p in psutil.process_iter(["status"]):
            try:
                if os.getpgid(p.pid) == pgid and p.info["status"] != psutil.STATUS_ZOMBIE:
                    alive.append(p.pid)
            except (ProcessLookupError, psutil.NoSuchProcess):
                continue
        if not alive:
            return
        time.sleep(0.05)
    raise TimeoutError(f"processes {alive} of group {pgid} still alive")


@pytest.mark.slow
def test_kill_9_then_repro_resumes_without_redoing_or_corrupting(tmp_path):
    env = _project(tmp_path)
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(["dvc", "repro"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    stores = tmp_path / "data" / "teacher"
    try:
        # Kill once one video is finished and the next one is half-written.
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if _finished(stores) and list(stores.glob("*.partial-*")):
                break
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        _wait_gone(proc.pid)
    done = _finished(stores)
    assert done and len(done) < len(VIDEOS), f"kill did not land mid-run: finished {done}"
    assert list(stores.glob("*.partial-*")), "kill did not land during a write"
    inodes = {v: (stores / f"{v}.zarr.zip").stat().st_ino for v in done}

    rerun = subprocess.run(["dvc", "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    for v in done:
        assert f"teacher: {v}: up to date" in rerun.stdout
        assert (stores / f"{v}.zarr.zip").stat().st_ino == inodes[v]  # not rewritten
    assert {f"teacher: {v}: computed" for v in set(VIDEOS) - done} <= set(rerun.stdout.splitlines())
    assert _finished(stores) == set(VIDEOS)
    for v in VIDEOS:
        g = open_store(stores / f"{v}.zarr.zip", "teacher")
        assert g["depth"].shape[0] == NUM_FRAMES and g["valid"][-1].any()
        assert g.attrs["intrinsics_source"] == "given" and g.attrs["invalid_pixels"] == 0
    assert sorted(p.name for p in stores.iterdir()) == [f"{v}.zarr.zip" for v in VIDEOS]  # no partial stores
    status = subprocess.run(["dvc", "status"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "up to date" in status.stdout, status.stdout
