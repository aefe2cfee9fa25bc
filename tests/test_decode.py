"""decode: both video backends, frame folders, intrinsics, store layout, streaming and the decord guard."""

import json
import os
import signal

import cv2
import numpy as np
import pytest
import tensorstore as ts
from video_inputs import (
    H,
    T,
    W,
    leftovers,
    smooth_frames,
    store_files,
    tiny_K,
    write_video,
    write_with_pyav,
)

from videomamba_depth.camera import save_intrinsics_json
from videomamba_depth.decode import DecodeConfig, decode_video
from videomamba_depth.manifest import VideoEntry
from videomamba_depth.provenance import file_sha256
from videomamba_depth.video.reader import VideoError, natural_key, open_video
from videomamba_depth.zarrio import open_store

BACKENDS = ("decord", "pyav")


def _decode(tmp_path, video, backend="pyav", intrinsics=None, name="v", **config):
    out = tmp_path / "frames" / f"{name}.zarr"
    entry = VideoEntry(str(video), None if intrinsics is None else str(intrinsics), None)
    decode_video(entry, out, DecodeConfig(backend=backend, **config), name=name)
    return open_store(out, "frames"), out


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    frames = smooth_frames()
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames), frames


def test_backends_agree_and_match_source(tmp_path, video):
    path, frames = video
    stores = {b: _decode(tmp_path / b, path, b)[0] for b in BACKENDS}
    for backend, group in stores.items():
        rgb = group["rgb"][:]
        assert rgb.shape == (T, H, W, 3) and rgb.dtype == np.uint8
        # Lossy H.264 with 4:2:0 chroma on a 64x48 clip: about 3 levels off on average, not identical
        # (a broken decode or colour conversion is off by tens).
        assert np.abs(rgb.astype(int) - frames).mean() < 6.0, backend
        attrs = group.attrs
        assert attrs["decoder"]["backend"] == backend and attrs["decoder"]["version"]
        assert attrs["provenance"]["backend"] == backend
        assert attrs["provenance"]["params"] == {"backend": backend, "folder_fps": 30.0, "on_corrupt": "fail"}
        assert attrs["fps"] == 10.0 and attrs["original_size"] == [W, H] and attrs["num_frames"] == T
        # Constant frame rate: timestamps every 1/fps, nothing damaged.
        np.testing.assert_allclose(group["timestamps"][:], np.arange(T) / 10.0, atol=1e-9)
        assert attrs["vfr"] is False and attrs["source"]["container_fps"] == 10.0
        assert not group["corrupt"][:].any() and attrs["corrupt_frames"] == attrs["rejected_packets"] == 0
        assert attrs["source"]["path"] == str(path) and attrs["source"]["sha256"] == file_sha256(path)
        assert attrs["source"]["codec"] == "h264" and attrs["source"]["color_conversion"] == []
        assert attrs["intrinsics"] == "missing" and attrs["intrinsics_file"] is None and "K" not in group
    # Same libavcodec bitstream decoding; only the YUV->RGB conversion may differ.
    diff = np.abs(stores["decord"]["rgb"][:].astype(int) - stores["pyav"]["rgb"][:])
    assert diff.mean() < 1.0 and diff.max() <= 8


def test_store_layout_few_files_and_independent_reader(tmp_path, video):
    path, _ = video
    K = tiny_K()
    save_intrinsics_json(tmp_path / "K.json", K, W, H)
    group, out = _decode(tmp_path, path, "pyav", intrinsics=tmp_path / "K.json")
    # Root metadata + one metadata file and one shard per array.
    assert store_files(out) == ["K/c.0.0.0", "K/zarr.json", "corrupt/c.0", "corrupt/zarr.json",
                                "rgb/c.0.0.0.0", "rgb/zarr.json", "timestamps/c.0", "timestamps/zarr.json",
                                "zarr.json"]
    assert group["rgb"].metadata.dimension_names == ("t", "y", "x", "c")
    assert group["K"].metadata.dimension_names == ("t", "i", "j") and group["K"].attrs["units"] == "pixels"
    for name in ("rgb", "K"):
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out / name)}}
        np.testing.assert_array_equal(ts.open(spec).result().read().result(), group[name][:])
    np.testing.assert_array_equal(group["K"][:], np.broadcast_to(K, (T, 3, 3)))
    assert group.attrs["intrinsics"] == "given"
    assert group.attrs["intrinsics_file"] == {"path": str(tmp_path / "K.json"),
                                              "sha256": file_sha256(tmp_path / "K.json")}
    # No timestamps or absolute paths beyond what the manifest gave: decoding twice gives identical metadata.
    first = (out / "zarr.json").read_text()
    _decode(tmp_path, path, "pyav", intrinsics=tmp_path / "K.json")
    assert (out / "zarr.json").read_text() == first


@pytest.mark.parametrize("backend", BACKENDS)
def test_streams_in_batches(video, backend):
    path, _ = video
    with open_video(path, backend) as source:
        sizes = [len(batch) for batch in source.iter_batches(4)]
        assert source.size == (W, H) and source.fps == 10.0
    assert sizes == [4, 4, 2]


