"""ONNX export of the streaming step: onnxruntime on the CPU, carrying the states, matches PyTorch.

The model is tiny and randomised (``test_models.tiny_model``), so its temporal path is live: a graph that
dropped or mis-wired a state would diverge from PyTorch after the first frame.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from test_models import TINY, randomise_, tiny_model

from videomamba_depth.cli import main
from videomamba_depth.export import (
    OnnxStreamingDepth,
    export_onnx,
    read_export_metadata,
    state_layout,
    zero_states,
)
from videomamba_depth.models import ModelConfig, build_student, require_timm, save_student

MISSING = [m for m in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (pip install 'videomamba-depth[export]')"
)

H, W = 28, 42  # padded to 32 x 64 inside the CNN encoder: s16 2 x 4, s32 1 x 2 cells
FRAMES = 200
# fp32 parity of onnxruntime and PyTorch, relative to the largest depth. The two run the same arithmetic with
# different kernels (conv algorithms, reduction orders), so single-frame results differ by a few float32
# ulps (measured ~4e-7 relative). The SSM state carries those differences to later frames but decays
# (|exp(dt * A)| < 1), so they stay bounded over any length instead of growing: 1e-5, the tolerance of the
# clip / chunk / step equivalence tests, leaves over 10x headroom.
TOL = 1e-5


def video(frames: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A texture panning a pixel a frame, brightness drifting: ``(T, H, W, 3) uint8`` and ``K (3, 3)``."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height, width + frames, 3)).astype(np.float32)
    rgb = np.stack([texture[:, t : t + width] * (0.8 + 0.2 * np.sin(t / 17)) for t in range(frames)])
    K = np.array([[35.0, 0.0, (width - 1) / 2], [0.0, 36.0, (height - 1) / 2], [0.0, 0.0, 1.0]], np.float32)
    return rgb.astype(np.uint8), K


def torch_depths(model, rgb: np.ndarray, K: np.ndarray) -> tuple[np.ndarray, object]:
    states, out = None, []
    with torch.no_grad():
        for frame in rgb:
            depth, states = model.step(torch.from_numpy(frame).permute(2, 0, 1)[None],
                                       torch.from_numpy(K)[None], states)
            out.append(depth[0].numpy())
    return np.stack(out), states


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A saved randomised student, and its fixed-size step exported through the CLI."""
    root = tmp_path_factory.mktemp("export")
    model = tiny_model(1).eval()
    save_student(root / "student.safetensors", model)
    out = root / "step.onnx"
    rc = main(["export", "--checkpoint", str(root / "student.safetensors"), "--format", "onnx",
               "--out", str(out), "--size", str(H), str(W)])
    assert rc == 0 and out.is_file()
    return model, out


def test_onnxruntime_streams_200_frames_like_pytorch(exported, capsys):
    model, path = exported
    rgb, K = video(FRAMES, H, W)
    expected, final_states = torch_depths(model, rgb, K)
    runner = OnnxStreamingDepth(path, threads=1)
    got = np.stack([runner(frame, K) for frame in rgb])
    assert got.shape == (FRAMES, H, W) and got.dtype == np.float32
    diff = np.abs(got - expected)
    with capsys.disabled():
        print(f"\nONNX vs PyTorch, {FRAMES} frames: max |depth diff| {diff.max():.3g} m, "
              f"relative {diff.max() / np.abs(expected).max():.3g}")
    assert diff.max() <= TOL * np.abs(expected).max()
    # The carried states are the ones PyTorch has after the same frames.
    final = [t for _, scale in final_states.items() for t in scale.tensors()]
    for spec, tensor in zip(state_layout(model, H, W), final, strict=True):
        ref = tensor.numpy()
        assert np.abs(runner.states[spec.input_name] - ref).max() <= TOL * max(np.abs(ref).max(), 1e-6)
    # The states are live: the last frame without its history is a different depth map.
    runner.reset()
    alone = runner(rgb[-1], K)
    assert np.abs(alone - expected[-1]).max() > 100 * TOL * np.abs(expected).max()


