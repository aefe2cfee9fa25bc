"""Bad input: every case fails with an error naming the file and the problem, and leaves no store behind."""

import errno
import json
import os
import re
import shutil

import av
import cv2
import numpy as np
import pytest
from test_evaluate import temporal_model
from video_inputs import H, W, leftovers, smooth_frames, tiny_K, truncate, write_video, write_with_pyav

from videomamba_depth import cli, zarrio
from videomamba_depth.camera import IntrinsicsError, save_intrinsics_json
from videomamba_depth.decode import DecodeConfig, decode_video
from videomamba_depth.manifest import VideoEntry
from videomamba_depth.models import save_student
from videomamba_depth.video.reader import VideoError
from videomamba_depth.video.writer import Mp4Writer
from videomamba_depth.zarrio import open_store, writing_store

BACKENDS = ("decord", "pyav")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return write_video(tmp_path_factory.mktemp("good") / "good.mp4")


def _zero_frames(d):
    """An mp4 whose header was written but which never got a frame (a recorder stopped at once)."""
    path = d / "zero.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=10)
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    container.start_encoding()
    container.close()
    return path


def _mkv_cut(d):
    """Matroska declares its duration up front; cut the file and most frames are missing."""
    full = write_with_pyav(d / "full.mkv", smooth_frames(30))
    return truncate(full, d / "cut.mkv", 0.5)


def _faststart_cut(d):
    """mp4 with the frame index first: the index survives the cut, the frame data does not."""
    full = write_with_pyav(d / "full.mp4", smooth_frames(30), options={"movflags": "faststart"})
    return truncate(full, d / "cut.mp4", 0.6)


