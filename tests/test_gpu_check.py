"""The GPU check script (bench/gpu_check.sh) runs its CPU path and says what it skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CPU path only: on a CUDA machine run `make gpu-check`")
def test_gpu_check_runs_its_cpu_path_and_lists_what_it_skipped(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    run = subprocess.run(["bash", str(ROOT / "bench/gpu_check.sh"), "--quick"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["device"] == "cpu" and results["quick"]
    skipped = "\n".join(results["skipped"])
    assert "no CUDA device: mamba-ssm install and the CUDA-marked tests SKIPPED" in skipped
    assert "NOT a GPU measurement" in skipped
    assert "SKIPPED (no CUDA device)" in (tmp_path / "gpu_check_tests.log").read_text()
    student = next(iter(results["students"].values()))
    assert set(student) == {"518px fp32", "224px fp32"} and all(v > 0 for v in student.values())
    assert set(results["teacher"]) == {"518px", "224px"} and results["teacher"]["224px"]["fps"] > 0
    stream = results["stream"]
    assert stream["frames"] == 20 and [c[0] for c in stream["curve_frame_peak_now_mib"]] == [10, 20]
    assert "SKIPPED / NOTES" in (tmp_path / "gpu_check.md").read_text() and "SKIPPED" in run.stdout
