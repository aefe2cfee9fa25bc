"""inspect: report content (layout, bytes, statistics, attributes), JSON output, PNG rendering, CLI errors."""

import json
import os
import re

import cv2
import numpy as np
import pytest
from video_inputs import T, smooth_frames, tiny_K, write_frames_store, write_gt_store

from videomamba_depth import cli, inspect, viz
from videomamba_depth.prepare import PrepareConfig, prepare_video
from videomamba_depth.zarrio import TimeWriter, create_time_array, open_store, pack_store, writing_store


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    d = tmp_path_factory.mktemp("inspect")
    write_frames_store(d / "f.zarr", smooth_frames(T, 47, 63), tiny_K(63, 47))
    write_gt_store(d / "gt.zarr", T, 47, 63)
    return prepare_video(d / "f.zarr", d / "p.zarr", PrepareConfig(70, 14), ground_truth=d / "gt.zarr")


def test_report_lists_tree_layout_bytes_stats_and_attrs(prepared, capsys):
    assert cli.main(["inspect", str(prepared)]) == 0
    report = capsys.readouterr().out
    assert report.startswith(f"{prepared}: Zarr v3 group, kind=prepared, ")
    for line in (
        "/rgb  uint8 (10, 56, 70, 3)  dims (t, y, x, c)",
        "/gt/  group",
        "/gt/depth  float32 (10, 56, 70)  dims (t, y, x)",
        "/gt/flow_fwd  float32 (9, 56, 70, 2)  dims (t, y, x, c)",
        "/valid  bool (56, 70)  dims (y, x)",
        "    chunks (8, 56, 70, 3)  shards (1024, 56, 70, 3)",
        "pad_left_top_right_bottom: [0, 2, 0, 2]",
        '    stage: "prepare"',
    ):
        assert line in report, line
    assert "sharding_indexed[bytes > blosc(typesize=1, cname=zstd, clevel=3, shuffle=shuffle" in report
    assert "resampling:" in report  # the gt group's attributes


def test_description_numbers(prepared):
    d = inspect.describe_store(prepared)
    files = [os.path.join(r, f) for r, _, fs in os.walk(prepared) for f in fs]
    assert d["files"] == len(files) and d["stored_bytes"] == sum(os.path.getsize(f) for f in files)
    arrays = {a["path"]: a for a in d["arrays"]}
    assert sorted(arrays) == ["/K", "/corrupt", "/gt/K", "/gt/depth", "/gt/flow_fwd", "/gt/flow_fwd_valid",
                              "/gt/motion_mask", "/gt/pose_c2w", "/rgb", "/timestamps", "/valid"]
    assert d["problems"] == []
    rgb = arrays["/rgb"]
    stored = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(prepared / "rgb") for f in fs)
    assert rgb["stored_bytes"] == stored and rgb["raw_bytes"] == T * 56 * 70 * 3
    assert rgb["compression_ratio"] == pytest.approx(rgb["raw_bytes"] / stored)
    group = open_store(prepared)
    values = group["rgb"][:]
    assert rgb["stats"]["min"] == values.min() and rgb["stats"]["max"] == values.max()
    assert rgb["stats"]["mean"] == pytest.approx(values.mean())
    valid = arrays["/valid"]["stats"]
    assert valid["true"] == group["valid"][:].sum() and valid["true"] + valid["false"] == 56 * 70
    json.dumps(d)  # JSON-serialisable, as --json prints it
    # Packed, the same store reads the same, with the same files and bytes (now ZIP members).
    packed = prepared.with_name("p.zarr.zip")
    pack_store(prepared, packed)
    assert {**inspect.describe_store(packed), "path": str(prepared)} == d


def test_float_stats_count_nan_and_inf_streamed_in_blocks(tmp_path, monkeypatch):
    values = np.random.default_rng(0).normal(size=(37, 5, 6)).astype(np.float32)
    values[3, 1, 1], values[20, 2, 2], values[30, 0, 0] = np.nan, np.inf, -np.inf
    with writing_store(tmp_path / "s.zarr", "teacher", {}) as group:
        array = create_time_array(group, "depth", (5, 6), "float32", dims=("t", "y", "x"), units="m",
                                  description="d")
        with TimeWriter(array) as writer:
            writer.append(values)
    monkeypatch.setattr(inspect, "STATS_BLOCK_BYTES", 5 * 6 * 4)  # one frame per block: many blocks
    stats = inspect.describe_store(tmp_path / "s.zarr")["arrays"][0]["stats"]
    finite = values[np.isfinite(values)]
    assert stats["nan"] == 1 and stats["inf"] == 2 and stats["finite"] == finite.size
    assert stats["min"] == finite.min() and stats["max"] == finite.max()
    assert stats["mean"] == pytest.approx(finite.astype(np.float64).mean(), rel=1e-9)


def _saturated_fraction(image):
    return (cv2.cvtColor(image, cv2.COLOR_BGR2HSV)[..., 1] > 150).mean()


@pytest.mark.parametrize(
    ("args", "colour_mapped"),
    [
        ([], False),  # rgb frame
        (["--array", "gt/depth", "--frame", "-1"], True),  # turbo depth with a colorbar in metres
        (["--array", "gt/motion_mask"], False),  # black/white mask
        (["--array", "gt/flow_fwd"], True),  # flow magnitude, viridis
        (["--xt", "--row", "30"], False),  # x-t slice of the frames
    ],
)
def test_png(prepared, tmp_path, capsys, args, colour_mapped):
    out = tmp_path / "out.png"
    assert cli.main(["inspect", str(prepared), "--no-stats", "--png", str(out), *args]) == 0
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] >= 150 and image.shape[1] >= 300
    if colour_mapped:
        assert _saturated_fraction(image) > 0.1
    if "gt/motion_mask" in args:
        assert _saturated_fraction(image) < 0.01  # grey levels only
    assert f"wrote {out}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--png", "x.png", "--array", "K"], r"K: dims \('t', 'i', 'j'\) have no 'y' and 'x' axes"),
        (["--png", "x.png", "--array", "nope"], r"no array 'nope'; arrays with images: .*rgb"),
        (["--png", "x.png", "--frame", "10"], r"frame 10 outside 0\.\.9"),
        (["--png", "x.png", "--xt", "--array", "valid"], "has no time axis"),
    ],
)
def test_cli_errors_are_one_line(prepared, tmp_path, capsys, args, message):
    args = [a.replace("x.png", str(tmp_path / "x.png")) for a in args]
    assert cli.main(["inspect", str(prepared), "--no-stats", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("videomamba-depth inspect: error: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err), err


def test_missing_store(tmp_path, capsys):
    assert cli.main(["inspect", str(tmp_path / "none.zarr")]) == 2
    assert "none.zarr: no such store" in capsys.readouterr().err


def test_json_output(prepared, capsys):
    assert cli.main(["inspect", str(prepared), "--json", "--no-stats"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["kind"] == "prepared" and d["attrs"]["geometry"]["padded_size"] == [70, 56]


def test_colorize():
    values = np.array([[0.0, 5.0, 10.0, np.nan]])
    rgb = viz.colorize(values, 0.0, 10.0, "viridis", valid=np.array([[True, True, False, True]]))
    assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8
    assert (rgb[0, 2] == 0).all() and (rgb[0, 3] == 0).all()  # invalid and NaN are black
    assert tuple(rgb[0, 0]) == (68, 1, 84)  # viridis' first colour
    assert viz.robust_range(np.array([np.nan, 1.0, 2.0, 3.0])) == pytest.approx((1.02, 2.98))
