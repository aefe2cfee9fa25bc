"""The UniDepthV2 wrapper, tested against a stand-in with the same ``infer`` contract."""

from __future__ import annotations

import sys
import types
from typing import ClassVar

import numpy as np
import pytest
import torch
from test_teacher import scene, write_prepared

from videomamba_depth.provenance import file_sha256
from videomamba_depth.teacher import TeacherConfig, VideoContext, run_teacher
from videomamba_depth.teacher.run import image_window
from videomamba_depth.teacher.unidepth import (
    UniDepthTeacher,
    _import_unidepth,
    error_to_confidence,
    weights_id,
)
from videomamba_depth.zarrio import open_store


class FakeUniDepthV2:
    """Behaves like ``unidepth.models.UniDepthV2`` where the wrapper depends on it.

    ``infer(rgb (B,3,H,W) 0-255, camera (B,3,3) tensor | None)``: modifies the camera tensor in place (as
    UniDepth's Pinhole crop/resize do), fails on a batched camera, always returns its own intrinsics
    (focal from image brightness), depth proportional to the focal it assumed and NaN where red is 0, and
    ``confidence = exp(error)`` with error from the green channel.
    """

    instances: ClassVar[list[FakeUniDepthV2]] = []

    def __init__(self, weights: str) -> None:
        self.weights = weights
        self.calls: list[tuple[int, torch.Tensor | None]] = []
        self.device = None
        self.training = True
        FakeUniDepthV2.instances.append(self)

    @classmethod
    def from_pretrained(cls, weights: str) -> FakeUniDepthV2:
        return cls(weights)

    def to(self, device):
        self.device = device
        return self

    def eval(self):
        self.training = False
        return self

    @staticmethod
    def own_focal(rgb: torch.Tensor) -> torch.Tensor:
        return 20.0 + rgb.float().mean(dim=(1, 2, 3)) / 10.0

    def infer(self, rgb: torch.Tensor, camera: torch.Tensor | None = None, normalize: bool = True) -> dict:
        assert rgb.ndim == 4 and rgb.shape[1] == 3 and rgb.dtype == torch.uint8
        B, _, H, W = rgb.shape
        focal_pred = self.own_focal(rgb)
        K_seen = None
        if camera is not None:
            if camera.shape[0] > 1:
                raise RuntimeError("batched camera")  # UniDepth's BatchCamera path fails here
            K_seen = camera.clone()
            camera[..., 0, 2] -= 5.0  # what Pinhole.crop / resize do to the caller's tensor
            camera[..., :2, :] *= 2.0
        self.calls.append((B, K_seen))
        focal = focal_pred if K_seen is None else K_seen[:, 0, 0]
        depth = focal[:, None, None, None] / 10.0 * (1.0 + rgb[:, :1].float() / 255.0)
        depth[rgb[:, :1] == 0] = float("nan")
        intrinsics = torch.zeros(B, 3, 3)
        intrinsics[:, 0, 0] = intrinsics[:, 1, 1] = focal_pred
        intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 2, 2] = (W - 1) / 2, (H - 1) / 2, 1.0
        confidence = torch.exp(rgb[:, 1:2].float() / 255.0)
        return {"depth": depth, "confidence": confidence, "intrinsics": intrinsics, "points": None}


@pytest.fixture
def fake_unidepth(monkeypatch):
    package, models = types.ModuleType("unidepth"), types.ModuleType("unidepth.models")
    models.UniDepthV2 = FakeUniDepthV2
    package.models = models
    monkeypatch.setitem(sys.modules, "unidepth", package)
    monkeypatch.setitem(sys.modules, "unidepth.models", models)
    FakeUniDepthV2.instances = []
    return FakeUniDepthV2


def _teacher(tmp_path, rgb, **cfg):
    path = tmp_path / "vid.zarr"
    write_prepared(path, rgb)
    g = open_store(path)
    ctx = VideoContext("vid", path, g, image_window(g["valid"][:], path))
    return UniDepthTeacher.from_config(TeacherConfig(backend="unidepth", device="cpu", **cfg), ctx)


def test_missing_unidepth_is_actionable(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "unidepth", None)  # import fails as if not installed
    with pytest.raises(ImportError) as err:
        _import_unidepth()
    msg = str(err.value)
    assert 'pip install "unidepth @ git+https://github.com/lpiccinelli-eth/UniDepth"' in msg
    assert "teacher.weights" in msg and "HF_HUB_OFFLINE=1" in msg and "teacher.backend=synthetic" in msg
    rgb, _, _ = scene(T=2)
    write_prepared(tmp_path / "v.zarr", rgb)
    with pytest.raises(ImportError, match="not on PyPI"):
        run_teacher(TeacherConfig(backend="unidepth"), tmp_path / "v.zarr", tmp_path / "t.zarr", "v")
    assert not list(tmp_path.glob("t.zarr*"))


