"""DDP under torchrun: 2 gloo processes on CPU train the same model as one process with twice the batch."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dvc_project import write_params
from safetensors.torch import load_file
from training_fixtures import TINY_MODEL, write_training_video

from videomamba_depth.training import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]

# Terms whose masked means do not depend on how a batch is split across processes (the fixture's teacher is
# valid everywhere); TGM's teacher-jump mask would weigh the two halves differently.
LOSS = {"metric_l1": 1.0, "ssi": 0.5, "tgm": 0.0, "state_smooth": 0.0, "grad": 0.5}


def _train_params(batch_size: int) -> dict:
    return {
        "videos": ["a", "b"],
        "val_frames": 4,
        "clip_len": 4,
        "clip_stride": 2,
        "batch_size": batch_size,
        "chunk_size": 2,
        "steps": 5,
        "warmup_steps": 1,
        "p_single_frame": 0.3,
        "val_every": 5,
        "image_every": 0,
        "log_every": 1,
        "checkpoint_every": 0,
        "device": "cpu",
        "threads": 1,
        "resume": False,
        "model": TINY_MODEL,
        "loss": LOSS,
    }


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_global_batch(tmp_path, monkeypatch):
    write_training_video(tmp_path, "a", frames=12, seed=0)
    write_training_video(tmp_path, "b", frames=14, seed=1)
    write_params(tmp_path, {"train": _train_params(batch_size=1)})
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "stages.train",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "DDP: 2 replicas hold identical weights" in run.stderr
    ddp = load_file(tmp_path / "data" / "train" / "model_final.safetensors")
    assert (tmp_path / "data" / "train" / "dvclive" / "metrics.json").is_file()

    monkeypatch.chdir(tmp_path)
    single = load_file(
        train(TrainConfig.from_dict(_train_params(batch_size=2)), out_dir=tmp_path / "single").final
    )
    half = load_file(
        train(TrainConfig.from_dict(_train_params(batch_size=1)), out_dir=tmp_path / "half").final
    )
    assert ddp.keys() == single.keys()

    def distance(x: dict, y: dict) -> float:
        return float(torch.sqrt(sum(((x[k] - y[k]) ** 2).sum() for k in x)))

    # Adam moves every weight by up to ~lr per step whatever its gradient's size, so rounding differences of
    # the gradient reduction leave a small distance (measured: 2.6e-4); training on half the clips (one
    # process, batch 1) lands ~360 times farther away.
    assert distance(ddp, single) < 0.01 * distance(ddp, half)