def test_export_metadata_names_and_shapes(exported):
    model, path = exported
    meta = read_export_metadata(path)
    layout = state_layout(model, H, W)
    assert meta["image_size"] == [H, W] and meta["pad_multiple"] == 32
    assert meta["inputs"] == ["rgb", "K", *(s.input_name for s in layout)]
    assert meta["outputs"] == ["depth", *(s.output_name for s in layout)]
    # TINY: s16 has 1 block, s32 2; 2 x 4 and 1 x 2 feature cells of 32 x 64 padded frames.
    assert [s.input_name for s in layout] == ["state.s16.0.conv", "state.s16.0.ssm", "state.s32.0.conv",
                                              "state.s32.0.ssm", "state.s32.1.conv", "state.s32.1.ssm"]
    shapes = {name: z.shape for name, z in zero_states(meta, H, W).items()}
    assert shapes == {s.input_name: s.shape for s in layout}
    assert shapes["state.s16.0.ssm"][0] == 8 and shapes["state.s32.0.conv"][0] == 2
    runner = OnnxStreamingDepth(path)
    inputs = {i.name: i.shape for i in runner.session.get_inputs()}
    assert inputs["rgb"] == [1, 3, H, W] and inputs["state.s16.0.ssm"] == list(shapes["state.s16.0.ssm"])
    with pytest.raises(ValueError, match=rf"exported for {H}x{W} frames, got 30x42"):
        runner(np.zeros((30, W, 3), np.uint8), np.eye(3))


def test_global_scale_path_exports_with_a_one_row_state(tmp_path):
    model = tiny_model(3, global_scale_blocks=1).eval()
    save_student(tmp_path / "student.safetensors", model)
    out = tmp_path / "step.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "student.safetensors"), "--out", str(out),
                 "--size", str(H), str(W)]) == 0
    meta = read_export_metadata(out)
    specs = {s["input"]: s for s in meta["states"]}
    assert specs["state.global_scale.0.ssm"]["stride"] is None
    assert zero_states(meta, H, W)["state.global_scale.0.ssm"].shape[0] == 1
    rgb, K = video(12, H, W, seed=5)
    expected, _ = torch_depths(model, rgb, K)
    runner = OnnxStreamingDepth(out, threads=1)
    got = np.stack([runner(frame, K) for frame in rgb])
    assert np.abs(got - expected).max() <= TOL * np.abs(expected).max()


@pytest.mark.slow  # the symbolic-shape export takes about 40 s on 2 cores
def test_dynamic_size_export_runs_other_sizes(tmp_path):
    model = tiny_model(2).eval()
    save_student(tmp_path / "student.safetensors", model)
    out = tmp_path / "step.onnx"
    assert main(["export", "--checkpoint", str(tmp_path / "student.safetensors"), "--out", str(out),
                 "--size", str(H), str(W), "--dynamic-size"]) == 0
    runner = OnnxStreamingDepth(out, threads=1)
    assert read_export_metadata(out)["image_size"] is None
    for height, width in ((H, W), (45, 30)):  # 45 x 30: other padding (64 x 32) and token counts
        rgb, K = video(4, height, width, seed=height)
        expected, _ = torch_depths(model, rgb, K)
        runner.reset()
        got = np.stack([runner(frame, K) for frame in rgb])
        assert np.abs(got - expected).max() <= TOL * np.abs(expected).max()


def test_export_errors_are_one_line(tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    assert main(["export", "--checkpoint", str(tmp_path / "junk.safetensors"), "--out",
                 str(tmp_path / "s.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert "junk.safetensors" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "s.onnx").exists()


@pytest.mark.slow  # exporting a ViT-S takes about 20 s on 2 cores
def test_timm_vit_encoder_student_exports(tmp_path):
    """A DINOv2 ViT-S/14 encoder (random weights) exports too; its padding multiple is 14."""
    try:
        require_timm()
    except ImportError as exc:
        pytest.skip(f"timm not importable here: {exc.__cause__}")
    torch.manual_seed(0)
    cfg = ModelConfig.from_dict({**TINY, "encoder": "timm", "timm_pretrained": False})
    model = randomise_(build_student(cfg), 0, keep_zero=("backbone.",)).eval()
    height, width = 42, 56
    export_onnx(model, tmp_path / "vit.onnx", height=height, width=width)
    runner = OnnxStreamingDepth(tmp_path / "vit.onnx", threads=1)
    assert runner.meta["pad_multiple"] == 14
    rgb, K = video(6, height, width, seed=3)
    expected, _ = torch_depths(model, rgb, K)
    got = np.stack([runner(frame, K) for frame in rgb])
    assert np.abs(got - expected).max() <= TOL * np.abs(expected).max()
