"""iBims-1, the raw PNG release (``ibims1_core_raw``).

Layout under ``root``::

    imagelist.txt                 one image name per line (``split: imagelist.txt``)
    rgb/<name>.png                640x480 RGB
    depth/<name>.png              16-bit, metres = value * 50 / 65535 (0: no measurement)
    mask_invalid/<name>.png       nonzero where the depth is valid
    mask_transp/<name>.png        nonzero where the surface is not transparent (zero: unusable depth)
    calib/<name>.txt              optional: 3x3 K, 9 numbers row-major, pixels of the image

Units and masks as the benchmark's users read them (e.g. isl-org/ZoeDepth ``zoedepth/data/ibims.py``: depth
``* 50.0 / 65535``, then kept only where ``mask_invalid * mask_transp`` is nonzero). The ``calib`` text layout
is assumed (the ``.mat`` release's ``calib`` field is a 3x3 K) and not checked against the real files:
without ``calib/<name>.txt`` a sample has ``has_K`` False.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from videomamba_depth.datasets.base import (
    DatasetError,
    ImageDatasetConfig,
    ImageDepthDataset,
    RawSample,
    Record,
    collect,
    index_path,
    read_K_text,
    read_png,
    read_rgb,
    read_text,
    require_file,
)

# Metres of the largest 16-bit depth value.
DEPTH_RANGE_M = 50.0
MASKS = ("mask_invalid", "mask_transp")


class IBims1Dataset(ImageDepthDataset):
    """iBims-1 raw release (module docstring)."""

    @classmethod
    def open(cls, config: ImageDatasetConfig, *, long_edge: int, pad_multiple: int) -> IBims1Dataset:
        list_path = index_path(config, ".txt", "iBims-1 lists its images in imagelist.txt: split: imagelist")
        root = Path(config.root)
        makers = [
            (lambda n=n, line=line: _parse_line(root, list_path, n, line))
            for n, line in enumerate(read_text(list_path, "image list").splitlines(), start=1)
            if line.strip()
        ]
        records, skipped, messages = collect(config, makers)
        return cls(config, records, long_edge=long_edge, pad_multiple=pad_multiple, skipped=skipped,
                   skip_messages=messages)

    def _read(self, record: Record) -> RawSample:
        assert record.depth is not None
        rgb = read_rgb(record.image, record.where)
        depth = read_png(record.depth, record.where).astype(np.float32) * np.float32(DEPTH_RANGE_M / 65535.0)
        mask = np.ones(depth.shape, bool)
        for path in record.extra["masks"]:
            values = read_png(path, record.where, ("uint8", "uint16"))
            if values.shape != depth.shape:
                raise DatasetError(f"{record.where}: mask {path} is {values.shape[1]}x{values.shape[0]} but "
                                   f"the depth is {depth.shape[1]}x{depth.shape[0]}")
            mask &= values != 0
        K = None if record.intrinsics is None else read_K_text(record.intrinsics, record.where)
        return RawSample(rgb=rgb, depth=depth, mask=mask, K=K)


def _parse_line(root: Path, list_path: Path, number: int, line: str) -> Record:
    where = f"{list_path}:{number}"
    fields = line.split()
    if len(fields) != 1:
        raise DatasetError(f"{where}: expected one image name, got {len(fields)} fields")
    name = fields[0]
    if "/" in name or "\\" in name or name in (".", ".."):
        raise DatasetError(f"{where}: image name {name!r} must be a plain name (no folders)")
    image = require_file(root / "rgb" / f"{name}.png", where, "image")
    depth = require_file(root / "depth" / f"{name}.png", where, "depth")
    masks = tuple(require_file(root / m / f"{name}.png", where, m) for m in MASKS)
    calib = root / "calib" / f"{name}.txt"
    return Record(where=where, image=image, depth=depth, intrinsics=calib if calib.is_file() else None,
                  extra={"masks": masks})
