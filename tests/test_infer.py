"""``videomamba-depth infer`` end to end on tiny MP4s: original-resolution depth, attributes, preview, PLY
point clouds that reproject to their pixels, bounded writer memory, and bad input that writes nothing."""

import json
import math

import av
import numpy as np
import pytest
from test_evaluate import temporal_model

from videomamba_depth import cli, zarrio
from videomamba_depth.camera import IntrinsicsError, make_K, project, save_intrinsics_json
from videomamba_depth.inference import infer as infer_module
from videomamba_depth.inference.infer import InferConfig, infer_video, points_dir
from videomamba_depth.inference.intrinsics import DEFAULT_HFOV_DEG, K_from_hfov
from videomamba_depth.inference.ply import VERTEX_DTYPE
from videomamba_depth.models import save_student
from videomamba_depth.provenance import file_sha256
from videomamba_depth.video.reader import open_video
from videomamba_depth.video.writer import write_mp4
from videomamba_depth.zarrio import open_store

WIDTH, HEIGHT, FRAMES = 90, 60, 7  # not a multiple of 14: the model input is padded
PREPROCESSING = {"long_edge": 70, "pad_multiple": 14}  # recorded in the model file; infer runs at 70 x 47


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, (HEIGHT, WIDTH + FRAMES, 3)).astype(np.uint8)
    write_mp4(root / "clip.mp4", (texture[:, t : t + WIDTH] for t in range(FRAMES)), fps=12)
    save_student(root / "model.safetensors", temporal_model(), PREPROCESSING)
    K = make_K(70.0, 72.0, 44.0, 30.5)
    save_intrinsics_json(root / "K.json", K, WIDTH, HEIGHT)
    return root, K


def read_ply(path):
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    count = int(next(line for line in header if line.startswith("element vertex")).split()[-1])
    props = [line.split()[1:] for line in header if line.startswith("property")]
    assert props == [["float", "x"], ["float", "y"], ["float", "z"], ["uchar", "red"], ["uchar", "green"],
                     ["uchar", "blue"]]
    return np.frombuffer(data[end:], VERTEX_DTYPE, count=count)


