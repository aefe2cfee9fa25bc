"""``infer_image`` and ``videomamba-depth infer-image``: the first frame of ``infer`` with fresh states, the
intrinsics paths, the written files, and bad input that writes nothing (one line, exit 2)."""

import json

import cv2
import numpy as np
import pytest
import torch
from test_evaluate import temporal_model
from test_infer import read_ply

from videomamba_depth import cli
from videomamba_depth.camera import make_K, project, save_intrinsics_json
from videomamba_depth.inference.image import infer_image
from videomamba_depth.inference.infer import InferConfig, infer_video
from videomamba_depth.inference.intrinsics import DEFAULT_HFOV_DEG, K_from_hfov
from videomamba_depth.inference.predictor import load_checkpoint
from videomamba_depth.models import save_student
from videomamba_depth.viz import colorize, robust_range
from videomamba_depth.zarrio import open_store

WIDTH, HEIGHT = 90, 60  # not a multiple of 14: the model input is padded
PREPROCESSING = {"long_edge": 70, "pad_multiple": 14}  # recorded in the model file; runs at 70 x 47
PROG = "videomamba-depth infer-image: error: "


def texture(seed: int) -> np.ndarray:
    """A smooth random RGB image ``(HEIGHT, WIDTH, 3)`` uint8 (bilinear upsampling of coarse noise)."""
    coarse = np.random.default_rng(seed).integers(0, 255, (HEIGHT // 10, WIDTH // 10, 3)).astype(np.uint8)
    return cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)


def write_rgb(path, rgb):
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_image")
    (root / "frames").mkdir()
    for t in range(3):  # a lossless "video": a folder of PNG frames
        write_rgb(root / "frames" / f"frame_{t:03d}.png", texture(t))
    save_student(root / "model.safetensors", temporal_model(), PREPROCESSING)
    K = make_K(70.0, 72.0, 44.0, 30.5)
    save_intrinsics_json(root / "K.json", K, WIDTH, HEIGHT)
    np.save(root / "K.npy", K)
    model, info = load_checkpoint(root / "model.safetensors")
    return root, K, model, info["preprocessing"]


@pytest.fixture
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as infer runs with --threads 1: the same reduction order in the kernels
    yield
    torch.set_num_threads(previous)


def test_image_depth_is_the_first_frame_of_infer_with_fresh_states(inputs, tmp_path, one_thread):
    root, K, model, preprocessing = inputs
    infer_video(root / "frames", root / "model.safetensors", tmp_path / "video.zarr",
                InferConfig(device="cpu", threads=1), intrinsics=root / "K.json")
    video = open_store(tmp_path / "video.zarr", "depth")["depth"][:]  # float16 metres
    frames = sorted((root / "frames").iterdir())
    depth = infer_image(model, frames[0], K, preprocessing=preprocessing)
    assert depth.shape == (HEIGHT, WIDTH) and depth.dtype == np.float32
    assert np.isfinite(depth).all() and (depth > 0).all()
    np.testing.assert_array_equal(depth.astype(np.float16), video[0])
    # Later frames of the video carry state, an image never does: frame 1 alone differs from frame 1 of
    # the video (by ~10 float16 steps of 0.0005 m with this model), and running another image first does
    # not change frame 0's depth.
    second = infer_image(model, frames[1], K, preprocessing=preprocessing).astype(np.float16)
    assert np.abs(second.astype(np.float32) - video[1].astype(np.float32)).max() > 4 * 0.0005
    np.testing.assert_array_equal(infer_image(model, frames[0], K, preprocessing=preprocessing), depth)
    # An RGB array gives what its file gives.
    rgb = cv2.cvtColor(cv2.imread(str(frames[0])), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(infer_image(model, rgb, K, preprocessing=preprocessing), depth)


def test_intrinsics_files_arrays_and_hfov_agree(inputs, monkeypatch, capsys):
    root, K, model, preprocessing = inputs
    image = root / "frames" / "frame_000.png"
    depth = infer_image(model, image, K, preprocessing=preprocessing)
    for path in (root / "K.json", root / "K.npy"):
        np.testing.assert_array_equal(infer_image(model, image, path, preprocessing=preprocessing), depth)
    # --hfov is the centred pinhole K of that field of view; another field of view gives another depth.
    wide = infer_image(model, image, hfov_deg=80.0, preprocessing=preprocessing)
    np.testing.assert_array_equal(
        wide, infer_image(model, image, K_from_hfov(WIDTH, HEIGHT, 80.0), preprocessing=preprocessing))
    narrow = infer_image(model, image, hfov_deg=40.0, preprocessing=preprocessing)
    assert np.abs(narrow - wide).max() > 1e-3
    assert "ASSUMING" not in capsys.readouterr().err
    # No K and no hfov, without UniDepthV2: infer's default field of view, said loudly.
    monkeypatch.setattr("videomamba_depth.inference.intrinsics.unidepth_available", lambda: False)
    default = infer_image(model, image, preprocessing=preprocessing)
    assert f"ASSUMING a {DEFAULT_HFOV_DEG:g} degree horizontal field of view" in capsys.readouterr().err
    np.testing.assert_array_equal(
        default, infer_image(model, image, hfov_deg=DEFAULT_HFOV_DEG, preprocessing=preprocessing))
    # Without the model file's preprocessing: the defaults of older files (224 / 14), with a warning.
    infer_image(model, image, K)
    assert "no preprocessing given; assuming long_edge=224, pad_multiple=14" in capsys.readouterr().err


def run_cli(capsys, *args):
    status = cli.main(["infer-image", *map(str, args)])
    return status, capsys.readouterr().err


def test_cli_writes_depth_png_and_ply(inputs, tmp_path, capsys):
    root, K, model, preprocessing = inputs
    a = write_rgb(tmp_path / "a.png", texture(5))
    b = write_rgb(tmp_path / "b.jpg", texture(6))
    out = tmp_path / "out"
    common = ["--checkpoint", root / "model.safetensors", "--intrinsics", root / "K.json", "--out", out,
              "--device", "cpu", "--threads", "1"]
    status, err = run_cli(capsys, a, b, *common, "--ply")
    assert status == 0, err
    assert "2 images at" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.npy", "a.ply", "a.png", "b.npy", "b.ply", "b.png"]
    for image in (a, b):
        depth = np.load(out / f"{image.stem}.npy")
        assert depth.dtype == np.float32 and depth.shape == (HEIGHT, WIDTH)
        np.testing.assert_allclose(depth, infer_image(model, image, K, preprocessing=preprocessing),
                                   rtol=1e-6)
        png = cv2.cvtColor(cv2.imread(str(out / f"{image.stem}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(png, colorize(depth, *robust_range(depth)))
        vertices = read_ply(out / f"{image.stem}.ply")  # one point per pixel, reprojecting to it
        xyz = np.stack([vertices[n] for n in "xyz"], axis=-1).astype(np.float64)
        uv, z = project(xyz, K)
        v, u = np.divmod(np.arange(WIDTH * HEIGHT), WIDTH)
        np.testing.assert_allclose(uv, np.stack([u, v], axis=-1), atol=1e-3)
        np.testing.assert_allclose(z, depth.ravel(), rtol=1e-6)
        rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
        colours = np.stack([vertices[n] for n in ("red", "green", "blue")], axis=-1)
        np.testing.assert_array_equal(colours, rgb.reshape(-1, 3))
    # Existing outputs: refused without --force (nothing touched), replaced with it.
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    (out / "a.npy").write_bytes(b"stale")
    status, err = run_cli(capsys, a, *common)
    assert status == 2 and err.strip() == f"{PROG}{out / 'a.npy'}: exists; pass --force to replace it"
    assert (out / "a.npy").read_bytes() == b"stale"
    status, err = run_cli(capsys, a, *common, "--force")
    assert status == 0, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_default_field_of_view_warned_once_and_geometry_override(inputs, tmp_path, capsys, monkeypatch):
    root, _, model, preprocessing = inputs
    monkeypatch.setattr("videomamba_depth.inference.intrinsics.unidepth_available", lambda: False)
    images = [write_rgb(tmp_path / f"{name}.png", texture(seed)) for name, seed in (("a", 9), ("b", 10))]
    common = ["--checkpoint", root / "model.safetensors", "--device", "cpu", "--threads", "1"]
    status, err = run_cli(capsys, *images, *common, "--out", tmp_path / "out")
    assert status == 0, err
    assert err.count(f"ASSUMING a {DEFAULT_HFOV_DEG:g} degree horizontal field of view") == 1
    for image in images:
        np.testing.assert_array_equal(
            np.load(tmp_path / "out" / f"{image.stem}.npy"),
            infer_image(model, image, hfov_deg=DEFAULT_HFOV_DEG, preprocessing=preprocessing))
    # --long-edge overrides the checkpoint's preprocessing, with infer's warning.
    status, err = run_cli(capsys, images[0], *common, "--hfov", "60", "--long-edge", "42", "--out",
                          tmp_path / "small")
    assert status == 0 and "--long-edge 42 overrides the 70 model.safetensors was trained with" in err
    np.testing.assert_array_equal(
        np.load(tmp_path / "small" / "a.npy"),
        infer_image(model, images[0], hfov_deg=60.0, preprocessing={**preprocessing, "long_edge": 42}))


def bad_case(case, root, tmp_path):
    """(images, extra flags, expected message) of one bad-input case; may prepare files in tmp_path."""
    good = write_rgb(tmp_path / "good.png", texture(7))
    if case == "missing_image":
        return [good, tmp_path / "nope.png"], [], f"{tmp_path / 'nope.png'}: image not found"
    if case == "unreadable_image":  # after a good one: its outputs must not appear either
        (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
        return [good, tmp_path / "broken.png"], [], f"{tmp_path / 'broken.png'}: cannot read this image"
    if case == "bad_K":
        (tmp_path / "bad.json").write_text(json.dumps({"fx": -1.0, "fy": 1.0, "cx": 1.0, "cy": 1.0}))
        return [good], ["--intrinsics", tmp_path / "bad.json"], f"{tmp_path / 'bad.json'}: focal lengths"
    if case == "per_frame_K":
        np.save(tmp_path / "K3.npy", np.stack([make_K(70.0, 72.0, 44.0, 30.5)] * 3))
        return [good], ["--intrinsics", tmp_path / "K3.npy"], f"{tmp_path / 'K3.npy'}: per-frame intrinsics"
    if case == "K_for_other_size":
        save_intrinsics_json(tmp_path / "other.json", make_K(70.0, 72.0, 44.0, 30.5), WIDTH * 2, HEIGHT * 2)
        return ([good], ["--intrinsics", tmp_path / "other.json"],
                f"{tmp_path / 'other.json'}: intrinsics are for {WIDTH * 2}x{HEIGHT * 2} frames")
    if case == "duplicate_stems":
        (tmp_path / "other").mkdir()
        twin = write_rgb(tmp_path / "other" / "good.jpg", texture(8))
        return [good, twin], [], f"{twin}: same output name 'good' as {good}"
    if case == "output_is_input":  # --out is the images' folder: good.png would be overwritten
        return [good], ["--out", tmp_path, "--force"], f"{tmp_path / 'good.png'}: this output is one of"
    if case == "bad_hfov":
        return [good], ["--hfov", "200"], "flags: hfov_deg must be in (0, 180) degrees, got 200"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["missing_image", "unreadable_image", "bad_K", "per_frame_K",
                                  "K_for_other_size", "duplicate_stems", "output_is_input", "bad_hfov"])
def test_bad_input_is_one_line_and_writes_nothing(inputs, tmp_path, capsys, case):
    root = inputs[0]
    images, extra, expected = bad_case(case, root, tmp_path)
    before = sorted(tmp_path.rglob("*"))
    flags = ["--checkpoint", root / "model.safetensors", "--out", tmp_path / "out", "--device", "cpu", *extra]
    status, err = run_cli(capsys, *images, *flags)
    assert status == 2
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(PROG) and expected in errors[0], err
    assert err.strip().splitlines()[-1] == errors[0]
    assert sorted(tmp_path.rglob("*")) == before  # no outputs, no temporary files, no --out folder
