"""Bad input: every case fails with an error naming the file and the problem, and leaves no store behind."""

import json
import os
import re
import resource
import subprocess
import sys
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from training_fixtures import TINY_MODEL, tiny_model_config, write_training_video
from video_inputs import H, W, leftovers, smooth_frames, tiny_K, truncate, write_video, write_with_pyav

from videomamba_depth import cli
from videomamba_depth.camera import IntrinsicsError, save_intrinsics_json
from videomamba_depth.decode import DecodeConfig, decode_video
from videomamba_depth.errors import InputError
from videomamba_depth.manifest import VideoEntry
from videomamba_depth.models import ModelConfig, build_student, save_student
from videomamba_depth.models.io import FORMAT, FORMAT_VERSION, METADATA_KEY
from videomamba_depth.video.reader import VideoError
from videomamba_depth.zarrio import open_store

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


# --- intrinsics through `videomamba-depth infer` ------------------------------------------------------------


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A valid tiny student file."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    save_student(path, build_student(tiny_model_config()))
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


# A 1 KB file whose config declares a 300 GiB model (widths 8192 everywhere, 16 blocks per scale).
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
    "huge_widths_in_1kb": (
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
    "case", ["missing", "truncated", "metadata_not_matching_weights", "huge_widths_in_1kb"]
)
def test_bad_checkpoint_evaluate_stage(tmp_path, student, monkeypatch, case):
    from stages import evaluate as stage

    make, message = CHECKPOINT_CASES[case]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"evaluate": {"videos": ["v"], "device": "cpu"}}))
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
    """The 1 KB file declaring a 300 GiB model fails with its one line in a process limited to 4 GiB of
    address space: nothing of the declared size is ever allocated."""
    checkpoint = tmp_path / "huge.safetensors"
    _student_file(checkpoint, {"w": torch.zeros(4)}, HUGE)
    assert checkpoint.stat().st_size < 1024
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
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": train}))
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
    (d / "params.yaml").write_text(yaml.safe_dump(params))


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
    assert not (tmp_path / "data").exists()


def test_bugs_keep_their_traceback(tmp_path):
    run = _run_module(tmp_path, ["stages.decode", "clip"], VMD_DEBUG="0")
    assert run.returncode == 2  # VMD_DEBUG=0 is off
    code = "from videomamba_depth.errors import run_main; run_main(lambda: [][1])"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert run.returncode == 1 and "Traceback (most recent call last)" in run.stderr
    assert run.stderr.strip().splitlines()[-1] == "IndexError: list index out of range"