@pytest.mark.parametrize("kind", ["npy_3x3", "npy_per_frame", "json_fx"])
def test_intrinsics_formats(tmp_path, video, kind):
    path, _ = video
    K = tiny_K()
    if kind == "npy_3x3":
        expected = np.broadcast_to(K, (T, 3, 3))
        np.save(tmp_path / "K.npy", K)
        file = tmp_path / "K.npy"
    elif kind == "npy_per_frame":
        expected = np.stack([K * [[1 + 0.01 * t], [1 + 0.01 * t], [1]] for t in range(T)])  # zooming
        np.save(tmp_path / "K.npy", expected)
        file = tmp_path / "K.npy"
    else:
        expected = np.broadcast_to(K, (T, 3, 3))
        file = tmp_path / "K.json"
        file.write_text(json.dumps({"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]}))
    group, _ = _decode(tmp_path, path, "pyav", intrinsics=file)
    np.testing.assert_array_equal(group["K"][:], expected)


def test_frame_folder_natural_order_and_conversions(tmp_path):
    frames = smooth_frames(12, 47, 63)  # odd sizes are fine for frame folders
    folder = tmp_path / "frames_in"
    folder.mkdir()
    for t, frame in enumerate(frames):
        if t == 3:  # grayscale frame: replicated to R=G=B
            cv2.imwrite(str(folder / f"frame_{t}.png"), frame[..., 0])
        elif t == 5:  # RGBA frame: alpha dropped
            cv2.imwrite(str(folder / f"frame_{t}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGRA))
        else:
            cv2.imwrite(str(folder / f"frame_{t}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (folder / "notes.txt").write_text("not a frame")
    (folder / ".hidden.png").write_bytes(b"junk")
    group, _ = _decode(tmp_path, folder, "decord", folder_fps=12.5)  # the video backend is unused for folders
    expected = frames.copy()
    expected[3] = frames[3, ..., :1]
    np.testing.assert_array_equal(group["rgb"][:], expected)  # PNG is lossless: exact, in natural order
    attrs = group.attrs
    assert attrs["decoder"]["backend"] == "opencv" and attrs["fps"] == 12.5 and attrs["vfr"] is False
    np.testing.assert_allclose(group["timestamps"][:], np.arange(12) / 12.5)
    assert attrs["original_size"] == [63, 47] and attrs["num_frames"] == 12
    assert attrs["source"]["sha256"] is None
    assert attrs["source"]["color_conversion"] == ["alpha channel dropped", "grayscale replicated to R=G=B"]
    assert sorted(["frame_10.png", "frame_2.png", "frame_1.png"], key=natural_key) == [
        "frame_1.png", "frame_2.png", "frame_10.png"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_odd_size_and_grayscale_video(tmp_path, backend):
    """FFV1 in Matroska: odd sizes, no frame index (PyAV cannot know the count up front), gray pixels."""
    frames = smooth_frames(8, 47, 63)
    color = write_with_pyav(tmp_path / "odd.mkv", frames, codec="ffv1", pix_fmt="yuv444p")
    group, _ = _decode(tmp_path, color, backend, name="odd")
    assert group["rgb"].shape == (8, 47, 63, 3)
    assert np.abs(group["rgb"][:].astype(int) - frames).mean() < 2.0
    gray = write_with_pyav(tmp_path / "gray.mkv", frames, codec="ffv1", pix_fmt="gray")
    group, _ = _decode(tmp_path, gray, backend, name="gray")
    rgb = group["rgb"][:]
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    assert group.attrs["source"]["color_conversion"] == ["grayscale replicated to R=G=B"]
    assert group.attrs["source"]["pixel_format"] == "gray"


def test_rotated_video_pyav_rotates_decord_refuses(tmp_path):
    frames = np.zeros((4, 48, 64, 3), np.uint8)
    frames[:, :16, :16] = 255  # top-left block
    path = write_with_pyav(tmp_path / "rot.mp4", frames, rotation=90)
    group, _ = _decode(tmp_path, path, "pyav")
    rgb = group["rgb"][:]
    # 90 degrees counter-clockwise: the top-left block ends up bottom-left of a portrait frame.
    assert rgb.shape == (4, 64, 48, 3) and group.attrs["original_size"] == [48, 64]
    assert rgb[0, -8, 8].min() > 200 and rgb[0, 8, 8].max() < 50
    assert group.attrs["source"]["rotation_degrees"] == 90
    with pytest.raises(VideoError, match=r"rot\.mp4.*rotation.*decode\.backend: pyav"):
        _decode(tmp_path, path, "decord", name="rot_decord")


def _source_with_live_worker(path, **kwargs):
    source = open_video(path, "decord", **kwargs)
    assert source.worker_pid > 0
    return source


def test_decord_crash_becomes_error_naming_the_file(video):
    path, _ = video
    with _source_with_live_worker(path) as source:
        os.kill(source.worker_pid, signal.SIGSEGV)
        with pytest.raises(VideoError, match=rf"{path}: decord crashed \(SIGSEGV\)"):
            list(source.iter_batches(4))


def test_decord_stall_is_stopped_after_timeout(video):
    path, _ = video
    with _source_with_live_worker(path, stall_timeout_s=1.0) as source:
        os.kill(source.worker_pid, signal.SIGSTOP)
        with pytest.raises(VideoError, match=rf"{path}: decord stalled for 1 s"):
            list(source.iter_batches(4))
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(source.worker_pid, 0)


def test_failed_decode_keeps_previous_store(tmp_path, video):
    """An exception mid-write leaves nothing new behind, and a store from an earlier run stays intact."""
    path, _ = video
    group, out = _decode(tmp_path, path, "pyav")
    before = group["rgb"][:]
    folder = tmp_path / "broken"
    folder.mkdir()
    for t, frame in enumerate(smooth_frames()):
        cv2.imwrite(str(folder / f"{t:03d}.png"), frame)
    (folder / "007.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # fails while the store is being written
    with pytest.raises(VideoError, match=r"007\.png: cannot read this image"):
        decode_video(VideoEntry(str(folder)), out, DecodeConfig(), name="v")
    np.testing.assert_array_equal(open_store(out, "frames")["rgb"][:], before)
    assert leftovers(out.parent, "v.zarr") == ["v.zarr"]
