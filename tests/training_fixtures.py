"""Tiny prepared / teacher / flow stores in the pipeline's schemas, and a tiny student config, for training
and evaluation tests."""

import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import zarr

from videomamba_depth.camera import make_K
from videomamba_depth.models import ModelConfig
from videomamba_depth.training import checkpoint as checkpoint_module
from videomamba_depth.zarrio import create_static_array, create_time_array, pack_store, writing_store

TINY_MODEL = {
    "widths": [8, 8, 8, 8],
    "decoder_widths": [8, 8, 8, 8],
    "head_width": 4,
    "ray_hidden": 4,
    "temporal_blocks": [1, 1],
    "d_state": 4,
    "headdim": 8,
    "ffn_mult": 1,
}


def tiny_model_config() -> ModelConfig:
    return ModelConfig.from_dict(TINY_MODEL, "model")


@contextmanager
def killed_after_checkpoint(monkeypatch, step: int) -> Iterator[None]:
    """Inside the block, training's resumable-state save raises ``KeyboardInterrupt`` right after writing
    the step-``step`` state (a run killed at that moment); the real save is back on exit."""
    real_save = checkpoint_module.save_state

    def save_then_crash(directory, state):
        real_save(directory, state)
        if state["step"] == step:
            raise KeyboardInterrupt(f"killed right after the step-{step} checkpoint")

    monkeypatch.setattr("videomamba_depth.training.loop.save_state", save_then_crash)
    try:
        yield
    finally:
        monkeypatch.setattr("videomamba_depth.training.loop.save_state", real_save)


def _time_array(group, name, data, dims, units):
    arr = create_time_array(group, name, data.shape[1:], data.dtype, dims=dims, units=units, description=name)
    arr.resize(data.shape)
    arr[:] = data
    return arr


def write_training_video(
    root: Path,
    name: str,
    *,
    frames: int = 12,
    height: int = 28,
    width: int = 42,
    seed: int = 0,
    broken_gt: bool = True,
) -> None:
    """Stores ``root/data/{prepared,teacher,flow}/<name>.zarr.zip``: a textured scene whose depth is a plane
    that slowly approaches, a flickering teacher, and per-pair flow masks with a known pattern.

    With ``broken_gt`` the prepared store has a ``gt`` group whose metadata is not JSON: anything that
    opens it fails, which proves training never reads ground truth.
    """
    rng = np.random.default_rng(seed)
    v, u = np.mgrid[0:height, 0:width]
    depth = np.stack([2.0 + 0.02 * u + 0.01 * v - 0.01 * t for t in range(frames)]).astype(np.float32)
    texture = rng.integers(0, 255, (height, width, 3))
    rgb = np.stack([np.roll(texture, t, axis=1) for t in range(frames)]).astype(np.uint8)
    K = np.broadcast_to(make_K(40.0, 40.0, (width - 1) / 2, (height - 1) / 2), (frames, 3, 3)).copy()
    flicker = np.exp(rng.normal(0.0, 0.05, frames)).astype(np.float32)
    pairs = max(frames - 1, 0)
    # Pair t: static where u >= t % 3 (a known pattern per pair), consistent everywhere but column 0.
    static = np.stack([u >= (t % 3) for t in range(pairs)]) if pairs else np.zeros((0, height, width), bool)
    consistent = np.broadcast_to(u > 0, (pairs, height, width)).copy()
    data = root / "data"
    # With a broken gt group, the prepared store is written as a folder, broken, then packed.
    prepared = data / "prepared" / (f"{name}.zarr" if broken_gt else f"{name}.zarr.zip")
    with writing_store(prepared, "prepared", {"fps": 24.0}) as g:
        _time_array(g, "rgb", rgb, ("t", "y", "x", "c"), "sRGB")
        _time_array(g, "K", K, ("t", "i", "j"), "pixels")
        create_static_array(
            g, "valid", np.ones((height, width), bool), dims=("y", "x"), units="bool", description=""
        )
        if broken_gt:
            g.create_group("gt")
    if broken_gt:
        (prepared / "gt" / "zarr.json").write_text("not json: training must not open gt")
        pack_store(prepared, prepared.with_name(f"{name}.zarr.zip"))
        shutil.rmtree(prepared)
    with writing_store(data / "teacher" / f"{name}.zarr.zip", "teacher", {}) as g:
        _time_array(g, "depth", (depth * flicker[:, None, None]).astype(np.float16), ("t", "y", "x"), "m")
        _time_array(g, "confidence", np.ones_like(depth, np.float16), ("t", "y", "x"), "1")
        _time_array(g, "valid", np.ones(depth.shape, bool), ("t", "y", "x"), "bool")
        _time_array(g, "K_used", K, ("t", "i", "j"), "pixels")
        _time_array(g, "K_pred", K, ("t", "i", "j"), "pixels")
    with writing_store(data / "flow" / f"{name}.zarr.zip", "flow", {"num_pairs": pairs}) as g:
        # The texture rolls one pixel to the right per frame: that is the forward flow.
        flow = np.broadcast_to(np.array([1.0, 0.0], np.float16), (pairs, height, width, 2)).copy()
        _time_array(g, "flow_fwd", flow, ("t", "y", "x", "c"), "pixels")
        _time_array(g, "consistent", consistent, ("t", "y", "x"), "bool")
        _time_array(g, "static", static & consistent, ("t", "y", "x"), "bool")
        _time_array(g, "rel_pose", np.broadcast_to(np.eye(4), (pairs, 4, 4)).copy(), ("t", "i", "j"), "m")


@contextmanager
def editing_packed(store: Path) -> Iterator[zarr.Group]:
    """The packed store ``store`` opened for writing (unpacked next to it), packed back after the block: tests
    change stores in place, which the pipeline never does."""
    folder = store.with_name(store.name.removesuffix(".zip"))
    with zipfile.ZipFile(store) as zf:
        zf.extractall(folder)
    yield zarr.open_group(folder, mode="r+", zarr_format=3)
    pack_store(folder, store)
    shutil.rmtree(folder)
