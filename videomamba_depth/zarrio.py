"""Zarr v3 store conventions shared by every stage.

A *store* is one Zarr v3 group per video and stage (``data/<stage>/<video>.zarr.zip``). Conventions:

- The pipeline's stores are *packed*: the whole store in one uncompressed ZIP file, ``NAME.zarr.zip`` (the
  Zarr v3 convention; ``zarr.storage.ZipStore`` reads it too). DVC walks every file and folder of its outputs
  on each ``dvc status``, and a store as a folder is some 30 of them (Zarr v3 makes every array a folder);
  packed it is one file, which is what keeps DVC's cost small at thousands of videos. Any other name
  (``OUT.zarr``, e.g. what ``infer`` writes) is a plain folder store; readers take both
  (:func:`open_store`).

- Arrays indexed by frame have time as axis 0, are chunked along time only (whole frames per chunk) and
  sharded, so a store is a handful of files (DVC hashes every file; thousands of chunk files make it crawl).
- Chunks are compressed with Blosc/zstd; each array carries ``dimension_names``, a ``units`` attribute and a
  one-line ``description``.
- The group carries ``kind`` (what the store holds), ``format_version`` and ``provenance`` (stage, params,
  backend, package versions) in its attributes. Nothing time- or host-dependent is written, so the same
  inputs and params give byte-identical stores.
- Stores are written under a temporary sibling name and renamed into place only when complete
  (:func:`writing_store`; a packed store is written as a folder, then packed), so an interrupted stage never
  leaves a store that looks finished.
- Every chunk is stored, even one equal to the fill value, so a missing shard file or chunk always means a
  damaged store: :func:`open_store` verifies that every expected shard and chunk is present and that each
  shard's index checksum matches (:func:`verify_store`) before anything is read, so a deleted or truncated
  shard fails with the store, array and shard named instead of reading as zeros.
- Frames are written through :class:`TimeWriter`, which buffers whole shards: writing is streamed in bounded
  memory and no shard is read back and rewritten.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr
from zarr.abc.store import ByteRequest, OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.codecs import BloscCodec, BloscShuffle, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore, ZipStore

from videomamba_depth.errors import InputError

# 2: every chunk is stored, including chunks equal to the fill value (version 1 skipped those, so a missing
# chunk could not be told from a deleted one).
FORMAT_VERSION = 2
# Stores always write every chunk: a missing one is damage, never "all fill value".
_ARRAY_CONFIG = {"write_empty_chunks": True}
# Chunk (shard) files side by side in the array's folder, "c.0.0.0", not one folder per index level
# ("c/0/0/0"): a store is a few files and folders per array, which is what DVC walks and checks on every
# `dvc status` (readers find the encoding in each array's metadata, so older stores still read).
_CHUNK_KEYS = {"name": "default", "separator": "."}
# Shard index entry of a chunk that is not stored (Zarr v3 sharding spec).
_NOT_STORED = 2**64 - 1
# Problems listed in a StoreError message before "... and N more".
_PROBLEMS_SHOWN = 3

# Target uncompressed bytes per chunk: large enough for zstd to work well, small enough that reading a short
# training clip does not decompress far more frames than it uses.
CHUNK_BYTES = 4 * 2**20
# At most this many frames per chunk for frame-sized arrays (a training clip of 8 frames touches 1-2 chunks).
MAX_CHUNK_FRAMES = 8
# Target uncompressed bytes per shard. Bounds the memory TimeWriter holds (one shard per array; writing
# peaks at a few times this while zarr encodes) and keeps the number of files per store small: a 500-frame
# 224x168 RGB video is a single shard file.
SHARD_BYTES = 64 * 2**20
MAX_SHARD_FRAMES = 1024
# Per-frame metadata (intrinsics, poses) is tiny: one chunk per shard.
SMALL_FRAME_BYTES = 1024

# The name of a packed store (one ZIP file; see the module docstring).
PACKED_SUFFIX = ".zarr.zip"
# Members of a packed store all carry this timestamp (the earliest ZIP can hold): nothing time-dependent.
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)
# ZIP local file header: 30 bytes, then the name and the extra field, whose lengths are at bytes 26 and 28.
_ZIP_HEADER_BYTES = 30
# ZIP end-of-central-directory record (no archive comment): the file's last 22 bytes.
_ZIP_END_BYTES = 22
# Bytes read from the start of a packed store for its leading metadata members (:func:`_leading_metadata`):
# a store's zarr.json documents together are a few KB (the root's attributes, with provenance, the largest).
_HEAD_BYTES = 64 * 1024

PARTIAL_MARK = ".partial-"
REPLACED_MARK = ".replaced-"
# Compression level of the stores (see ``compressor``).
COMPRESSION_LEVEL = 3


class StoreError(InputError):
    """A store that is missing, incomplete, or not of the expected kind."""


def is_packed(path: str | Path) -> bool:
    """Whether ``path`` names a packed store (``NAME.zarr.zip``)."""
    return Path(path).name.endswith(PACKED_SUFFIX)


def _split_packed(path: Path) -> tuple[Path | None, str]:
    """``(packed store, key prefix inside it)`` of a path into a packed store, e.g.
    ``data/prepared/v.zarr.zip/gt`` -> ``(data/prepared/v.zarr.zip, "gt")``; ``(None, "")`` otherwise."""
    for i, part in enumerate(path.parts):
        if part.endswith(PACKED_SUFFIX):
            return Path(*path.parts[: i + 1]), "/".join(path.parts[i + 1 :])
    return None, ""


class PackedStore(ZipStore):
    """A read-only packed store that holds no file open: every read opens the file, ``pread``s its bytes and
    closes it (as ``LocalStore`` does per chunk).

    ``zarr.storage.ZipStore`` keeps one file object and seeks it for every read: DataLoader workers forked
    from a process that had opened the store would share that file position (and read each other's bytes),
    and a training set of thousands of videos would hold thousands of files open. Members are located once,
    from the ZIP's central directory. Members compressed by other tools (``zip -r`` deflates) are read
    whole through ``zipfile``: correct, but slow for big chunks; the pipeline writes them uncompressed.
    """

    def __init__(self, path: str | Path) -> None:
        super().__init__(path, mode="r")

    def _sync_open(self) -> None:
        if self._is_open:
            raise ValueError("store is already open")
        self._lock = threading.RLock()
        self._index(os.stat(self.path))
        self._is_open = True

    def _index(self, stat: os.stat_result) -> None:
        """Locate the members of the file whose ``os.stat`` is ``stat``."""
        # Closed at once: a closed ZipFile still answers namelist() and getinfo(), all that listing uses.
        with zipfile.ZipFile(self.path) as zf:
            self._zf = zf
        self._identity = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        self._data_start: dict[str, int] = {}

    def _current(self, fd: int) -> None:
        """Re-read the member list if the file at ``path`` was replaced since (a stage re-ran): reads then
        see the new store, as they would in a folder store, never bytes at the old offsets."""
        stat = os.fstat(fd)
        if (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns) != self._identity:
            self._index(stat)

    def member_size(self, key: str) -> int | None:
        """Bytes of member ``key``; None when the store has no such member."""
        if not self._is_open:
            self._sync_open()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            self._current(fd)
        finally:
            os.close(fd)
        try:
            return self._zf.getinfo(key).file_size
        except KeyError:
            return None

    def read_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes of member ``key`` from ``start`` (fewer at its end); KeyError when absent."""
        return self._read(key, lambda size: (start, min(size, start + length)))

    def _read(self, key: str, window: Callable[[int], tuple[int, int]]) -> bytes:
        """Bytes ``[start, stop)`` of member ``key``, ``window(member size) -> (start, stop)``; one open."""
        if not self._is_open:
            self._sync_open()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            self._current(fd)
            info = self._zf.getinfo(key)
            start, stop = window(info.file_size)
            if info.compress_type != zipfile.ZIP_STORED:
                with zipfile.ZipFile(self.path) as zf:
                    return zf.read(key)[start:stop]
            if key not in self._data_start:
                header = os.pread(fd, _ZIP_HEADER_BYTES, info.header_offset)
                if len(header) < _ZIP_HEADER_BYTES or header[:4] != b"PK\x03\x04":
                    raise StoreError(f"{self.path}: member {key} is truncated or corrupt (no local header)")
                name_len, extra_len = (int.from_bytes(header[i : i + 2], "little") for i in (26, 28))
                self._data_start[key] = info.header_offset + _ZIP_HEADER_BYTES + name_len + extra_len
            data = os.pread(fd, max(0, stop - start), self._data_start[key] + start)
        finally:
            os.close(fd)
        if len(data) != max(0, stop - start):
            raise StoreError(f"{self.path}: member {key} is truncated ({len(data)} of {stop - start} bytes)")
        return data

    def _get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        def window(size: int) -> tuple[int, int]:
            if byte_range is None:
                return 0, size
            if isinstance(byte_range, RangeByteRequest):
                return byte_range.start, byte_range.end
            if isinstance(byte_range, OffsetByteRequest):
                return byte_range.offset, size
            if isinstance(byte_range, SuffixByteRequest):
                return max(0, size - byte_range.suffix), size
            raise TypeError(f"Unexpected byte_range, got {byte_range}.")

        try:
            return prototype.buffer.from_bytes(self._read(key, window))
        except KeyError:
            return None

    async def getsize(self, key: str) -> int:
        size = self.member_size(key)
        if size is None:
            raise FileNotFoundError(key)
        return size


def pack_store(folder: Path, target: Path) -> None:
    """Write the folder store ``folder`` into the ZIP file ``target`` (a packed store).

    Members stored uncompressed (the chunks are compressed already, and uncompressed members can be read in
    byte ranges: a shard's index, one chunk), with a fixed timestamp and mode: the same store always packs to
    the same bytes. Every ``zarr.json`` comes first, the root's first, then by depth and key, and then the
    chunks, by key: the metadata a stage checks for every video on every run (a store's fingerprint, an
    array's shape) lies in the file's first bytes (:func:`node_metadata`).
    """
    files = sorted(((p.name != "zarr.json", key.count("/"), key), p)
                   for p in folder.rglob("*") if p.is_file() for key in [p.relative_to(folder).as_posix()])
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for (_, _, key), file in files:
            info = zipfile.ZipInfo(key, date_time=_ZIP_DATE_TIME)
            info.external_attr = 0o644 << 16
            size = file.stat().st_size
            with file.open("rb") as src, zf.open(info, "w", force_zip64=size > zipfile.ZIP64_LIMIT) as dst:
                shutil.copyfileobj(src, dst, 2**20)


# Attributes added to every store written in the block of :func:`recording_attributes`.
_RECORDED: ContextVar[Mapping[str, Any] | None] = ContextVar("recorded_store_attributes", default=None)


@contextmanager
def recording_attributes(attrs: Mapping[str, Any]) -> Iterator[None]:
    """Add ``attrs`` to the attributes of every store :func:`writing_store` writes inside this block.

    How a per-video stage records each store's fingerprint: inside the store and written with it (a packed
    store cannot be changed once written), so a store killed mid-write never carries one.
    """
    token = _RECORDED.set({**(_RECORDED.get() or {}), **attrs})
    try:
        yield
    finally:
        _RECORDED.reset(token)


def compressor(dtype: np.dtype | str, clevel: int = COMPRESSION_LEVEL) -> BloscCodec:
    """Blosc/zstd with byte-shuffle, level ``clevel`` (default 3).

    Measured on rendered frames and depth: byte-shuffle beats bit-shuffle on both ratio and speed (also for
    uint8 images, where bit-shuffle scatters the bits of smooth pixel values), and level 3 reads as fast as
    level 1 with most of level 5's ratio. Reads matter most: training streams clips from these stores.
    Writers that must keep up with a video in real time pass ``clevel=1`` (see ``infer``).
    """
    itemsize = np.dtype(dtype).itemsize
    return BloscCodec(cname="zstd", clevel=clevel, shuffle=BloscShuffle.shuffle, typesize=itemsize)


def time_chunking(frame_shape: Sequence[int], dtype: np.dtype | str) -> tuple[int, int]:
    """Frames per chunk and per shard for an array of frames of ``frame_shape`` and ``dtype``."""
    frame_bytes = max(1, math.prod(frame_shape) * np.dtype(dtype).itemsize)
    if frame_bytes <= SMALL_FRAME_BYTES:
        return MAX_SHARD_FRAMES, MAX_SHARD_FRAMES
    chunk_t = int(np.clip(CHUNK_BYTES // frame_bytes, 1, MAX_CHUNK_FRAMES))
    chunks_per_shard = int(np.clip(SHARD_BYTES // (chunk_t * frame_bytes), 1, MAX_SHARD_FRAMES // chunk_t))
    return chunk_t, chunk_t * chunks_per_shard


def partial_path(path: Path) -> Path:
    """The temporary name a store is written under before it is renamed into place."""
    return path.with_name(f"{path.name}{PARTIAL_MARK}{os.getpid()}")


def partial_file_path(path: Path) -> Path:
    """The temporary name a file is written under: ``NAME.partial-<pid>.SUFFIX`` (the suffix kept, since
    writers such as PyAV pick the format from it)."""
    return path.with_name(f"{path.stem}{PARTIAL_MARK}{os.getpid()}{path.suffix}")


def remove_stale_partials(path: Path) -> list[Path]:
    """Delete leftovers of interrupted writes of ``path`` (one writer per path is assumed).

    Only names of our own pattern count: ``NAME.partial-<pid>``, ``NAME.replaced-<pid>`` (directories) and
    ``STEM.partial-<pid>.SUFFIX`` (files), with a process id of digits; anything else next to ``path`` is
    left alone.
    """
    if not path.parent.is_dir():
        return []
    ours = re.compile(
        rf"{re.escape(path.name)}({re.escape(PARTIAL_MARK)}|{re.escape(REPLACED_MARK)})\d+"
        rf"|{re.escape(path.stem)}{re.escape(PARTIAL_MARK)}\d+{re.escape(path.suffix)}"
    )
    stale = sorted(p for p in path.parent.iterdir() if ours.fullmatch(p.name))
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory of ``path``; rename it to ``path`` when the block succeeds.

    On any exception the temporary directory is deleted and an existing ``path`` is left untouched; a
    replaced ``path`` is deleted only after the new one is in place. Leftovers of killed writers are removed
    first (one writer per path is assumed; DVC's lock guarantees it inside a pipeline).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = partial_path(path)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.with_name(f"{path.name}{REPLACED_MARK}{os.getpid()}")
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        shutil.rmtree(old)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling file name of ``path``; rename it to ``path`` when the block succeeds.

    The temporary name keeps the suffix (:func:`partial_file_path`). On any exception it is deleted and an
    existing ``path`` is left untouched; leftovers of killed writers of ``path`` are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = partial_file_path(path)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


@contextmanager
def writing_store(path: str | Path, kind: str, attrs: Mapping[str, Any]) -> Iterator[zarr.Group]:
    """Create a Zarr v3 group under a temporary name, yield it, and put it at ``path`` on success.

    Atomic as :func:`atomic_directory`. ``attrs`` become the group attributes, next to ``kind``,
    ``format_version`` and those of an enclosing :func:`recording_attributes`. A packed ``path``
    (``NAME.zarr.zip``) is written as a folder next to it, packed into a temporary file when the block
    succeeds (:func:`pack_store`), and renamed into place (:func:`atomic_file`).
    """
    path = Path(path)
    attributes = {"kind": kind, "format_version": FORMAT_VERSION, **(_RECORDED.get() or {}), **attrs}
    if not is_packed(path):
        with atomic_directory(path) as tmp:
            yield zarr.open_group(tmp, mode="w", zarr_format=3, attributes=attributes)
        return
    with atomic_file(path) as packed:
        # NAME.zarr.zip.partial-<pid>: removed here, or by the next writer if this one is killed.
        folder = partial_path(path)
        try:
            folder.mkdir()
            yield zarr.open_group(folder, mode="w", zarr_format=3, attributes=attributes)
            pack_store(folder, packed)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def create_time_array(
    group: zarr.Group,
    name: str,
    frame_shape: Sequence[int],
    dtype: np.dtype | str,
    *,
    dims: Sequence[str],
    units: str,
    description: str,
    length: int = 0,
    fill_value: Any = 0,
    attrs: Mapping[str, Any] | None = None,
    clevel: int = COMPRESSION_LEVEL,
) -> zarr.Array:
    """A time-chunked, sharded, compressed array of ``length`` frames of ``frame_shape`` (zstd ``clevel``).

    ``dims`` names every axis, time first (e.g. ``("t", "y", "x", "c")``). Start with ``length=0`` and grow
    the array with :class:`TimeWriter` when the number of frames is not known in advance.
    """
    frame_shape = tuple(int(s) for s in frame_shape)
    if len(dims) != 1 + len(frame_shape) or dims[0] != "t":
        raise ValueError(f"{name}: dims {tuple(dims)} must name 't' first and every frame axis")
    chunk_t, shard_t = time_chunking(frame_shape, dtype)
    return group.create_array(
        name,
        shape=(length, *frame_shape),
        dtype=dtype,
        chunks=(chunk_t, *frame_shape),
        shards=(shard_t, *frame_shape),
        compressors=compressor(dtype, clevel),
        fill_value=fill_value,
        dimension_names=tuple(dims),
        attributes={"units": units, "description": description, **(attrs or {})},
        chunk_key_encoding=_CHUNK_KEYS,
        config=_ARRAY_CONFIG,
    )


def copy_time_array(source: zarr.Array, group: zarr.Group, name: str) -> zarr.Array:
    """Copy a time array with its dims, units and description into ``group``, one source shard at a time."""
    array = create_time_array(
        group, name, source.shape[1:], source.dtype, dims=source.metadata.dimension_names,
        units=source.attrs.get("units", ""), description=source.attrs.get("description", ""),
        fill_value=source.fill_value,
    )
    step = source.shards[0] if source.shards is not None else source.chunks[0]
    with TimeWriter(array) as writer:
        for t0 in range(0, source.shape[0], step):
            writer.append(source[t0 : t0 + step])
    return array


def create_static_array(
    group: zarr.Group,
    name: str,
    data: np.ndarray,
    *,
    dims: Sequence[str],
    units: str,
    description: str,
) -> zarr.Array:
    """A small array that is not indexed by time (e.g. a per-video mask), written whole in one chunk."""
    data = np.asarray(data)
    arr = group.create_array(
        name,
        shape=data.shape,
        dtype=data.dtype,
        chunks=data.shape,
        compressors=compressor(data.dtype),
        fill_value=0,
        dimension_names=tuple(dims),
        attributes={"units": units, "description": description},
        chunk_key_encoding=_CHUNK_KEYS,
        config=_ARRAY_CONFIG,
    )
    arr[...] = data
    return arr


class TimeWriter:
    """Appends frames to a time array, writing whole shards at a time.

    Holds at most one shard of frames in memory. Call :meth:`close` (or use as a context manager) to write
    the last, partial shard.
    """

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.shard_t = array.shards[0] if array.shards is not None else array.chunks[0]
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._written = array.shape[0]
        if self._written % self.shard_t:
            raise ValueError(f"{array.path}: can only append at a shard boundary, length is {self._written}")

    @property
    def length(self) -> int:
        """Frames appended so far (written or buffered)."""
        return self._written + self._buffered

    def append(self, frames: np.ndarray) -> None:
        """Append a batch of frames ``(n, *frame_shape)``."""
        frames = np.asarray(frames)
        if frames.shape[1:] != self.array.shape[1:]:
            raise ValueError(
                f"{self.array.path}: frame shape {frames.shape[1:]} does not match {self.array.shape[1:]}"
            )
        self._buffer.append(frames.astype(self.array.dtype, copy=False))
        self._buffered += len(frames)
        while self._buffered >= self.shard_t:
            self._flush(self.shard_t)

    def _flush(self, n: int) -> None:
        data = np.concatenate(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        head, rest = data[:n], data[n:]
        t0 = self._written
        self.array.resize((t0 + n, *self.array.shape[1:]))
        self.array[t0 : t0 + n] = head
        self._written += n
        self._buffer = [rest] if len(rest) else []
        self._buffered = len(rest)

    def close(self) -> None:
        """Write whatever is buffered."""
        if self._buffered:
            self._flush(self._buffered)

    def __enter__(self) -> TimeWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()


def open_store(path: str | Path, kind: str | None = None, *, verify: bool = True) -> zarr.Group:
    """Open a finished store read-only; check its ``kind`` when given. Clear errors name the path.

    With ``verify`` (the default, for every reader) the arrays of the group itself must pass
    :func:`verify_store`: a missing or truncated shard raises a :class:`StoreError` naming the store, the
    array and the shard. Subgroups are not opened (training must never read the ``gt`` group); a reader of a
    subgroup verifies the arrays it uses with :func:`require_arrays`.
    """
    path = Path(path)
    if not path.exists():
        partials = list(path.parent.glob(f"{path.name}{PARTIAL_MARK}*")) if path.parent.exists() else []
        hint = " (an interrupted write left a partial copy; re-run its stage)" if partials else ""
        raise StoreError(f"{path}: no such store{hint}")
    group = _open_group(path)
    if kind is not None and group.attrs.get("kind") != kind:
        raise StoreError(f"{path}: expected a '{kind}' store, found kind={group.attrs.get('kind')!r}")
    if verify:
        _raise_problems(path, verify_store(path, group, recursive=False))
    return group


def _open_group(path: Path) -> zarr.Group:
    """The group at ``path`` (a folder store, or a packed one), read-only; a :class:`StoreError` naming it."""
    try:
        store = PackedStore(path) if is_packed(path) else path
        return zarr.open_group(store, mode="r", zarr_format=3)
    except (FileNotFoundError, IsADirectoryError, ValueError, zarr.errors.NodeTypeValidationError) as exc:
        raise StoreError(f"{path}: not a Zarr v3 group ({exc})") from exc
    except zipfile.BadZipFile as exc:
        raise StoreError(f"{path}: not a readable ZIP file, truncated or corrupt ({exc})") from exc


def _raise_problems(path: str | Path, problems: Sequence[StoreProblem]) -> None:
    if problems:
        shown = "; ".join(str(p) for p in problems[:_PROBLEMS_SHOWN])
        more = f"; and {len(problems) - _PROBLEMS_SHOWN} more" if len(problems) > _PROBLEMS_SHOWN else ""
        raise StoreError(
            f"{path}: incomplete or corrupt store (re-run the stage that writes it): {shown}{more}"
        )


@dataclass(frozen=True)
class StoreProblem:
    """One reason a store is incomplete or corrupt; ``array`` is its path in the store ("" for the group)."""

    array: str
    message: str

    def __str__(self) -> str:
        return f"{self.array}: {self.message}" if self.array else self.message


def verify_store(
    path: str | Path, group: zarr.Group | None = None, *, recursive: bool = True
) -> list[StoreProblem]:
    """Every problem that makes the store at ``path`` incomplete or corrupt; empty when it is sound.

    Cheap: lists the shard files and reads each shard's index (16 bytes per chunk), never the chunk data.
    Checks, for every array of the group (and, if ``recursive``, of its subgroups): each shard (or chunk)
    file the array's shape
    needs exists; each shard index has a matching crc32c checksum, lists every chunk inside the array's
    extent, and points only at bytes inside the file (a truncated shard fails this). Stores of an older
    ``format_version``, which skipped chunks equal to the fill value, cannot be verified and are reported.
    """
    path = Path(path)
    group = _open_group(path) if group is None else group
    problems = []
    version = _root_attrs(path).get("format_version")
    if version is not None and version != FORMAT_VERSION:
        problems.append(StoreProblem("", f"format_version {version}; this code reads {FORMAT_VERSION}"))
    for array in _arrays(group) if recursive else _own_arrays(group):
        problems += _verify_array(array)
    return problems


def node_metadata(node: str | Path) -> dict:
    """The metadata document of a Zarr v3 group or array (``node/zarr.json``), read without opening the node
    through zarr (about 50x cheaper: stages check every video's store on every run); empty when absent,
    unreadable or not a JSON object. ``node`` may lie in a packed store (``v.zarr.zip/gt``)."""
    node = Path(node)
    packed, prefix = _split_packed(node)
    try:
        if packed is None:
            raw = (node / "zarr.json").read_bytes()
        else:
            key = f"{prefix}/zarr.json" if prefix else "zarr.json"
            raw = _leading_metadata(packed, key)
            if raw is None:  # not among the leading members: a ZIP packed otherwise, or damaged
                with zipfile.ZipFile(packed) as zf:
                    raw = zf.read(key)
        meta = json.loads(raw)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return {}
    return meta if isinstance(meta, dict) else {}


def _leading_metadata(path: Path, key: str) -> bytes | None:
    """Member ``key`` (a ``zarr.json``) of a packed store when it is among the metadata members the store
    opens with (:func:`pack_store`), read from the file's first :data:`_HEAD_BYTES`: one read instead of
    parsing the whole central directory (several times cheaper; stages check every video's stores on every
    run). A member counts only when stored uncompressed, whole within those bytes, with its sizes in its
    header and its CRC-32 matching, and when the file ends with the ZIP end record (it was written to the
    end); the walk stops at the first member that is not such metadata. None otherwise: the caller then reads
    the central directory."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _ZIP_END_BYTES or os.pread(f.fileno(), 4, size - _ZIP_END_BYTES) != b"PK\x05\x06":
            return None
        head = os.pread(f.fileno(), _HEAD_BYTES, 0)
    offset = 0
    while head[offset : offset + 4] == b"PK\x03\x04" and offset + _ZIP_HEADER_BYTES <= len(head):
        # Flags, method, (time, date), CRC-32, stored size, (size), name and extra-field lengths.
        flags, method, crc, stored, _, name_len, extra_len = struct.unpack_from("<HHxxxxIIIHH", head,
                                                                                 offset + 6)
        name_at = offset + _ZIP_HEADER_BYTES
        name = head[name_at : name_at + name_len].decode(errors="replace")
        start = name_at + name_len + extra_len
        data = head[start : start + stored]
        # Bit 3: sizes follow the data (a streamed ZIP); 0xFFFFFFFF: ZIP64 sizes in the extra field.
        if (not (name == "zarr.json" or name.endswith("/zarr.json")) or method != zipfile.ZIP_STORED
                or flags & 0x08 or stored == 0xFFFFFFFF or len(data) != stored):
            return None
        if name == key:
            return data if zlib.crc32(data) == crc else None
        offset = start + stored
    return None


def _root_attrs(path: Path) -> dict:
    """Attributes of the store's root group (``path`` may be a subgroup, e.g. ``<v>.zarr.zip/gt``)."""
    root, _ = _split_packed(path)
    if root is None:
        root = path
        while (root.parent / "zarr.json").is_file():
            root = root.parent
    return node_metadata(root).get("attributes", {})


def _store_key(node: zarr.Group | zarr.Array, name: str) -> str:
    """The key of ``name`` (e.g. ``zarr.json``, a shard) of ``node`` in its store."""
    return f"{node.path}/{name}" if node.path else name


def _stored_size(store: Store, key: str) -> int | None:
    """Bytes of the value at ``key`` in a folder or packed store; None when absent."""
    if isinstance(store, PackedStore):
        return store.member_size(key)
    file = Path(store.root) / key
    return file.stat().st_size if file.is_file() else None


def _read_bytes(store: Store, key: str, start: int, length: int) -> bytes:
    """``length`` bytes of the value at ``key`` from ``start``, in a folder or packed store."""
    if isinstance(store, PackedStore):
        return store.read_range(key, start, length)
    with (Path(store.root) / key).open("rb") as f:
        f.seek(start)
        return f.read(length)


def stored_files(node: zarr.Group | zarr.Array) -> dict[str, int]:
    """``{key: bytes}`` of every file (member, in a packed store) under ``node``, its metadata included."""
    store, prefix = node.store_path.store, _store_key(node, "")
    if isinstance(store, PackedStore):
        return {i.filename: i.file_size for i in store._zf.infolist()
                if i.filename.startswith(prefix) and not i.is_dir()}
    if not isinstance(store, LocalStore):
        raise TypeError(f"unsupported store {store!r}")
    root = Path(store.root)
    return {f.relative_to(root).as_posix(): f.stat().st_size
            for f in (root / node.path).rglob("*") if f.is_file()}


def _own_arrays(group: zarr.Group) -> Iterator[zarr.Array]:
    """The arrays directly in ``group``, found without opening its subgroups.

    zarr's own listing opens every member; this reads only each child's ``node_type``. Metadata that does
    not parse is skipped here: it fails loudly when used, unlike a missing shard, which reads as fill values.
    """
    store = group.store_path.store
    if isinstance(store, PackedStore):
        depth = len(group.path.split("/")) if group.path else 0
        children = {k.split("/")[depth] for k in store._zf.namelist()
                    if k.startswith(_store_key(group, "")) and k.count("/") > depth}
    elif isinstance(store, LocalStore):
        folder = Path(store.root) / group.path
        children = {c.name for c in folder.iterdir() if c.is_dir()}
    else:
        raise TypeError(f"unsupported store {store!r}")
    for child in sorted(children):
        key = _store_key(group, f"{child}/zarr.json")
        size = _stored_size(store, key)
        try:
            meta = json.loads(_read_bytes(store, key, 0, size)) if size is not None else {}
        except ValueError:
            continue
        if isinstance(meta, dict) and meta.get("node_type") == "array":
            yield group[child]


def _arrays(group: zarr.Group) -> Iterator[zarr.Array]:
    for _, node in sorted(group.members(), key=lambda m: m[0]):
        if isinstance(node, zarr.Group):
            yield from _arrays(node)
        else:
            yield node


def _verify_array(array: zarr.Array) -> list[StoreProblem]:
    name = "/" + array.path
    store = array.store_path.store
    meta = array.metadata
    outer = array.shards or array.chunks
    grid = [range(math.ceil(s / c)) for s, c in zip(array.shape, outer, strict=True)]
    sharding = meta.codecs[0] if isinstance(meta.codecs[0], ShardingCodec) else None
    problems, missing = [], []
    for coords in itertools.product(*grid):
        key = meta.encode_chunk_key(coords)
        size = _stored_size(store, _store_key(array, key))
        if size is None:
            missing.append(key)
        elif sharding is not None:
            message = _verify_shard(store, _store_key(array, key), size, sharding, coords, outer, array.shape)
            if message:
                problems.append(StoreProblem(name, f"shard {key} {message}"))
    if missing:
        what = "shard" if sharding is not None else "chunk"
        listed = ", ".join(missing[:_PROBLEMS_SHOWN]) + (", ..." if len(missing) > _PROBLEMS_SHOWN else "")
        problems.insert(0, StoreProblem(name, f"{len(missing)} {what} file(s) missing ({listed})"))
    return problems


def _verify_shard(
    store: Store, key: str, size: int, codec: ShardingCodec, coords: tuple[int, ...],
    shard: tuple[int, ...], shape: tuple[int, ...],
) -> str | None:
    """What is wrong with the shard at ``key`` of ``size`` bytes (None when sound), from its index alone."""
    index_codecs = tuple(codec.index_codecs)
    if not (
        len(index_codecs) == 2 and isinstance(index_codecs[0], BytesCodec)
        and index_codecs[0].endian is not None and index_codecs[0].endian.value == "little"
        and isinstance(index_codecs[1], Crc32cCodec)
    ):
        return None  # not the layout this module writes: nothing cheap to check beyond the file's presence
    per_shard = tuple(s // c for s, c in zip(shard, codec.chunk_shape, strict=True))
    index_bytes = 16 * math.prod(per_shard)
    if size < index_bytes + 4:
        return f"is truncated ({size} bytes, smaller than its index)"
    at_end = codec.index_location.value == "end"
    raw = _read_bytes(store, key, size - index_bytes - 4 if at_end else 0, index_bytes + 4)
    if np.uint32(google_crc32c.value(raw[:-4])).tobytes() != raw[-4:]:
        return "is truncated or corrupt (its index checksum does not match)"
    index = np.frombuffer(raw[:-4], "<u8").reshape(*per_shard, 2)
    data_start, data_end = (0, size - index_bytes - 4) if at_end else (index_bytes + 4, size)
    absent = []
    for inner in itertools.product(*(range(n) for n in per_shard)):
        offset, length = (int(v) for v in index[inner])
        first = [c * s + i * k for c, s, i, k in zip(coords, shard, inner, codec.chunk_shape, strict=True)]
        # Chunks wholly past the array's end (in its last shard) are never stored.
        if offset == _NOT_STORED:
            if all(f < n for f, n in zip(first, shape, strict=True)):
                absent.append(inner)
        elif offset < data_start or offset + length > data_end:
            return f"is truncated or corrupt (chunk {inner} points outside the file's {size} bytes)"
    if absent:
        return f"lacks {len(absent)} chunk(s) inside the array (first: {absent[0]})"
    return None


def require_arrays(group: zarr.Group, path: str | Path, names: Sequence[str]) -> None:
    """Raise a :class:`StoreError` naming the store when any of ``names`` is missing from ``group`` (stored
    at ``path``) or incomplete (:func:`verify_store`); for a subgroup this is its only verification."""
    missing = [n for n in names if n not in group]
    if missing:
        raise StoreError(f"{path}: missing array(s) {missing}")
    _raise_problems(path, [p for n in names for p in _verify_array(group[n])])
