"""Teacher and flow over several worker processes (PyTorch elastic launcher): same bytes, failures per video.

The stages run as DVC runs them (``python -m stages.X``), in a temporary folder holding prepared stores as the
prepare stage writes them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dvc_project import write_params
from test_teacher import scene, write_prepared

from videomamba_depth.config import ConfigError
from videomamba_depth.pervideo import PrecomputeConfig, VideoTask, balanced_shares

REPO = Path(__file__).resolve().parents[1]
VIDEOS = ("a", "b", "c")


def _task(name: str, cost: float) -> VideoTask:
    return VideoTask(name=name, out=Path(name), inputs={}, run=print, cost=cost)


def test_balanced_shares_cover_every_task_once_and_balance_the_cost():
    tasks = [_task(f"v{i}", cost) for i, cost in enumerate([9, 1, 1, 4, 4, 3, 2, 2, 1])]
    shares = balanced_shares(tasks, 3)
    assert sorted(t.name for share in shares for t in share) == sorted(t.name for t in tasks)
    assert sorted(sum(t.cost for t in share) for share in shares) == [9, 9, 9]
    # The same split whatever the order the tasks come in: every rank of a launch computes it alone.
    again = balanced_shares(list(reversed(tasks)), 3)
    assert [[t.name for t in s] for s in again] == [[t.name for t in s] for s in shares]
    assert balanced_shares(tasks[:1], 2) == [[tasks[0]], []]


def test_workers_must_be_positive():
    with pytest.raises(ConfigError, match="workers must be at least 1"):
        PrecomputeConfig.from_dict({"workers": 0})


def _project(root: Path, workers: int, broken: str | None = None) -> Path:
    """Prepared stores of ``VIDEOS`` (with ground truth, for the synthetic teacher) and a params.yaml."""
    for i, name in enumerate(VIDEOS):
        rgb, depth, K = scene(T=6 + 2 * i)
        gt = None if name == broken else depth  # the synthetic teacher needs ground truth: a per-video error
        write_prepared(root / "data" / "prepared" / f"{name}.zarr.zip", rgb, K=K, gt_depth=gt, gt_K=K)
    params = {
        "videos": {n: {"video": f"{n}.mp4", "intrinsics": None, "ground_truth": None} for n in VIDEOS},
        "precompute": {"workers": workers},
        "teacher": {"backend": "synthetic"},
        "flow": {"backend": "dis", "dis_preset": "fast"},
    }
    write_params(root, params)
    return root


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def _stage(root: Path, stage: str) -> subprocess.CompletedProcess:
    """``python -m stages.<stage>`` in ``root``, as DVC runs it (the launcher spawns from a plain process)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", f"stages.{stage}"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=600)


def test_two_workers_write_the_same_bytes_as_one(tmp_path: Path):
    stores = {}
    for workers in (1, 2):
        root = _project(tmp_path / f"w{workers}", workers)
        for stage in ("teacher", "flow"):
            result = _stage(root, stage)
            assert result.returncode == 0, result.stdout + result.stderr
            assert all(f"{stage}: {name}: computed" in result.stdout for name in VIDEOS)
            launched = f"{stage}: 3 videos over 2 worker processes" in result.stdout
            assert launched == (workers == 2)
        stores[workers] = {kind: _files(root / "data" / kind) for kind in ("teacher", "flow", "index")}
    for kind in ("teacher", "flow", "index"):
        assert any(k.endswith(".json" if kind == "index" else ".zarr.zip") for k in stores[1][kind]), kind
        assert stores[2][kind].keys() == stores[1][kind].keys()
        assert all(stores[2][kind][k] == stores[1][kind][k] for k in stores[1][kind]), kind


def test_a_failing_video_keeps_the_others_and_a_rerun_resumes(tmp_path: Path):
    root = _project(tmp_path, workers=2, broken="b")
    failed = _stage(root, "teacher")
    assert failed.returncode != 0
    summary = r"b: .*\(1 of 3 videos failed; the others are done and kept\)"
    assert re.search(summary, failed.stderr), failed.stderr
    kept = {name: (root / "data/teacher" / f"{name}.zarr.zip").exists() for name in VIDEOS}
    assert kept == {"a": True, "b": False, "c": True}
    assert not (root / "data/index/teacher.json").exists()  # written only once every video is done
    done = _files(root / "data/teacher")
    # The fixed video is the only work of the next run; what was done is left byte for byte.
    rgb, depth, K = scene(T=8)
    (root / "data/prepared/b.zarr.zip").unlink()
    write_prepared(root / "data/prepared/b.zarr.zip", rgb, K=K, gt_depth=depth, gt_K=K)
    rerun = _stage(root, "teacher")
    assert rerun.returncode == 0, rerun.stderr
    out = rerun.stdout
    assert "teacher: b: computed" in out
    assert "teacher: a: up to date" in out and "teacher: c: up to date" in out
    assert "worker processes" not in out  # one video to do: no processes started
    after = _files(root / "data/teacher")
    assert {k: v for k, v in after.items() if not k.startswith("b.zarr")} == done
    assert set(json.loads((root / "data/index/teacher.json").read_text())["videos"]) == set(VIDEOS)
