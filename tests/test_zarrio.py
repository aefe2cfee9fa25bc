"""Store conventions: sharded time arrays, bounded streaming writes, atomic stores, independent readers."""

import json
import os
import zipfile

import numpy as np
import pytest
import tensorstore as ts
import zarr

from videomamba_depth.zarrio import (
    FORMAT_VERSION,
    MAX_CHUNK_FRAMES,
    SHARD_BYTES,
    StoreError,
    TimeWriter,
    atomic_directory,
    create_static_array,
    create_time_array,
    node_metadata,
    open_store,
    recording_attributes,
    remove_stale_partials,
    time_chunking,
    verify_store,
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


# ------------------------------------------------------------------------------------------- packed stores


def _write_packed(path, frames, attrs=None):
    with writing_store(path, "frames", attrs or {}) as g:
        rgb = create_time_array(
            g, "rgb", frames.shape[1:], "uint8", dims=("t", "y", "x", "c"), units="sRGB", description="frames"
        )
        with TimeWriter(rgb) as writer:
            writer.append(frames)
        mask = np.eye(3, dtype=bool)
        create_static_array(g.create_group("gt"), "mask", mask, dims=("y", "x"), units="1", description="m")
    return path


def test_packed_store_is_one_file_that_reads_like_the_folder(tmp_path):
    frames = np.random.default_rng(0).integers(0, 255, (11, 6, 5, 3), dtype=np.uint8)
    with recording_attributes({"fingerprint": "f00d"}):
        packed = _write_packed(tmp_path / "v.zarr.zip", frames)
    folder = _write_packed(tmp_path / "v.zarr", frames)
    assert packed.is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["v.zarr", "v.zarr.zip"]
    g = open_store(packed, "frames")
    assert g.attrs["fingerprint"] == "f00d" and "fingerprint" not in open_store(folder).attrs
    np.testing.assert_array_equal(g["rgb"][3:9], frames[3:9])
    assert verify_store(packed) == [] and node_metadata(packed / "gt" / "mask")["shape"] == [3, 3]
    # The members are the folder's files, stored uncompressed: any ZIP reader and zarr's own ZipStore read it.
    with zipfile.ZipFile(packed) as zf:
        assert sorted(zf.namelist()) == _files(folder)
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    zarr_zip = zarr.open_group(zarr.storage.ZipStore(packed, mode="r"), mode="r")
    np.testing.assert_array_equal(zarr_zip["rgb"][:], frames)
    spec = {"driver": "zarr3", "kvstore": {"driver": "zip", "base": f"file://{packed}", "path": "rgb/"}}
    np.testing.assert_array_equal(ts.open(spec).result().read().result(), frames)


def test_packed_metadata_leads_and_is_read_from_the_first_bytes(tmp_path, monkeypatch):
    frames = np.random.default_rng(0).integers(0, 255, (11, 6, 5, 3), dtype=np.uint8)
    with recording_attributes({"fingerprint": "f00d"}):
        packed = _write_packed(tmp_path / "v.zarr.zip", frames)
    with zipfile.ZipFile(packed) as zf:
        names = zf.namelist()
        expected = {node: json.loads(zf.read(f"{node}/zarr.json" if node else "zarr.json"))
                    for node in ("", "rgb", "gt", "gt/mask")}
    metadata = [n for n in names if n.endswith("zarr.json")]
    assert names[0] == "zarr.json" and names[: len(metadata)] == metadata  # the root, then every other one
    # Read from the leading members alone: the central directory is never parsed.
    with monkeypatch.context() as m:
        m.setattr(zipfile, "ZipFile", None)
        assert {node: node_metadata(packed / node) for node in expected} == expected
    # A ZIP laid out otherwise (members in another order, as `zip -r` writes) reads the same, through the
    # central directory; so does a lead member whose bytes no longer match its CRC, when it is not needed.
    other = tmp_path / "other.zarr.zip"
    with zipfile.ZipFile(packed) as src, zipfile.ZipFile(other, "w") as dst:
        for name in reversed(names):
            dst.writestr(name, src.read(name))
    assert {node: node_metadata(other / node) for node in expected} == expected
    data = bytearray(packed.read_bytes())
    root = data.index(b'"fingerprint"')
    data[root : root + 13] = b'"fingerprinT"'
    packed.write_bytes(bytes(data))
    assert node_metadata(packed) == {}  # the damaged member fails its CRC through zipfile too
    assert node_metadata(packed / "rgb") == expected["rgb"]


def test_packed_store_bytes_depend_only_on_content(tmp_path):
    frames = np.zeros((4, 2, 2, 3), np.uint8)
    first = _write_packed(tmp_path / "a" / "v.zarr.zip", frames).read_bytes()
    os.utime(tmp_path / "a" / "v.zarr.zip", (0, 0))  # unrelated: the file's own times
    second = _write_packed(tmp_path / "b" / "v.zarr.zip", frames).read_bytes()
    assert first == second
    assert _write_packed(tmp_path / "c" / "v.zarr.zip", frames + 1).read_bytes() != first


def test_packed_write_is_atomic(tmp_path):
    path = tmp_path / "v.zarr.zip"
    _write_packed(path, np.zeros((2, 2, 2, 3), np.uint8), {"version": 1})
    with pytest.raises(RuntimeError), writing_store(path, "frames", {"version": 2}):
        raise RuntimeError("decoder died")
    assert open_store(path).attrs["version"] == 1 and [p.name for p in tmp_path.iterdir()] == ["v.zarr.zip"]
    stale = [tmp_path / "v.zarr.zip.partial-99999", tmp_path / "v.zarr.partial-99999.zip"]
    stale[0].mkdir()
    stale[1].write_bytes(b"half a zip")
    _write_packed(path, np.zeros((2, 2, 2, 3), np.uint8), {"version": 3})
    assert [p.name for p in tmp_path.iterdir()] == ["v.zarr.zip"] and open_store(path).attrs["version"] == 3


def test_damaged_packed_store_is_named(tmp_path):
    path = _write_packed(tmp_path / "v.zarr.zip", np.zeros((2, 2, 2, 3), np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # the ZIP's directory is at its end
    with pytest.raises(StoreError, match=r"v\.zarr\.zip: not a readable ZIP file"):
        open_store(path)
    path.write_bytes(b"")
    with pytest.raises(StoreError, match=r"v\.zarr\.zip: not a readable ZIP file"):
        open_store(path)


def test_packed_reader_sees_a_replaced_store_and_survives_fork(tmp_path):
    """A reader keeps no file open: a store replaced by a re-run reads as the new one (never bytes at the
    old offsets), and forked DataLoader workers do not share a file position."""
    path = _write_packed(tmp_path / "v.zarr.zip", np.full((4, 2, 2, 3), 1, np.uint8))
    rgb = open_store(path)["rgb"]
    assert rgb[0].max() == 1
    _write_packed(path, np.full((4, 2, 2, 3), 7, np.uint8), {"longer attributes": "x" * 500})
    assert rgb[0].max() == 7
    pid = os.fork()
    if pid == 0:  # child: read many times while the parent does too
        os._exit(0 if all(rgb[i % 4].max() == 7 for i in range(200)) else 1)
    assert all(rgb[i % 4].max() == 7 for i in range(200))
    assert os.waitpid(pid, 0)[1] == 0


def test_packed_store_with_deflated_members_reads(tmp_path):
    """Stores zipped by other tools (``zip -r`` deflates) read too, through zipfile."""
    frames = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    folder = _write_packed(tmp_path / "v.zarr", frames)
    path = tmp_path / "w.zarr.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in _files(folder):
            zf.write(folder / name, name)
    np.testing.assert_array_equal(open_store(path, "frames")["rgb"][:], frames)
    assert verify_store(path) == []