def test_infer_with_intrinsics_preview_and_points(inputs, tmp_path):
    root, K = inputs
    out = tmp_path / "depth.zarr"
    config = InferConfig(device="cpu", points_every=3)
    result = infer_video(root / "clip.mp4", root / "model.safetensors", out, config,
                         intrinsics=root / "K.json", preview=tmp_path / "preview.mp4")
    assert result.num_frames == FRAMES and result.fps > 0
    store = open_store(out, "depth")
    depth = store["depth"][:]
    assert depth.shape == (FRAMES, HEIGHT, WIDTH) and depth.dtype == np.float16
    assert np.isfinite(depth).all() and (depth > 0).all()
    assert store["depth"].attrs["units"] == "m"
    np.testing.assert_allclose(store["K"][:], np.broadcast_to(K, (FRAMES, 3, 3)))
    attrs = store.attrs
    assert attrs["intrinsics"]["source"] == "given"
    assert attrs["intrinsics"]["sha256"] == file_sha256(root / "K.json")
    assert attrs["checkpoint"] == {
        "name": "model.safetensors", "sha256": file_sha256(root / "model.safetensors"),
        "model_config": attrs["checkpoint"]["model_config"], "backends": {"encoder": "cnn", "ssm": "torch"},
        "preprocessing": {**PREPROCESSING,
                          "canonical_focal": attrs["checkpoint"]["model_config"]["canonical_focal"]},
    }
    # The model runs at the geometry it was trained with (from the checkpoint, no flags needed).
    assert attrs["preprocessing"] == {**PREPROCESSING, "from_checkpoint": True}
    assert attrs["geometry"]["padded_size"] == [70, 56] and attrs["geometry"]["resized_size"] == [70, 47]
    assert attrs["fps"] == 12 and attrs["num_frames"] == FRAMES and attrs["size"] == [WIDTH, HEIGHT]
    assert attrs["provenance"]["stage"] == "infer" and attrs["provenance"]["params"]["points_every"] == 3
    assert "/" not in json.dumps(attrs["source"]["name"])  # a file name, never an absolute path
    # The preview decodes: one colour-mapped frame per input frame, at the original size.
    with av.open(str(tmp_path / "preview.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == FRAMES and frames[0].shape == (HEIGHT, WIDTH, 3)
    assert attrs["preview"]["range_m"][0] < attrs["preview"]["range_m"][1]
    # Point clouds of frames 0, 3, 6: one point per pixel, reprojecting to that pixel, coloured by it.
    plys = sorted(points_dir(out).iterdir())
    assert [p.name for p in plys] == ["frame_000000.ply", "frame_000003.ply", "frame_000006.ply"]
    with open_video(root / "clip.mp4", "pyav") as source:
        rgb = np.concatenate(list(source.iter_batches(FRAMES)))
    for ply in plys:
        t = int(ply.stem.split("_")[1])
        vertices = read_ply(ply)
        assert len(vertices) == WIDTH * HEIGHT
        xyz = np.stack([vertices[n] for n in "xyz"], axis=-1).astype(np.float64)
        uv, z = project(xyz, K)
        v, u = np.divmod(np.arange(WIDTH * HEIGHT), WIDTH)
        np.testing.assert_allclose(uv, np.stack([u, v], axis=-1), atol=1e-3)
        np.testing.assert_allclose(z, depth[t].astype(np.float32).ravel(), rtol=1e-3)
        colours = np.stack([vertices[n] for n in ("red", "green", "blue")], axis=-1)
        np.testing.assert_array_equal(colours, rgb[t].reshape(-1, 3))


def test_infer_without_intrinsics_assumes_a_field_of_view_loudly(inputs, tmp_path, monkeypatch, capsys):
    root, _ = inputs
    monkeypatch.setattr("videomamba_depth.inference.intrinsics.unidepth_available", lambda: False)
    out = tmp_path / "depth.zarr"
    assert cli.main(["infer", str(root / "clip.mp4"), "--checkpoint", str(root / "model.safetensors"),
                     "--out", str(out), "--device", "cpu"]) == 0
    assert "ASSUMING a 60 degree horizontal field of view" in capsys.readouterr().err
    store = open_store(out, "depth")
    assert store.attrs["intrinsics"]["source"] == "hfov"
    assert store.attrs["intrinsics"]["hfov_deg"] == DEFAULT_HFOV_DEG
    np.testing.assert_allclose(store["K"][0], K_from_hfov(WIDTH, HEIGHT, DEFAULT_HFOV_DEG))
    assert store["depth"].shape == (FRAMES, HEIGHT, WIDTH)
    # An explicit assumption is recorded as such, without the warning.
    out2 = tmp_path / "hfov.zarr"
    infer_video(root / "clip.mp4", root / "model.safetensors", out2, InferConfig(device="cpu", hfov_deg=90.0))
    assert "ASSUMING" not in capsys.readouterr().err
    K = open_store(out2, "depth")["K"][0]
    assert K[0, 0] == pytest.approx(WIDTH / 2 / math.tan(math.radians(45.0)))


def test_writer_holds_at_most_one_shard(inputs, tmp_path, monkeypatch):
    """Structural memory bound: small shards, and the depth writer never buffers a whole one."""
    root, _ = inputs
    monkeypatch.setattr(zarrio, "MAX_CHUNK_FRAMES", 1)
    monkeypatch.setattr(zarrio, "SHARD_BYTES", 2 * WIDTH * HEIGHT * 2)  # 2 float16 frames per shard
    buffered, written = [], []
    append = zarrio.TimeWriter.append

    def spy(self, frames):
        append(self, frames)
        if self.array.path == "depth":
            buffered.append(self._buffered)
            written.append(self.array.shape[0])
            assert self.shard_t == 2

    monkeypatch.setattr(zarrio.TimeWriter, "append", spy)
    infer_video(root / "clip.mp4", root / "model.safetensors", tmp_path / "d.zarr",
                InferConfig(device="cpu", hfov_deg=60.0))
    assert max(buffered) < 2  # never a whole shard held
    assert written == [0, 2, 2, 4, 4, 6, 6]  # written out shard by shard as the video streams


def test_anchoring_flag_is_recorded(inputs, tmp_path):
    root, _ = inputs
    args = ["infer", str(root / "clip.mp4"), "--checkpoint", str(root / "model.safetensors"),
            "--out", str(tmp_path / "a.zarr"), "--hfov", "60", "--anchoring", "--device", "cpu"]
    assert cli.main(args) == 0
    assert open_store(tmp_path / "a.zarr", "depth").attrs["anchoring"]["enabled"] is True


@pytest.mark.parametrize("problem", ["missing_video", "corrupt_checkpoint", "missing_checkpoint", "bad_K",
                                     "K_for_other_size"])
def test_bad_input_names_the_file_and_writes_nothing(inputs, tmp_path, problem):
    root, K = inputs
    video, checkpoint, intrinsics = root / "clip.mp4", root / "model.safetensors", root / "K.json"
    if problem == "missing_video":
        video, expected = tmp_path / "nope.mp4", "nope.mp4"
    elif problem == "corrupt_checkpoint":
        checkpoint = tmp_path / "broken.safetensors"
        checkpoint.write_bytes((root / "model.safetensors").read_bytes()[:200])
        expected = "broken.safetensors"
    elif problem == "missing_checkpoint":
        checkpoint, expected = tmp_path / "absent.safetensors", "absent.safetensors"
    elif problem == "bad_K":
        intrinsics, expected = tmp_path / "bad.json", "bad.json"
        intrinsics.write_text(json.dumps({"fx": -1.0, "fy": 1.0, "cx": 1.0, "cy": 1.0}))
    else:
        intrinsics, expected = tmp_path / "other.json", "other.json"
        save_intrinsics_json(intrinsics, K, WIDTH * 2, HEIGHT * 2)
    before = set(tmp_path.iterdir())
    with pytest.raises((ValueError, OSError)) as info:
        infer_video(video, checkpoint, tmp_path / "out.zarr", InferConfig(device="cpu", points_every=1),
                    intrinsics=intrinsics, preview=tmp_path / "out.mp4")
    assert expected in str(info.value)
    if problem in ("bad_K", "K_for_other_size"):
        assert isinstance(info.value, IntrinsicsError)
    assert set(tmp_path.iterdir()) == before  # no store, preview, points or partial leftovers


def test_failure_mid_video_leaves_no_outputs(inputs, tmp_path, monkeypatch):
    root, _ = inputs
    calls = []

    def failing(depth, geometry):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("boom")
        return original(depth, geometry)

    original = infer_module.to_original
    monkeypatch.setattr(infer_module, "to_original", failing)
    with pytest.raises(RuntimeError, match="boom"):
        infer_video(root / "clip.mp4", root / "model.safetensors", tmp_path / "out.zarr",
                    InferConfig(device="cpu", hfov_deg=60.0, points_every=1), preview=tmp_path / "p.mp4")
    assert list(tmp_path.iterdir()) == []


def test_geometry_flags_override_the_checkpoint_with_a_warning(inputs, tmp_path, capsys):
    root, _ = inputs
    args = ["infer", str(root / "clip.mp4"), "--checkpoint", str(root / "model.safetensors"), "--hfov", "60",
            "--device", "cpu", "--threads", "1"]
    assert cli.main([*args, "--out", str(tmp_path / "a.zarr"), "--long-edge", "42"]) == 0
    assert "--long-edge 42 overrides the 70 model.safetensors was trained with" in capsys.readouterr().err
    attrs = open_store(tmp_path / "a.zarr", "depth").attrs
    assert attrs["geometry"]["resized_size"] == [42, 28] and attrs["provenance"]["threads"] == 1
    # A model file without recorded preprocessing (older files): the defaults, said loudly.
    save_student(tmp_path / "old.safetensors", temporal_model())
    args[3] = str(tmp_path / "old.safetensors")
    assert cli.main([*args, "--out", str(tmp_path / "b.zarr")]) == 0
    assert "does not record its training preprocessing" in capsys.readouterr().err
    assert open_store(tmp_path / "b.zarr", "depth").attrs["preprocessing"] == {
        "long_edge": 224, "pad_multiple": 14, "from_checkpoint": False,
    }


def test_pipeline_keeps_order_and_raises_background_errors():
    from videomamba_depth.inference.pipeline import Drain, prefetch

    def produce():
        yield from range(5)
        raise OSError("decoder died")

    got = []
    with pytest.raises(OSError, match="decoder died"):
        for item in prefetch(produce(), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]  # every item produced before the error arrives first

    consumed = []
    with Drain(consumed.append, depth=2) as drain:
        for i in range(50):
            drain.put(i)
    assert consumed == list(range(50))

    def fail(item):
        raise ValueError(f"cannot write {item}")

    with pytest.raises(ValueError, match="cannot write 0"), Drain(fail, depth=1) as drain:
        for i in range(100):  # the consumer's error surfaces at a later put or at close
            drain.put(i)
