"""Store conventions: sharded time arrays, bounded streaming writes, atomic stores, independent readers."""

import os

import numpy as np
import pytest
import tensorstore as ts

from videomamba_depth.zarrio import (
    FORMAT_VERSION,
    MAX_CHUNK_FRAMES,
    SHARD_BYTES,
    StoreError,
    TimeWriter,
    atomic_directory,
    create_static_array,
    create_time_array,
    open_store,
    remove_stale_partials,
    time_chunking,
    writing_store,
)


def _files(path):
    return sorted(os.path.relpath(os.path.join(r, f), path) for r, _, fs in os.walk(path) for f in fs)


def test_time_chunking_bounds():
    chunk, shard = time_chunking((168, 224, 3), "uint8")
    assert chunk == MAX_CHUNK_FRAMES and shard % chunk == 0 and shard >= 256
    assert shard * 168 * 224 * 3 <= SHARD_BYTES
    chunk, shard = time_chunking((2160, 3840, 3), "uint8")  # 4K: one frame per chunk, bounded shard
    assert chunk == 1 and 1 <= shard * 2160 * 3840 * 3 <= SHARD_BYTES
    assert time_chunking((3, 3), "float64")[0] >= 1024  # per-frame metadata: one chunk


def test_streamed_write_roundtrip_and_independent_reader(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (23, 12, 10, 3), dtype=np.uint8)
    depth = rng.random((23, 12, 10)).astype(np.float16)
    path = tmp_path / "v.zarr"
    with writing_store(path, "frames", {"fps": 24.0}) as g:
        rgb = create_time_array(
            g, "rgb", (12, 10, 3), "uint8", dims=("t", "y", "x", "c"), units="sRGB", description="frames"
        )
        d = create_time_array(
            g, "depth", (12, 10), "float16", dims=("t", "y", "x"), units="m", description="depth"
        )
        with TimeWriter(rgb) as w1, TimeWriter(d) as w2:
            for i in range(0, 23, 7):  # batches that do not align with chunks or shards
                w1.append(frames[i : i + 7])
                w2.append(depth[i : i + 7])
            assert w1.length == 23
    g = open_store(path, "frames")
    assert g.attrs["kind"] == "frames" and g.attrs["fps"] == 24.0
    assert g.attrs["format_version"] == FORMAT_VERSION
    np.testing.assert_array_equal(g["rgb"][:], frames)
    np.testing.assert_array_equal(g["depth"][:], depth)
    assert g["rgb"].metadata.dimension_names == ("t", "y", "x", "c")
    assert g["depth"].attrs["units"] == "m"
    # Few files: one shard per array plus metadata.
    assert len(_files(path)) == 5, _files(path)
    for name, ref in (("rgb", frames), ("depth", depth)):
        arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / name)}}).result()
        np.testing.assert_array_equal(arr.read().result(), ref)


def test_static_array(tmp_path):
    mask = np.eye(4, dtype=bool)
    with writing_store(tmp_path / "s.zarr", "prepared", {}) as g:
        create_static_array(g, "valid", mask, dims=("y", "x"), units="bool", description="m")
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr")["valid"][:], mask)


def test_failed_write_leaves_nothing_and_keeps_old_store(tmp_path):
    path = tmp_path / "v.zarr"
    with pytest.raises(RuntimeError), writing_store(path, "frames", {}) as g:
        create_time_array(g, "rgb", (2, 2, 3), "uint8", dims=("t", "y", "x", "c"), units="", description="")
        raise RuntimeError("decoder died")
    assert not path.exists() and list(tmp_path.iterdir()) == []
    with writing_store(path, "frames", {"version": 1}):
        pass
    with pytest.raises(RuntimeError), writing_store(path, "frames", {"version": 2}):
        raise RuntimeError("second run died")
    assert open_store(path).attrs["version"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["v.zarr"]


def test_killed_writer_leftovers_are_cleaned_and_never_opened(tmp_path):
    path = tmp_path / "v.zarr"
    stale = tmp_path / "v.zarr.partial-99999"
    stale.mkdir()
    with pytest.raises(StoreError, match="interrupted write"):
        open_store(path)
    assert remove_stale_partials(path) == [stale] and not stale.exists()
    stale.mkdir()
    with atomic_directory(path) as tmp:
        (tmp / "x").write_text("ok")
    assert not stale.exists() and (path / "x").read_text() == "ok"


def test_open_store_errors(tmp_path):
    with pytest.raises(StoreError, match="no such store"):
        open_store(tmp_path / "missing.zarr")
    with writing_store(tmp_path / "t.zarr", "teacher", {}):
        pass
    with pytest.raises(StoreError, match="expected a 'flow' store, found kind='teacher'"):
        open_store(tmp_path / "t.zarr", "flow")


def test_time_writer_checks_frame_shape(tmp_path):
    with writing_store(tmp_path / "v.zarr", "frames", {}) as g:
        arr = create_time_array(
            g, "rgb", (4, 4, 3), "uint8", dims=("t", "y", "x", "c"), units="", description=""
        )
        with pytest.raises(ValueError, match="frame shape"):
            TimeWriter(arr).append(np.zeros((1, 4, 5, 3), np.uint8))