def _folder(d, sizes=((W, H),) * 4, corrupt=None):
    folder = d / "frames"
    folder.mkdir()
    for t, (w, h) in enumerate(sizes):
        cv2.imwrite(str(folder / f"{t:02d}.png"), smooth_frames(1, h, w, seed=t)[0])
    if corrupt is not None:
        (folder / f"{corrupt:02d}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    return folder


VIDEO_CASES = {
    "missing": (lambda d: d / "nope.mp4", "nope.mp4: no such file or folder"),
    "empty": (lambda d: (d / "empty.mp4", (d / "empty.mp4").write_bytes(b""))[0], r"empty\.mp4: empty file"),
    "garbage": (
        lambda d: (d / "noise.mp4", (d / "noise.mp4").write_bytes(np.random.default_rng(0).bytes(5000)))[0],
        r"noise\.mp4: not a readable video",
    ),
    "not_a_video": (
        lambda d: (d / "notes.txt", (d / "notes.txt").write_text("hello\n" * 50))[0],
        r"notes\.txt: unsupported file type '\.txt'",
    ),
    "index_cut_off": (
        lambda d: truncate(write_video(d / "full.mp4"), d / "half.mp4", 0.5),
        r"half\.mp4: not a readable video",
    ),
    "data_cut_off": (_faststart_cut, r"cut\.mp4: (truncated or corrupt|corrupt video data|decord failed)"),
    "duration_says_more": (_mkv_cut, r"cut\.mkv: truncated or corrupt video: .* 30 frames, only \d+"),
    "zero_frames": (_zero_frames, r"zero\.mp4: no video stream \(the file holds no frames\)"),
    "empty_folder": (lambda d: (d / "frames", (d / "frames").mkdir())[0], r"frames: folder holds no frames"),
    "mixed_sizes": (
        lambda d: _folder(d, sizes=[(W, H), (W, H), (W - 2, H), (W, H)]),
        rf"02\.png: frame is {W - 2}x{H}, but 00\.png is {W}x{H}",
    ),
    "corrupt_frame": (lambda d: _folder(d, corrupt=2), r"02\.png: cannot read this image"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(VIDEO_CASES))
def test_bad_video(tmp_path, case, backend):
    make, message = VIDEO_CASES[case]
    video = make(tmp_path)
    out = tmp_path / "out" / "bad.zarr"
    with pytest.raises(VideoError, match=message) as info:
        decode_video(VideoEntry(str(video)), out, DecodeConfig(backend=backend), name="bad")
    assert str(tmp_path) in str(info.value)  # the full path as given, not just a base name
    assert leftovers(out.parent, "bad.zarr") == []


def _npy(d, K):
    np.save(d / "K.npy", K)
    return d / "K.npy"


def _json(d, payload):
    (d / "K.json").write_text(json.dumps(payload))
    return d / "K.json"


K0 = tiny_K()
INTRINSICS_CASES = {
    "missing_file": (lambda d: d / "absent.json", r"absent\.json: cannot read intrinsics"),
    "not_3x3": (lambda d: _npy(d, np.eye(4)), r"K\.npy: intrinsics must be 3x3 or \(T,3,3\)"),
    "negative_focal": (
        lambda d: _json(d, {"fx": -100.0, "fy": 100.0, "cx": 30.0, "cy": 20.0}), r"K\.json: focal lengths"
    ),
    "nan": (lambda d: _npy(d, np.where(np.eye(3) == 1, np.nan, 0.0)), r"K\.npy: intrinsics contain NaN"),
    "not_json": (lambda d: (d / "K.json", (d / "K.json").write_text("{fx: 1"))[0], r"K\.json: cannot parse"),
    "wrong_frame_count": (
        lambda d: _npy(d, np.broadcast_to(K0, (11, 3, 3))), r"K\.npy: 11 per-frame intrinsics .* 10 frames"
    ),
    "other_resolution": (
        lambda d: (d / "K.json", save_intrinsics_json(d / "K.json", K0 * [[2], [2], [1]], 2 * W, 2 * H))[0],
        rf"K\.json: intrinsics are for {2 * W}x{2 * H} frames, but .*good\.mp4 is {W}x{H}",
    ),
    "principal_point_outside": (
        lambda d: _npy(d, K0 * [[3], [3], [1]]), r"K\.npy: principal point .* outside the 64x48 frames"
    ),
}


@pytest.mark.parametrize("case", list(INTRINSICS_CASES))
def test_bad_intrinsics(tmp_path, good, case):
    make, message = INTRINSICS_CASES[case]
    intrinsics = make(tmp_path)
    out = tmp_path / "out" / "v.zarr"
    with pytest.raises(IntrinsicsError, match=message):
        decode_video(VideoEntry(str(good), str(intrinsics)), out, DecodeConfig(backend="pyav"), name="v")
    assert leftovers(out.parent, "v.zarr") == []


def test_missing_intrinsics_are_recorded_not_an_error(tmp_path, good):
    out = decode_video(VideoEntry(str(good), None), tmp_path / "v.zarr", DecodeConfig(backend="pyav"))
    group = open_store(out, "frames")
    assert group.attrs["intrinsics"] == "missing" and "K" not in group


def test_one_bad_video_does_not_affect_the_others(tmp_path, good):
    """Each video is its own store (and its own DVC stage): a failure leaves the other stores complete."""
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    outputs = {}
    for name, video in (("first", good), ("broken", bad), ("last", good)):
        try:
            out = tmp_path / f"{name}.zarr"
            outputs[name] = decode_video(VideoEntry(str(video)), out, DecodeConfig(), name=name)
        except VideoError as exc:
            assert "bad.mp4" in str(exc)
    assert sorted(outputs) == ["first", "last"]
    assert sorted(p.name for p in tmp_path.glob("*.zarr*")) == ["first.zarr", "last.zarr"]
    for out in outputs.values():
        assert open_store(out, "frames")["rgb"].shape[0] == 10


# `videomamba-depth infer` outputs: nothing that is not a previous output of ours is ever replaced, and a
# full disk is reported naming the output, with nothing half-written left behind.
@pytest.fixture(scope="module")
def infer_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_inputs")
    save_student(root / "model.safetensors", temporal_model(), {"long_edge": 56, "pad_multiple": 14})
    return write_video(root / "clip.mp4"), root / "model.safetensors"


def _infer(video, model, *args):
    return cli.main(["infer", str(video), "--checkpoint", str(model), "--hfov", "60", "--device", "cpu",
                     *map(str, args)])


def _user_folder(d):
    (d / "mine").mkdir()
    (d / "mine" / "notes.txt").write_text("my work\n")
    return ["--out", d / "mine"]


def _previous_store(d, video, model):
    assert _infer(video, model, "--out", d / "old.zarr") == 0
    return ["--out", d / "old.zarr"]


def _user_points_folder(d):
    (d / "o.points").mkdir()
    (d / "o.points" / "a.txt").write_text("a")
    return ["--out", d / "o.zarr", "--points-every", 1, "--force"]


def _disk_full(*_):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


OUTPUT_CASES = {
    "out_is_a_user_folder": (
        lambda d, v, m, mp: _user_folder(d),
        r"mine: --out exists and is not an output of videomamba-depth infer",
    ),
    "force_never_replaces_a_user_folder": (
        lambda d, v, m, mp: [*_user_folder(d), "--force"], r"mine: --out exists and is not an output"
    ),
    "out_is_a_user_file": (
        lambda d, v, m, mp: ["--out", (d / "r.zarr", (d / "r.zarr").write_text("x"))[0]],
        r"r\.zarr: --out exists and is not an output",
    ),
    "out_is_another_kind_of_store": (
        lambda d, v, m, mp: ["--out", _store_of_kind(d / "p.zarr", "prepared")],
        r"p\.zarr: --out exists and is not",
    ),
    "out_is_the_input_video": (lambda d, v, m, mp: ["--out", v], r"clip\.mp4: --out is the input video"),
    "previous_store_without_force": (
        lambda d, v, m, mp: _previous_store(d, v, m),
        r"old\.zarr: --out exists \(a previous infer output\); pass --force",
    ),
    "preview_is_a_user_video": (
        lambda d, v, m, mp: ["--out", d / "o.zarr", "--preview", write_video(d / "holiday.mp4")],
        r"holiday\.mp4: --preview exists and is not an output",
    ),
    "preview_is_the_input_video": (
        lambda d, v, m, mp: ["--out", d / "o.zarr", "--preview", v],
        r"clip\.mp4: --preview is the input video",
    ),
    "points_folder_is_a_user_folder": (
        lambda d, v, m, mp: _user_points_folder(d), r"o\.points: the point-cloud folder .* is not an output"
    ),
    "disk_full_in_the_store": (
        lambda d, v, m, mp: (mp.setattr(zarrio.TimeWriter, "_flush", _disk_full), ["--out", d / "o.zarr"])[1],
        r"o\.zarr: cannot write the depth store \(No space left on device\); no output was written",
    ),
    "disk_full_in_the_preview": (
        lambda d, v, m, mp: (mp.setattr(Mp4Writer, "write", _disk_full),
                             ["--out", d / "o.zarr", "--preview", d / "p.mp4"])[1],
        r"p\.mp4: cannot write the preview \(No space left on device\); no output was written",
    ),
}


def _store_of_kind(path, kind):
    with writing_store(path, kind, {}):
        pass
    return path


def _snapshot(d):
    return {str(p.relative_to(d)): p.read_bytes() if p.is_file() else None for p in sorted(d.rglob("*"))}


@pytest.mark.parametrize("case", list(OUTPUT_CASES))
def test_bad_infer_output(tmp_path, infer_inputs, monkeypatch, capsys, case):
    setup, message = OUTPUT_CASES[case]
    video = shutil.copy(infer_inputs[0], tmp_path / "clip.mp4")
    args = setup(tmp_path, video, infer_inputs[1], monkeypatch)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    assert _infer(video, infer_inputs[1], *args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(message, err[-1]), err
    assert _snapshot(tmp_path) == before  # the user's files intact, no partial outputs left


def test_force_replaces_previous_outputs_and_stale_partials_of_ours_only(tmp_path, infer_inputs):
    video, model = infer_inputs
    out, preview = tmp_path / "o.zarr", tmp_path / "p.mp4"
    assert _infer(video, model, "--out", out, "--preview", preview, "--points-every", 5) == 0
    first = open_store(out, "depth")["depth"][:]
    # Leftovers of a killed run (our naming pattern) and look-alikes that are not ours.
    ours = [tmp_path / name for name in ("p.partial-4242.mp4", "o.zarr.partial-4242", "o.points.partial-7")]
    ours[0].write_bytes(b"half a video")
    ours[1].mkdir()
    ours[2].mkdir()
    not_ours = [tmp_path / "p.partial-notes.mp4", tmp_path / "o.zarr.partial-backup", tmp_path / "p.mp4.txt"]
    for p in not_ours:
        p.write_text("keep me")
    assert _infer(video, model, "--out", out, "--preview", preview, "--points-every", 5, "--force") == 0
    np.testing.assert_array_equal(open_store(out, "depth")["depth"][:], first)
    assert all(not p.exists() for p in ours)
    assert all(p.read_text() == "keep me" for p in not_ours)
    with av.open(str(preview)) as container:
        assert len(list(container.decode(video=0))) == first.shape[0]
