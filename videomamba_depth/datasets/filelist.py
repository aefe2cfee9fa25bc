"""The generic file-list format: ``train.txt`` / ``val.txt`` with one sample per line.

Each line is ``image depth [intrinsics]``, separated by spaces, paths relative to the list file's folder
(absolute paths work too; a path cannot contain whitespace). Blank lines and lines starting with ``#`` are
ignored. Files:

- image: anything OpenCV reads (``.png``, ``.jpg``, ...), converted to 8-bit RGB;
- depth, ``(H, W)`` at the image's size, metres = stored value / ``depth_scale`` (default 1: metres):
  ``.npy`` (numeric array), ``.png`` (16-bit, single channel) or ``.h5`` / ``.hdf5`` (dataset ``h5_key``;
  needs the optional ``h5py``);
- intrinsics (optional): a 3x3 ``.npy`` or ``.json`` in pixels of the image (as ``--intrinsics`` takes);
  without it the sample has ``has_K`` False and the model uses its no-intrinsics path.

Example line: ``rgb/000001.png depth/000001.npy K/000001.npy``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from videomamba_depth.datasets.base import (
    DatasetError,
    ImageDatasetConfig,
    ImageDepthDataset,
    RawSample,
    Record,
    collect,
    index_path,
    read_h5,
    read_K,
    read_npy,
    read_png,
    read_rgb,
    read_text,
    require_file,
)

DEPTH_SUFFIXES = (".npy", ".png", ".h5", ".hdf5")


class FileListDataset(ImageDepthDataset):
    """Samples of a generic file list (module docstring)."""

    @classmethod
    def open(cls, config: ImageDatasetConfig, *, long_edge: int, pad_multiple: int) -> FileListDataset:
        list_path = index_path(config, ".txt", "split names the list file relative to root, e.g. train.txt")
        text = read_text(list_path, "file list")
        makers = [
            (lambda n=n, line=line: _parse_line(list_path, n, line))
            for n, line in enumerate(text.splitlines(), start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
        records, skipped, messages = collect(config, makers)
        return cls(config, records, long_edge=long_edge, pad_multiple=pad_multiple, skipped=skipped,
                   skip_messages=messages)

    def _read(self, record: Record) -> RawSample:
        assert record.depth is not None
        rgb = read_rgb(record.image, record.where)
        suffix = record.depth.suffix.lower()
        if suffix == ".npy":
            stored = read_npy(record.depth, record.where)
        elif suffix == ".png":
            stored = read_png(record.depth, record.where)
        else:
            stored = read_h5(record.depth, self.config.h5_key, record.where)
        if stored.ndim != 2:
            raise DatasetError(f"{record.where}: depth {record.depth} has shape {stored.shape}, not (H, W)")
        depth = stored.astype(np.float32) / np.float32(self.config.depth_scale)
        K = None if record.intrinsics is None else read_K(record.intrinsics, record.where)
        return RawSample(rgb=rgb, depth=depth, K=K)


def _parse_line(list_path: Path, number: int, line: str) -> Record:
    where = f"{list_path}:{number}"
    fields = line.split()
    if len(fields) not in (2, 3):
        raise DatasetError(
            f"{where}: expected 'image depth [intrinsics]' separated by spaces, got {len(fields)} field(s)"
        )
    folder = list_path.parent
    image, depth = folder / fields[0], folder / fields[1]
    if depth.suffix.lower() not in DEPTH_SUFFIXES:
        raise DatasetError(f"{where}: depth {depth} must be one of {', '.join(DEPTH_SUFFIXES)}")
    intrinsics = folder / fields[2] if len(fields) == 3 else None
    if intrinsics is not None and intrinsics.suffix.lower() not in (".npy", ".json"):
        raise DatasetError(f"{where}: intrinsics {intrinsics} must be a .npy or .json file")
    require_file(image, where, "image")
    require_file(depth, where, "depth")
    if intrinsics is not None:
        require_file(intrinsics, where, "intrinsics")
    return Record(where=where, image=image, depth=depth, intrinsics=intrinsics)


def write_filelist(list_path: str | Path, rows: Iterable[tuple[str | Path | None, ...]]) -> Path:
    """Write a file list: one ``(image, depth)`` or ``(image, depth, intrinsics)`` row per sample.

    Paths are written relative to the list's folder (absolute ones are made relative; relative ones are
    taken as already relative to it). The list is written to a temporary file and renamed, so an existing
    list is replaced whole or not at all. Returns the list's path.
    """
    list_path = Path(list_path)
    folder = list_path.parent
    lines = []
    for i, row in enumerate(rows):
        row = tuple(row)
        if len(row) == 3 and row[2] is None:  # no intrinsics for this sample
            row = row[:2]
        if len(row) not in (2, 3) or any(value is None for value in row):
            raise ValueError(f"row {i}: expected (image, depth[, intrinsics]), got {row!r}")
        fields = []
        for value in row:
            path = Path(value)
            text = os.path.relpath(path, folder) if path.is_absolute() else str(path)
            if any(c.isspace() for c in text):
                raise ValueError(f"row {i}: path {text!r} contains whitespace, which a file list cannot hold")
            fields.append(Path(text).as_posix())
        lines.append(" ".join(fields))
    tmp = list_path.with_name(f".{list_path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in lines))
    tmp.replace(list_path)
    return list_path


def write_image_sample(
    folder: str | Path, stem: str, rgb: np.ndarray, depth: np.ndarray, K: np.ndarray | None = None,
) -> tuple[Path, ...]:
    """Write one file-list sample under ``folder``: ``rgb/<stem>.png`` (``(H, W, 3)`` uint8 RGB),
    ``depth/<stem>.npy`` (``(H, W)`` float32 metres) and, when given, ``K/<stem>.npy`` (3x3 pixels).

    Returns the paths relative to ``folder``, ready for :func:`write_filelist` with a list in ``folder``.
    """
    folder = Path(folder)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb must be (H, W, 3) uint8, got {rgb.shape} {rgb.dtype}")
    if np.shape(depth) != rgb.shape[:2]:
        raise ValueError(f"depth {np.shape(depth)} does not match the image {rgb.shape[:2]}")
    paths = [Path("rgb", f"{stem}.png"), Path("depth", f"{stem}.npy")]
    if K is not None:
        paths.append(Path("K", f"{stem}.npy"))
    for path in paths:
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(folder / paths[0]), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"{folder / paths[0]}: cannot write image")
    np.save(folder / paths[1], np.asarray(depth, dtype=np.float32))
    if K is not None:
        np.save(folder / paths[2], np.asarray(K, dtype=np.float64).reshape(3, 3))
    return tuple(paths)
