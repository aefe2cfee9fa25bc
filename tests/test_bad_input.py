"""Bad input: every case fails with an error naming the file and the problem, and leaves no store behind."""

import errno
import json
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import av
import cv2
import google_crc32c
import numpy as np
import pytest
import torch
import yaml
import zarr
from dvc_project import copy_stages, dvc, entry, make_project, project_params, write_params
from safetensors.torch import load_file, save_file
from test_evaluate import temporal_model
from training_fixtures import TINY_MODEL, tiny_model_config, write_training_video
from video_inputs import (
    H,
    T,
    W,
    corrupt_packets,
    decode_all,
    leftovers,
    smooth_frames,
    tiny_K,
    truncate,
    write_avi,
    write_frames_store,
    write_video,
    write_with_pyav,
)

from videomamba_depth import cli, inspect, zarrio
from videomamba_depth.camera import IntrinsicsError, save_intrinsics_json
from videomamba_depth.decode import DecodeConfig, decode_video
from videomamba_depth.errors import InputError
from videomamba_depth.manifest import VideoEntry
from videomamba_depth.models import ModelConfig, build_student, save_student
from videomamba_depth.models.io import FORMAT, FORMAT_VERSION, METADATA_KEY
from videomamba_depth.pervideo import VideoFailures
from videomamba_depth.video.reader import VideoError
from videomamba_depth.video.writer import Mp4Writer
from videomamba_depth.zarrio import FORMAT_VERSION as STORE_FORMAT_VERSION
from videomamba_depth.zarrio import StoreError, open_store, pack_store, verify_store, writing_store

ROOT = Path(__file__).resolve().parents[1]

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


def _avi_cut(d):
    """AVI keeps its index (idx1) at the end: cut the file and only the header's frame count is left."""
    return truncate(write_avi(d / "full.avi", smooth_frames(60)), d / "cut.avi", 0.6)


# Packets 20, 33 and 45 (P-frames; keyframes every 12) are damaged: the decoder conceals the errors, and the
# damage lasts until the next keyframe: frames 20-23, 33-35 and 45-47.
DAMAGED_PACKETS = [20, 33, 45]
DAMAGED_FRAMES = [20, 21, 22, 23, 33, 34, 35, 45, 46, 47]


def _corrupt_avi(d, name="bad.avi"):
    return corrupt_packets(write_avi(d / name, smooth_frames(60)), DAMAGED_PACKETS)


# Zeroed packets 5 and 17 of 30 (keyframes every 12): the decoder rejects them, so frames 5 and 17 are missing
# and frames 6-11 and 18-23, predicted from them, are damaged: decoded frames 5-10 and 16-21.
REJECTED_PACKETS = [5, 17]


def _rejected_avi(d):
    return corrupt_packets(write_avi(d / "rej.avi", smooth_frames(30)), REJECTED_PACKETS, whole=True)


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
    "avi_cut_off": (
        _avi_cut, r"cut\.avi: truncated or corrupt video: the container declares 60 frames, only \d+ are in"
    ),
    "corrupt_packets": (
        _corrupt_avi,
        r"bad\.avi: corrupt video data: 10 of 60 decoded frames damaged \(first: frame 20 at 1\.333 s\); "
        r"set decode\.on_corrupt: record",
    ),
    "rejected_packets": (
        _rejected_avi,
        r"rej\.avi: .*12 of 28 decoded frames damaged \(first: frame 5 at 0\.400 s\), 2 "
        r"packet\(s\) rejected by the decoder \(first: packet 5 \(Invalid data",
    ),
    "zero_frames": (_zero_frames, r"zero\.mp4: no video stream \(the file holds no frames\)"),
    "empty_folder": (lambda d: (d / "frames", (d / "frames").mkdir())[0], r"frames: folder holds no frames"),
    "mixed_sizes": (
        lambda d: _folder(d, sizes=[(W, H), (W, H), (W - 2, H), (W, H)]),
        rf"02\.png: frame is {W - 2}x{H}, but 00\.png is {W}x{H}",
    ),
    "corrupt_frame": (lambda d: _folder(d, corrupt=2), r"02\.png: cannot read this image"),
}


def _stage_main(stage, name):
    """Run ``stage`` for video ``name``, raising that video's own error (the stage reports all of them)."""
    try:
        stage.main([name])
    except VideoFailures as exc:
        raise exc.errors[name] from None