def test_given_K_runs_one_frame_at_a_time_with_fresh_copies(fake_unidepth, tmp_path):
    rgb, _, K = scene(T=5)
    rgb[:, 0, 0, 0] = 0  # the fake returns NaN there
    teacher = _teacher(tmp_path, rgb, resolution_level=3, weights="lpiccinelli/unidepth-v2-vitl14")
    model = fake_unidepth.instances[0]
    assert model.weights == "lpiccinelli/unidepth-v2-vitl14" and model.resolution_level == 3
    assert model.device == "cpu" and not model.training and model.interpolation_mode == "bilinear"
    Ks = np.stack([K * [[1 + 0.1 * i], [1 + 0.1 * i], [1]] for i in range(5)])  # a different K per frame
    Ks_before = Ks.copy()
    out = teacher.predict(rgb, Ks, np.arange(5))
    np.testing.assert_array_equal(Ks, Ks_before)  # the caller's K is never modified
    assert [b for b, _ in model.calls] == [1] * 5  # a batched camera would fail: one call per frame
    for i, (_, K_seen) in enumerate(model.calls):
        np.testing.assert_allclose(K_seen[0].numpy(), Ks[i], rtol=1e-6)  # each call saw an unmodified K
    assert out.depth.shape == (5, *rgb.shape[1:3]) and out.depth.dtype == np.float32
    expected = Ks[:, 0, 0, None, None] / 10 * (1 + rgb[..., 0] / 255.0)
    finite = rgb[..., 0] > 0
    np.testing.assert_allclose(out.depth[finite], expected[finite], rtol=1e-5)
    assert np.isnan(out.depth[:, 0, 0]).all()
    np.testing.assert_array_equal(out.K_used, Ks)
    own = FakeUniDepthV2.own_focal(torch.from_numpy(rgb).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(out.K_pred[:, 0, 0], own, rtol=1e-6)  # its own prediction, not the given K
    assert out.K_pred.dtype == np.float64
    assert out.confidence.dtype == np.float32 and 0 <= out.confidence.min() and out.confidence.max() <= 1
    again = teacher.predict(rgb, Ks, np.arange(5))
    np.testing.assert_array_equal(again.depth, out.depth)


def test_without_K_one_batched_call(fake_unidepth, tmp_path):
    rgb, _, _ = scene(T=4)
    teacher = _teacher(tmp_path, rgb)
    out = teacher.predict(rgb, None, np.arange(4))
    assert [(b, k) for b, k in fake_unidepth.instances[0].calls] == [(4, None)]
    np.testing.assert_array_equal(out.K_used, out.K_pred)


def test_error_to_confidence():
    err = np.array([0.0, 0.1, 0.2, 0.4, 0.8], dtype=np.float32).reshape(1, 1, 5)
    conf = error_to_confidence(np.exp(err))
    assert np.all(np.diff(conf[0, 0]) < 0) and conf[0, 0, 0] == 1.0
    np.testing.assert_allclose(conf[0, 0, 2], np.exp(-1.0), rtol=1e-5)  # median error -> 1/e
    raw = np.exp(err).copy()
    raw[0, 0, 1] = np.nan
    assert np.isnan(error_to_confidence(raw)[0, 0, 1])


def test_run_teacher_unidepth_anchors_K_and_masks_nan(fake_unidepth, tmp_path):
    rgb, _, _ = scene(T=6)
    rgb[2, 5:7, 5:9, 0] = 0  # 8 NaN pixels in frame 2
    path = tmp_path / "vid.zarr"
    write_prepared(path, rgb)  # no intrinsics
    cfg = TeacherConfig(backend="unidepth", device="cpu", anchor_frames=3, batch_size=4)
    summary = run_teacher(cfg, path, tmp_path / "t.zarr", "vid")
    model = fake_unidepth.instances[0]
    # Anchor pass: frames 0, 2 (or 3), 5 in one batch without camera; then one call per frame with the anchor.
    assert model.calls[0] == (3, None)
    main_calls = model.calls[1:]
    assert len(main_calls) == 6
    own = FakeUniDepthV2.own_focal(torch.from_numpy(rgb).permute(0, 3, 1, 2)).numpy()
    anchor_frames = np.unique(np.linspace(0, 5, 3).round()).astype(int)
    f_anchor = np.median(own[anchor_frames])
    for _, K_seen in main_calls:
        np.testing.assert_allclose(K_seen[0, 0, 0].item(), f_anchor, rtol=1e-6)
    g = open_store(tmp_path / "t.zarr", "teacher")
    assert summary["intrinsics_source"] == g.attrs["intrinsics_source"] == "anchored_median"
    np.testing.assert_allclose(g["K_used"][:, 0, 0], f_anchor)
    # Stored K are in prepared (padded) pixels: the window's principal point shifted by the padding.
    h, w = rgb.shape[1:3]
    np.testing.assert_allclose(g["K_used"][0, :2, 2], [(w - 1) / 2 + 3, (h - 1) / 2 + 2])
    np.testing.assert_allclose(g["K_pred"][:, 0, 0], own, rtol=1e-6)
    assert g.attrs["invalid_reasons"]["non_finite"] == 8 and g.attrs["frames_with_invalid"] == 1
    assert g["valid"][2].sum() == g["valid"][0].sum() - 8
    assert g.attrs["teacher"]["name"] == "unidepth" and g.attrs["teacher"]["resolution_level"] == 0
    assert g.attrs["provenance"]["versions"]["unidepth"] == "absent"  # the stand-in is not a distribution


def test_weights_id(tmp_path):
    assert weights_id("lpiccinelli/unidepth-v2-vits14") == "lpiccinelli/unidepth-v2-vits14"
    folder = tmp_path / "unidepth-v2-vits14"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    wid = weights_id(str(folder))
    assert wid == f"local:unidepth-v2-vits14:{file_sha256(folder / 'model.safetensors')[:16]}"
    assert str(tmp_path) not in wid  # no absolute paths in outputs
