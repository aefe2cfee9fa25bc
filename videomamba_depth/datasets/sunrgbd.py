"""SUN RGB-D: per-frame folders of the ``SUNRGBD.zip`` release, listed by a JSON split file.

Each frame folder (e.g. ``kv1/NYUdata/NYU0001`` under ``root``, the extracted ``SUNRGBD`` folder) holds, as
the release and the SUNRGBDtoolbox (``readframeSUNRGBD.m``) lay it out::

    image/<name>.jpg        the RGB image (one file)
    depth/<name>.png        raw sensor depth, 16-bit (one file)
    depth_bfx/<name>.png    the refined ("bfx", holes filled) depth, same encoding (one file)
    intrinsics.txt          3x3 K, row-major, 9 numbers, MATLAB 1-based pixel coordinates

The split file (``split``, e.g. ``train.json``; ``split: train`` finds ``train.json``) is a JSON list of
frame folders relative to ``root``. Absolute folder names as the toolbox's split lists write them
(``/n/fs/sun3d/data/SUNRGBD/kv1/NYUdata/NYU0001``) are taken relative to ``root`` from after their last
``SUNRGBD/``.

Depth encoding (SUN3D / SUN RGB-D toolbox, PrincetonVision/SUN3Dsfm ``depthRead.m``:
``bitor(bitshift(depth,-3), bitshift(depth,16-3))``, then ``/1000``): each 16-bit value is rotated right by
3 bits, giving millimetres. ``bfx: true`` reads ``depth_bfx`` instead of ``depth``. The toolbox's
``read3dPoints.m`` back-projects with ``meshgrid(1:W)``, so the principal point of ``intrinsics.txt`` is
1-based; it moves by -1 to this project's 0-based pixel centres.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np

from videomamba_depth.datasets.base import (
    DatasetError,
    ImageDatasetConfig,
    ImageDepthDataset,
    RawSample,
    Record,
    collect,
    index_path,
    read_json,
    read_K_text,
    read_png,
    read_rgb,
    require_file,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Millimetres per unit of the decoded (bit-rotated) depth.
DEPTH_UNIT_M = 0.001
# Toolbox folder prefix stripped from absolute frame folder names.
TOOLBOX_PREFIX = "SUNRGBD/"


class SUNRGBDDataset(ImageDepthDataset):
    """SUN RGB-D frames (module docstring)."""

    @classmethod
    def open(cls, config: ImageDatasetConfig, *, long_edge: int, pad_multiple: int) -> SUNRGBDDataset:
        split_path = index_path(config, ".json", "split names a JSON list of frame folders, e.g. train.json")
        folders = read_json(split_path, "SUN RGB-D split list")
        if not isinstance(folders, list):
            kind = type(folders).__name__
            raise DatasetError(f"{split_path}: expected a JSON list of frame folders, got a {kind}")
        root = Path(config.root)
        makers = [
            (lambda i=i, entry=entry: _frame(root, config.bfx, f"{split_path}[{i}]", entry))
            for i, entry in enumerate(folders)
        ]
        records, skipped, messages = collect(config, makers)
        return cls(config, records, long_edge=long_edge, pad_multiple=pad_multiple, skipped=skipped,
                   skip_messages=messages)

    def _read(self, record: Record) -> RawSample:
        assert record.depth is not None and record.intrinsics is not None
        rgb = read_rgb(record.image, record.where)
        depth = decode_depth(read_png(record.depth, record.where))
        K = read_K_text(record.intrinsics, record.where)
        K[:2, 2] -= 1.0  # toolbox (MATLAB) 1-based pixel coordinates -> 0-based pixel centres
        return RawSample(rgb=rgb, depth=depth, K=K)


def decode_depth(stored: np.ndarray) -> np.ndarray:
    """SUN RGB-D 16-bit depth PNG values -> metres: rotate right by 3 bits, then millimetres to metres."""
    stored = stored.astype(np.uint16)
    millimetres = (stored >> np.uint16(3)) | (stored << np.uint16(13))
    return millimetres.astype(np.float32) * np.float32(DEPTH_UNIT_M)


def encode_depth(metres: np.ndarray) -> np.ndarray:
    """Inverse of :func:`decode_depth` (millimetres rotated left by 3 bits), for writing test fixtures."""
    millimetres = np.round(np.asarray(metres) / DEPTH_UNIT_M).astype(np.uint16)
    return (millimetres << np.uint16(3)) | (millimetres >> np.uint16(13))


def _single_file(folder: Path, suffixes: tuple[str, ...], where: str, what: str) -> Path:
    if not folder.is_dir():
        raise DatasetError(f"{where}: {what} folder {folder} not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if len(files) != 1:
        raise DatasetError(f"{where}: expected one {what} file ({', '.join(suffixes)}) in {folder}, "
                           f"found {len(files)}")
    return files[0]


def _frame(root: Path, bfx: bool, where: str, entry: object) -> Record:
    if not isinstance(entry, str) or not entry.strip():
        raise DatasetError(f"{where}: expected a frame folder name, got {entry!r}")
    name = entry.strip()
    if PurePosixPath(name).is_absolute() and TOOLBOX_PREFIX in name:
        name = name.rsplit(TOOLBOX_PREFIX, 1)[1]
    folder = root / name
    if not folder.is_dir():
        raise DatasetError(f"{where}: frame folder {folder} not found")
    image = _single_file(folder / "image", IMAGE_SUFFIXES, where, "image")
    depth = _single_file(folder / ("depth_bfx" if bfx else "depth"), (".png",), where, "depth")
    intrinsics = require_file(folder / "intrinsics.txt", where, "intrinsics")
    return Record(where=f"{where} ({name})", image=image, depth=depth, intrinsics=intrinsics)