def _run_decode(d, monkeypatch, video, name="v", **decode):
    """The decode stage's entry point, in ``d`` with a params.yaml naming ``video``; returns the store."""
    from stages import decode as stage

    write_params(d, {"videos": {name: {"video": str(video)}}, "decode": decode})
    monkeypatch.chdir(d)
    _stage_main(stage, name)
    return d / "data" / "frames" / f"{name}.zarr.zip"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(VIDEO_CASES))
def test_bad_video(tmp_path, monkeypatch, case, backend):
    make, message = VIDEO_CASES[case]
    video = make(tmp_path)
    with pytest.raises(VideoError, match=message) as info:
        _run_decode(tmp_path, monkeypatch, video, "bad", backend=backend)
    assert str(tmp_path) in str(info.value)  # the full path as given, not just a base name
    assert len(str(info.value).splitlines()) == 1
    assert leftovers(tmp_path / "data" / "frames", "bad.zarr.zip") == []


# Valid videos decord cannot decode (its frame copy assumes unpadded rows): the error names the backend and
# says PyAV reads them, which the test checks.
DECORD_ONLY_FAILURES = {f"tiny_{w}x{h}": (w, h) for w, h in ((16, 16), (24, 24), (48, 32))}


@pytest.mark.parametrize("case", list(DECORD_ONLY_FAILURES))
def test_decord_failure_on_a_valid_video_points_to_pyav(tmp_path, monkeypatch, case):
    w, h = DECORD_ONLY_FAILURES[case]
    frames = smooth_frames(5, h, w)
    video = write_video(tmp_path / f"{case}.mp4", frames)
    with pytest.raises(VideoError) as info:
        _run_decode(tmp_path, monkeypatch, video, "tiny", backend="decord")
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert re.fullmatch(
        rf"{tmp_path}/{case}\.mp4: decord failed while decoding frames 0-4 \(DECORDError: .+\); the video is "
        r"valid: PyAV decodes all 5 frames, so decode\.backend: pyav reads it", message
    ), message
    rgb = open_store(_run_decode(tmp_path, monkeypatch, video, "tiny", backend="pyav"), "frames")["rgb"][:]
    assert rgb.shape == (5, h, w, 3) and np.abs(rgb.astype(int) - frames).mean() < 10


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
    "size_not_a_number": (
        lambda d: _json(d, {"K": K0.tolist(), "width": "64px", "height": H}),
        r"K\.json: 'width' must be a positive whole number of pixels, got '64px'",
    ),
    "npy_of_strings": (
        lambda d: _npy(d, K0.astype(str)),
        r"K\.npy: intrinsics must be a numeric array \(pixels\), got dtype <U",
    ),
    "focal_as_string": (
        lambda d: _json(d, {"fx": "100", "fy": 100.0, "cx": 30.0, "cy": 20.0}),
        r"K\.json: 'fx' must be a number \(pixels\), got '100'",
    ),
    "matrix_of_strings": (
        lambda d: _json(d, {"K": K0.astype(str).tolist()}),
        r"K\.json: 'K' must hold numbers \(pixels\), got '",
    ),
    "boolean_entry": (
        lambda d: _json(d, [[True, 0, 31], [0, 1, 23], [0, 0, 1]]), r"K\.json: 'K' must hold numbers .* True"
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


# ---------------------------------------------------------------------------------------------------------
# Damaged stores: every reader (here the prepare stage and inspect) refuses them, naming store, array, shard.

RGB_SHARD = "rgb/c.0.0.0.0"


def _drop_first_chunk(store):
    """Mark the first chunk of the rgb shard as not stored, with a valid index checksum (a lost chunk)."""
    array = zarr.open_array(store / "rgb", mode="r")
    index_bytes = 16 * (array.shards[0] // array.chunks[0])
    shard = store / RGB_SHARD
    data = bytearray(shard.read_bytes())
    index = np.frombuffer(bytes(data[-index_bytes - 4 : -4]), "<u8").copy()
    index[:2] = 2**64 - 1
    data[-index_bytes - 4 :] = index.tobytes() + np.uint32(google_crc32c.value(index.tobytes())).tobytes()
    shard.write_bytes(bytes(data))


def _set_format_version(store, version):
    meta = json.loads((store / "zarr.json").read_text())
    meta["attributes"]["format_version"] = version
    (store / "zarr.json").write_text(json.dumps(meta))


STORE_CASES = {
    "shard_deleted": (lambda s: (s / RGB_SHARD).unlink(), r"/rgb: 1 shard file\(s\) missing \(c.0.0.0.0\)"),
    "metadata_shard_deleted": (lambda s: (s / "K/c.0.0.0").unlink(), r"/K: 1 shard file\(s\) missing"),
    "shard_truncated": (
        lambda s: truncate(s / RGB_SHARD, s / RGB_SHARD, 0.7),
        r"/rgb: shard c.0.0.0.0 is truncated or corrupt \(its index checksum does not match\)",
    ),
    "shard_emptied": (
        lambda s: (s / RGB_SHARD).write_bytes(b""), r"/rgb: shard c.0.0.0.0 is truncated \(0 bytes"
    ),
    "chunk_lost": (_drop_first_chunk, r"/rgb: shard c.0.0.0.0 lacks 1 chunk\(s\) inside the array"),
    "older_format": (
        lambda s: _set_format_version(s, 1), rf"format_version 1; this code reads {STORE_FORMAT_VERSION}"
    ),
}


def _frames_store(d, frames=None, damage=None):
    """The decode stage's store of video ``v`` (packed), from a folder store that ``damage`` was done to."""
    folder = write_frames_store(d / "v.zarr", smooth_frames() if frames is None else frames, tiny_K())
    if damage is not None:
        damage(folder)
    store = d / "data" / "frames" / "v.zarr.zip"
    store.parent.mkdir(parents=True)
    pack_store(folder, store)
    return store


def _run_prepare(d, monkeypatch):
    from stages import prepare as stage

    write_params(d, {"videos": {"v": {"video": "unused.mp4"}},
                     "prepare": {"long_edge": 32, "pad_multiple": 14}})
    monkeypatch.chdir(d)
    _stage_main(stage, "v")
    return d / "data" / "prepared" / "v.zarr.zip"


@pytest.mark.parametrize("case", list(STORE_CASES))
def test_damaged_store_fails_the_stage_that_reads_it(tmp_path, monkeypatch, case):
    damage, message = STORE_CASES[case]
    store = _frames_store(tmp_path, damage=damage)
    with pytest.raises(StoreError, match=message) as info:
        _run_prepare(tmp_path, monkeypatch)
    assert str(info.value).startswith(f"{store.relative_to(tmp_path)}: incomplete or corrupt store")
    assert leftovers(tmp_path / "data" / "prepared", "v.zarr.zip") == []


@pytest.mark.parametrize("packed", [False, True], ids=["folder", "packed"])
@pytest.mark.parametrize("case", list(STORE_CASES))
def test_inspect_flags_damaged_store(tmp_path, capsys, case, packed):
    damage, message = STORE_CASES[case]
    store = _frames_store(tmp_path, damage=damage)
    if not packed:
        store = tmp_path / "v.zarr"
    assert cli.main(["inspect", str(store)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith(f"videomamba-depth inspect: error: {store}: incomplete or corrupt store: ")
    assert len(err.strip().splitlines()) == 1 and re.search(message, err), err
    # The report still prints, problems first; damaged arrays get no statistics (they would read as zeros).
    assert "PROBLEMS: incomplete or corrupt store" in out and re.search(message, out)
    damaged = {problem.array for problem in verify_store(store) if problem.array}
    no_stats = {a["path"] for a in inspect.describe_store(store)["arrays"] if a["stats"] is None}
    assert no_stats == damaged


def test_black_frames_are_stored_not_mistaken_for_missing_chunks(tmp_path, monkeypatch):
    """Chunks equal to the fill value (black frames, all-False masks) are written: verification passes."""
    _frames_store(tmp_path, np.zeros((T, H, W, 3), np.uint8))
    prepared = open_store(_run_prepare(tmp_path, monkeypatch), "prepared")
    assert prepared["rgb"].shape[0] == T and not prepared["rgb"][:].any()


# ---------------------------------------------------------------------------------------------------------
# Damaged and oddly timed videos that are kept: what the store records about them.


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_frames_recorded_when_asked(tmp_path, monkeypatch, backend):
    """decode.on_corrupt: record keeps the video; the frames marked are exactly those that decode wrong."""
    clean = decode_all(write_avi(tmp_path / "clean.avi", smooth_frames(60)))
    video = _corrupt_avi(tmp_path)
    store = _run_decode(tmp_path, monkeypatch, video, backend=backend, on_corrupt="record")
    group = open_store(store, "frames")
    rgb = group["rgb"][:]
    assert rgb.shape[0] == 60
    # Concealed frames are visibly off (green blocks, smearing: tens of levels); intact ones are identical.
    broken = np.abs(rgb.astype(int) - clean).mean(axis=(1, 2, 3)) > 1.0
    np.testing.assert_array_equal(np.flatnonzero(broken), DAMAGED_FRAMES)
    np.testing.assert_array_equal(np.flatnonzero(group["corrupt"][:]), DAMAGED_FRAMES)
    assert group.attrs["corrupt_frames"] == len(DAMAGED_FRAMES) and group.attrs["rejected_packets"] == 0
    assert group.attrs["provenance"]["params"]["on_corrupt"] == "record"
    if backend == "decord":  # what decord cannot report comes from PyAV, and the store says so
        assert group.attrs["source"]["damage_and_timing_from"] == f"pyav {av.__version__}"


# Frame numbers (at 15 frames/s) of the coded frames of a sparse AVI, as a screen recorder writes when the
# picture does not change: the index holds empty "repeat the previous frame" entries between them.
SPARSE_PTS = [0, 11, 17, 24, 30, 41, 50, 52, 60, 70, 71, 72, 90]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_timestamps_are_kept_not_taken_for_truncation(tmp_path, monkeypatch, backend):
    frames = smooth_frames(len(SPARSE_PTS))
    video = write_avi(tmp_path / "sparse.avi", frames, pts=SPARSE_PTS)
    with av.open(str(video)) as container:  # the fixture is what the issue describes
        assert container.streams.video[0].frames == SPARSE_PTS[-1] + 1
    store = _run_decode(tmp_path, monkeypatch, video, backend=backend)
    group = open_store(store, "frames")
    assert group["rgb"].shape[0] == len(SPARSE_PTS) and group.attrs["num_frames"] == len(SPARSE_PTS)
    # One stored frame per coded frame, in order (no duplicates for the empty entries); decord's colour
    # conversion differs from PyAV's by a level or so.
    assert np.abs(group["rgb"][:].astype(int) - decode_all(video)).mean() < 1.0
    np.testing.assert_allclose(group["timestamps"][:], np.array(SPARSE_PTS) / 15, atol=1e-9)
    assert group["timestamps"].dtype == np.float64 and group["timestamps"].attrs["units"] == "s"
    assert group.attrs["vfr"] is True and group.attrs["source"]["container_fps"] == 15.0
    assert group.attrs["fps"] == pytest.approx((len(SPARSE_PTS) - 1) / (SPARSE_PTS[-1] / 15))
    assert not group["corrupt"][:].any() and group.attrs["corrupt_frames"] == 0
    # prepare carries the per-frame timing through.
    prepared = open_store(_run_prepare(tmp_path, monkeypatch), "prepared")
    np.testing.assert_array_equal(prepared["timestamps"][:], group["timestamps"][:])
    assert prepared.attrs["vfr"] is True and prepared.attrs["fps"] == group.attrs["fps"]


def test_rejected_packets_leave_gaps_in_the_timestamps(tmp_path, monkeypatch):
    """decode.on_corrupt: record with PyAV: frames of rejected packets are missing, visible in timestamps."""
    video = _rejected_avi(tmp_path)
    store = _run_decode(tmp_path, monkeypatch, video, backend="pyav", on_corrupt="record")
    group = open_store(store, "frames")
    kept = [t for t in range(30) if t not in REJECTED_PACKETS]
    assert group["rgb"].shape[0] == len(kept) == 28
    np.testing.assert_allclose(group["timestamps"][:], np.array(kept) / 15, atol=1e-9)
    np.testing.assert_array_equal(np.flatnonzero(group["corrupt"][:]), [*range(5, 11), *range(16, 22)])
    assert group.attrs["rejected_packets"] == 2 and group.attrs["corrupt_frames"] == 12
    assert group.attrs["vfr"] is True  # the gaps make the timing irregular




# --- intrinsics through `videomamba-depth infer` ------------------------------------------------------------


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A valid tiny student file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    save_student(path, build_student(tiny_model_config()), {"long_edge": 56, "pad_multiple": 14})
    return path


def _infer(capsys, video, checkpoint, out, *extra):
    """Run the CLI; return its exit status and its stderr lines."""
    args = ["infer", str(video), "--checkpoint", str(checkpoint), "--out", str(out), "--device", "cpu"]
    status = cli.main([*args, *extra])
    return status, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("case", list(INTRINSICS_CASES))
def test_bad_intrinsics_infer(tmp_path, good, student, capsys, case):
    make, message = INTRINSICS_CASES[case]
    intrinsics = make(tmp_path)
    out = tmp_path / "out" / "depth.zarr"
    status, lines = _infer(capsys, good, student, out, "--intrinsics", str(intrinsics))
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith("videomamba-depth infer: error: ") and re.search(message, lines[0]), lines
    assert str(intrinsics) in lines[0]
    assert leftovers(out.parent, "depth.zarr") == []


# --- student checkpoints: infer, evaluate ------------------------------------------------------------------


def _student_file(out, tensors, model_config):
    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": model_config}
    save_file(tensors, str(out), metadata={METADATA_KEY: json.dumps(header)})


def _edited(out, student, tensors=lambda t: t, **config_changes):
    """The valid student with its tensors and/or its config edited."""
    config = {**tiny_model_config().to_dict(), **config_changes}
    _student_file(out, tensors(load_file(student)), config)


def _drop_first(tensors):
    return dict(list(tensors.items())[1:])


def _first_as_half(tensors):
    first = next(iter(tensors))
    return {**tensors, first: tensors[first].half()}


# A 2 KB file whose config declares a 300 GiB model (widths 8192 everywhere, 16 blocks per scale).
HUGE = {**ModelConfig().to_dict(), "widths": [8192] * 4, "decoder_widths": [8192] * 4, "cnn_blocks": [16] * 4}

CHECKPOINT_CASES = {
    "missing": (lambda out, s: None, r"student model file not found"),
    "not_safetensors": (
        lambda out, s: out.write_text("hello"), r"not a readable safetensors file, corrupt or truncated"
    ),
    "truncated": (
        lambda out, s: truncate(s, out, 0.5), r"not a readable safetensors file, corrupt or truncated"
    ),
    "foreign": (
        lambda out, s: save_file({"w": torch.zeros(2)}, str(out)), r"not a VideoMambaDepth student file"
    ),
    "metadata_not_matching_weights": (
        lambda out, s: _edited(out, s, widths=[16, 16, 16, 16]),
        r"tensors do not match the file's model_config: \d+ of another shape or dtype \(file vs config\): "
        r"encoder\.backbone\.stem\.0\.weight \[4, 3, 3, 3\] F32 vs \[8, 3, 3, 3\] torch\.float32",
    ),
    "tensor_missing": (
        lambda out, s: _edited(out, s, _drop_first),
        r"tensors do not match the file's model_config: 1 missing: [\w.]+$",
    ),
    "tensor_of_other_dtype": (
        lambda out, s: _edited(out, s, _first_as_half),
        r"1 of another shape or dtype .* F16 vs .* torch\.float32",
    ),
    "huge_widths_in_2kb": (
        lambda out, s: _student_file(out, {"w": torch.zeros(4)}, HUGE),
        r"tensors do not match .*: \d+ missing: .*; 1 unexpected: w",
    ),
    "absurd_widths": (
        lambda out, s: _student_file(out, {"w": torch.zeros(4)}, {**HUGE, "widths": [10**9] * 4}),
        r"model_config: widths must be in \[1, 8192\], got \[1000000000",
    ),
    "config_not_a_mapping": (
        lambda out, s: _student_file(out, {"w": torch.zeros(4)}, [1, 2]), r"model_config must be a mapping"
    ),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoint_infer(tmp_path, good, student, capsys, case):
    make, message = CHECKPOINT_CASES[case]
    checkpoint = tmp_path / "model.safetensors"
    make(checkpoint, student)
    out = tmp_path / "out" / "depth.zarr"
    status, lines = _infer(capsys, good, checkpoint, out)
    assert status == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"videomamba-depth infer: error: {checkpoint}"), lines
    assert re.search(message, lines[0]), lines
    assert not out.parent.exists()


@pytest.mark.parametrize(
    "case", ["missing", "truncated", "metadata_not_matching_weights", "huge_widths_in_2kb"]
)
def test_bad_checkpoint_evaluate_stage(tmp_path, student, monkeypatch, case):
    from stages import evaluate as stage

    make, message = CHECKPOINT_CASES[case]
    write_params(tmp_path, {"evaluate": {"videos": ["v"], "device": "cpu"}})
    (tmp_path / "data" / "train").mkdir(parents=True)
    make(tmp_path / "data" / "train" / "model_best.safetensors", student)
    monkeypatch.chdir(tmp_path)
    with pytest.raises((InputError, OSError), match=message) as info:
        stage.main([])
    assert str(info.value).startswith("data/train/model_best.safetensors")
    assert not (tmp_path / "data" / "evaluate").exists()


def _limit_address_space():
    limit = 4 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def test_crafted_checkpoint_is_rejected_before_allocating(tmp_path, good):
    """The 2 KB file declaring a 300 GiB model fails with its one line in a process limited to 4 GiB of
    address space: nothing of the declared size is ever allocated."""
    checkpoint = tmp_path / "huge.safetensors"
    _student_file(checkpoint, {"w": torch.zeros(4)}, HUGE)
    assert checkpoint.stat().st_size < 2048  # the model config in the metadata, and 16 bytes of weights
    with torch.device("meta"):
        declared = sum(p.numel() * 4 for p in build_student(ModelConfig.from_dict(HUGE)).parameters())
    assert declared > 100 * 2**30
    run = subprocess.run(
        [sys.executable, "-m", "videomamba_depth.cli", "infer", str(good), "--checkpoint", str(checkpoint),
         "--out", str(tmp_path / "o.zarr"), "--device", "cpu"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
        preexec_fn=_limit_address_space, timeout=300,
    )
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1, run.stderr
    assert re.search(r"huge\.safetensors: tensors do not match the file's model_config", lines[0])


# --- resumable training state ------------------------------------------------------------------------------


def _edit_state(path, edit):
    state = torch.load(path, weights_only=True)
    edit(state)
    torch.save(state, path)


def _widen_first_weight(state):
    first = next(iter(state["model"]))
    state["model"][first] = torch.zeros(1, *state["model"][first].shape[1:])


STATE_CASES = {
    "weights_of_other_shapes": (
        lambda p: _edit_state(p, _widen_first_weight),
        r"state\.pt: weights do not fit the model \(1 of another shape or dtype .*\): starting fresh",
    ),
    "weights_missing": (
        lambda p: _edit_state(p, lambda s: s.pop("model")),
        r"state\.pt: no model weights in the resumable state: starting fresh",
    ),
    "truncated": (
        lambda p: p.write_bytes(p.read_bytes()[:1000]),
        r"state\.pt: unreadable resumable state .*: starting fresh",
    ),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_bad_training_state_starts_fresh_and_says_why(tmp_path, monkeypatch, capsys, case):
    from stages import train as stage

    write_training_video(tmp_path, "a", frames=12)
    train = {
        "videos": ["a"], "val_frames": 4, "clip_len": 4, "clip_stride": 2, "batch_size": 1, "chunk_size": 2,
        "steps": 2, "warmup_steps": 1, "val_every": 2, "log_every": 1, "checkpoint_every": 1,
        "image_every": 0, "device": "cpu", "threads": 1, "model": TINY_MODEL,
    }
    write_params(tmp_path, {"train": train})
    monkeypatch.chdir(tmp_path)
    stage.main([])
    tamper, message = STATE_CASES[case]
    tamper(tmp_path / "data" / "train" / "state" / "state.pt")
    capsys.readouterr()
    stage.main([])
    assert re.search(message, capsys.readouterr().err)
    steps = np.loadtxt(tmp_path / "data/train/dvclive/plots/metrics/train/total.tsv", skiprows=1, usecols=0)
    assert list(steps) == [1, 2]  # a fresh run: its own curves, not appended to the old ones


# --- entry points: one line for expected errors, tracebacks with VMD_DEBUG=1 and for bugs -------------------


def _params(d, params):
    write_params(d, params)


ENTRY_POINT_CASES = {
    "stage_unknown_param": (
        lambda d: _params(d, {"videos": {"clip": {"video": "clip.mp4"}}, "decode": {"bogus": 1}}),
        ["stages.decode", "clip"],
        r"decode: error: params\.yaml: decode: unknown key\(s\) \['bogus'\]",
    ),
    "stage_without_params": (
        lambda d: None, ["stages.decode", "clip"], r"decode: error: params\.yaml: cannot read params file"
    ),
    "stage_missing_video": (
        lambda d: _params(d, {"videos": {"clip": {"video": "clip.mp4"}}, "decode": {}}),
        ["stages.decode", "clip"],
        r"decode: error: clip: clip\.mp4: no such file or folder \(1 of 1 videos failed",
    ),
    "cli_inspect_missing_store": (
        lambda d: None,
        ["videomamba_depth.cli", "inspect", "none.zarr"],
        r"videomamba-depth inspect: error: none\.zarr: no such store",
    ),
    "cli_infer_impossible_flag": (
        lambda d: None,
        ["videomamba_depth.cli", "infer", "v.mp4", "--checkpoint", "m.safetensors", "--out", "o.zarr",
         "--long-edge", "0"],
        r"videomamba-depth infer: error: flags: long_edge, .* must be >= 1",
    ),
}


def _run_module(cwd, module_args, **env):
    return subprocess.run(
        [sys.executable, "-m", *module_args], capture_output=True, text=True, cwd=cwd, timeout=300,
        env={**{k: v for k, v in os.environ.items() if k != "VMD_DEBUG"}, "PYTHONPATH": str(ROOT), **env},
    )


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "VMD_DEBUG"])
@pytest.mark.parametrize("case", list(ENTRY_POINT_CASES))
def test_expected_errors_are_one_line(tmp_path, case, debug):
    setup, module_args, message = ENTRY_POINT_CASES[case]
    setup(tmp_path)
    run = _run_module(tmp_path, module_args, **({"VMD_DEBUG": "1"} if debug else {}))
    lines = run.stderr.strip().splitlines()
    if debug:
        assert run.returncode == 1 and lines[0] == "Traceback (most recent call last):", run.stderr
        assert re.search(message.split("error: ", 1)[1], lines[-1]), run.stderr
    else:
        assert run.returncode == 2 and len(lines) == 1 and re.fullmatch(message + ".*", lines[0]), run.stderr
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written <= {"params.yaml", "data/manifest.yaml"}  # nothing of a stage's output


def test_bugs_keep_their_traceback(tmp_path):
    run = _run_module(tmp_path, ["stages.decode", "clip"], VMD_DEBUG="0")
    assert run.returncode == 2  # VMD_DEBUG=0 is off
    code = "from videomamba_depth.errors import run_main; run_main(lambda: [][1])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 1 and "Traceback (most recent call last)" in run.stderr
    assert run.stderr.strip().splitlines()[-1] == "IndexError: list index out of range"


# --- manifest names through `dvc repro` (tests/dvc_project.py) -------------------------------------------

HOSTILE_NAMES = {
    "parent_dirs": ("../../../victim", r"video name '\.\./\.\./\.\./victim' must start with a letter"),
    "shell": ("x;touch PWNED", r"video name 'x;touch PWNED' must start with a letter or digit"),
    "space": ("my clip", r"video name 'my clip' must start with a letter or digit"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(HOSTILE_NAMES))
def test_hostile_manifest_names_are_refused_before_anything_happens(tmp_path, case):
    name, message = HOSTILE_NAMES[case]
    project = make_project(tmp_path)
    victim = tmp_path / "victim.zarr"
    (victim / "keep.txt").parent.mkdir()
    (victim / "keep.txt").write_text("the user's file")
    params = project_params()
    write_params(project, params)
    dvc(project, "repro")
    params["videos"][name] = entry("videos/a.mp4")
    write_params(project, params)
    result = dvc(project, "repro", check=False)
    assert result.returncode != 0 and re.search(message, result.stdout + result.stderr)
    assert (victim / "keep.txt").read_text() == "the user's file"
    assert not list(tmp_path.rglob("PWNED"))
    assert sorted(p.name for p in (project / "data/frames").iterdir()) == ["a.zarr.zip", "b.zarr.zip"]


@pytest.mark.slow
def test_a_failed_rerun_keeps_the_previous_good_store(tmp_path):
    """DVC deletes ordinary outputs before a stage runs; ours persist, so a failing re-run loses nothing."""
    project = make_project(tmp_path)
    params = project_params()
    write_params(project, params)
    dvc(project, "repro")
    before = (project / "data/frames/a.zarr.zip").read_bytes()
    # Newly corrupt input: the store made from the good file is kept, and DVC records nothing new.
    (project / "videos" / "a.mp4").write_bytes(b"\x00" * 4096)
    result = dvc(project, "repro", check=False)
    assert result.returncode != 0 and "videos/a.mp4: not a readable video" in result.stdout
    assert (project / "data/frames/a.zarr.zip").read_bytes() == before
    # Bad params: refused before any store is touched.
    params["prepare"]["long_edge"] = -3
    write_params(project, params)
    result = dvc(project, "repro", "-s", "prepare", check=False)
    assert result.returncode != 0 and re.search(r"prepare: .*got -3", result.stdout + result.stderr)
    assert open_store(project / "data/prepared/a.zarr.zip", "prepared")["rgb"].shape[0] == 6


@pytest.mark.slow
def test_hostile_synth_names_are_refused(tmp_path):
    project = tmp_path / "project"
    project.mkdir()
    (tmp_path / "victim2").mkdir()
    (tmp_path / "victim2" / "keep.txt").write_text("the user's file")
    copy_stages(project, ("synth",))
    synth = yaml.safe_load((ROOT / "params.yaml").read_text())["synth"]
    write_params(project, {"synth": {**synth, "videos": {"../../victim2": 9, "x;touch PWNED": 1}}})
    result = dvc(project, "repro", check=False)
    assert result.returncode != 0
    assert re.search(r"videos: name '\.\./\.\./victim2' must start with", result.stdout + result.stderr)
    assert (tmp_path / "victim2" / "keep.txt").read_text() == "the user's file"
    assert not list(tmp_path.rglob("PWNED")) and not (project / "data/synth").exists()


# `videomamba-depth infer` outputs: nothing that is not a previous output of ours is ever replaced, and a
# full disk is reported naming the output, with nothing half-written left behind.
@pytest.fixture(scope="module")
def infer_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer_inputs")
    save_student(root / "model.safetensors", temporal_model(), {"long_edge": 56, "pad_multiple": 14})
    return write_video(root / "clip.mp4"), root / "model.safetensors"


def _infer_cli(video, model, *args):
    return cli.main(["infer", str(video), "--checkpoint", str(model), "--hfov", "60", "--device", "cpu",
                     *map(str, args)])


def _user_folder(d):
    (d / "mine").mkdir()
    (d / "mine" / "notes.txt").write_text("my work\n")
    return ["--out", d / "mine"]


def _previous_store(d, video, model):
    assert _infer_cli(video, model, "--out", d / "old.zarr") == 0
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
    assert _infer_cli(video, infer_inputs[1], *args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert re.search(message, err[-1]), err
    assert _snapshot(tmp_path) == before  # the user's files intact, no partial outputs left


def test_force_replaces_previous_outputs_and_stale_partials_of_ours_only(tmp_path, infer_inputs):
    video, model = infer_inputs
    out, preview = tmp_path / "o.zarr", tmp_path / "p.mp4"
    assert _infer_cli(video, model, "--out", out, "--preview", preview, "--points-every", 5) == 0
    first = open_store(out, "depth")["depth"][:]
    # Leftovers of a killed run (our naming pattern) and look-alikes that are not ours.
    ours = [tmp_path / name for name in ("p.partial-4242.mp4", "o.zarr.partial-4242", "o.points.partial-7")]
    ours[0].write_bytes(b"half a video")
    ours[1].mkdir()
    ours[2].mkdir()
    not_ours = [tmp_path / "p.partial-notes.mp4", tmp_path / "o.zarr.partial-backup", tmp_path / "p.mp4.txt"]
    for p in not_ours:
        p.write_text("keep me")
    assert _infer_cli(video, model, "--out", out, "--preview", preview, "--points-every", 5, "--force") == 0
    np.testing.assert_array_equal(open_store(out, "depth")["depth"][:], first)
    assert all(not p.exists() for p in ours)
    assert all(p.read_text() == "keep me" for p in not_ours)
    with av.open(str(preview)) as container:
        assert len(list(container.decode(video=0))) == first.shape[0]
