"""NYU Depth V2, the CSV release (DenseDepth's ``nyu_data.zip``, extracted).

Layout under ``root``::

    data/nyu2_train.csv            lines "data/nyu2_train/<scene>/<i>.jpg,data/nyu2_train/<scene>/<i>.png"
    data/nyu2_test.csv             lines "data/nyu2_test/<i>_colors.png,data/nyu2_test/<i>_depth.png"
    data/nyu2_train/...            640x480 RGB, depth PNGs 8-bit
    data/nyu2_test/...             640x480 RGB, depth PNGs 16-bit

Paths in the CSVs are relative to ``root`` (the folder holding ``data/``). The two splits store depth in
different units (ialhashim/DenseDepth, ``PyTorch/data.py``: ``ToTensor`` multiplies the 8-bit training
depth scaled to [0, 1] by 1000 (centimetres, so 255 is 10 m) and divides the 16-bit test depth by 1000
(millimetres)); the same conversions appear in other loaders of this release. Hence the params:

- ``nyu_uint8_full_scale`` (default 10.0): train (uint8) metres = value / 255 * this;
- ``nyu_uint16_unit`` (default 0.001): test (uint16) metres = value * this.

A depth PNG whose dtype is not its split's (:data:`SPLIT_DTYPE`) is an error, never a guess. Some copies
store depth as 3 equal channels; those are accepted. ``eval_crop`` marks depth outside the standard
evaluation crop of Eigen et al. (rows 45-470, columns 41-600 at 640x480, :data:`EIGEN_CROP`) invalid.
Intrinsics: :data:`NYU_K`, scaled to the image size.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from videomamba_depth.camera import make_K
from videomamba_depth.datasets.base import (
    DatasetError,
    ImageDatasetConfig,
    ImageDepthDataset,
    RawSample,
    Record,
    collect,
    read_png,
    read_rgb,
    read_text,
    require_file,
    scale_K,
)

SPLIT_DTYPE = {"train": "uint8", "test": "uint16"}
# Width, height of the NYU Depth V2 frames that NYU_K and EIGEN_CROP refer to.
NYU_SIZE = (640, 480)
# Kinect RGB intrinsics of the NYU Depth V2 toolbox (camera_params.m: fx 518.8579, fy 519.4696,
# cx 325.5824, cy 253.7362). Those are MATLAB 1-based pixel coordinates (the SUN RGB-D toolbox's
# read3dPoints.m back-projects NYU frames with meshgrid(1:W) and these values), so the principal point moves
# by -1 to this project's 0-based pixel centres.
NYU_K = make_K(518.8579, 519.4696, 325.5824 - 1.0, 253.7362 - 1.0)
# Eigen et al. evaluation crop at 640x480: rows [45, 471), columns [41, 601).
EIGEN_CROP = (45, 471, 41, 601)


class NYUCSVDataset(ImageDepthDataset):
    """NYU Depth V2 CSV release (module docstring)."""

    @classmethod
    def open(cls, config: ImageDatasetConfig, *, long_edge: int, pad_multiple: int) -> NYUCSVDataset:
        if config.split not in SPLIT_DTYPE:
            raise DatasetError(f"{config.label}: nyu_csv split must be train or test, not '{config.split}'")
        root = Path(config.root)
        csv_path = root / "data" / f"nyu2_{config.split}.csv"
        text = read_text(csv_path, "NYU CSV")
        rows = list(csv.reader(io.StringIO(text)))
        makers = [
            (lambda n=n, row=row: _parse_row(root, csv_path, n, row))
            for n, row in enumerate(rows, start=1)
            if any(field.strip() for field in row)
        ]
        records, skipped, messages = collect(config, makers)
        return cls(config, records, long_edge=long_edge, pad_multiple=pad_multiple, skipped=skipped,
                   skip_messages=messages)

    def _read(self, record: Record) -> RawSample:
        assert record.depth is not None
        rgb = read_rgb(record.image, record.where)
        stored = read_png(record.depth, record.where, (SPLIT_DTYPE[self.config.split],), grey_rgb=True)
        if stored.dtype == np.uint8:
            depth = stored.astype(np.float32) * np.float32(self.config.nyu_uint8_full_scale / 255.0)
        else:
            depth = stored.astype(np.float32) * np.float32(self.config.nyu_uint16_unit)
        height, width = rgb.shape[:2]
        mask = eigen_crop_mask(height, width) if self.config.eval_crop else None
        return RawSample(rgb=rgb, depth=depth, mask=mask, K=scale_K(NYU_K, NYU_SIZE, (width, height)))


def eigen_crop_mask(height: int, width: int) -> np.ndarray:
    """``(H, W)`` bool, True inside :data:`EIGEN_CROP` (scaled from 640x480 to the image size)."""
    top, bottom, left, right = EIGEN_CROP
    sy, sx = height / NYU_SIZE[1], width / NYU_SIZE[0]
    mask = np.zeros((height, width), bool)
    mask[round(top * sy) : round(bottom * sy), round(left * sx) : round(right * sx)] = True
    return mask


def _parse_row(root: Path, csv_path: Path, number: int, row: list[str]) -> Record:
    where = f"{csv_path}:{number}"
    fields = [field.strip() for field in row]
    if len(fields) != 2 or not all(fields):
        raise DatasetError(f"{where}: expected 'rgb_path,depth_path', got {len(fields)} field(s)")
    image, depth = root / fields[0], root / fields[1]
    if depth.suffix.lower() != ".png":
        raise DatasetError(f"{where}: depth {depth} must be a .png")
    require_file(image, where, "image")
    require_file(depth, where, "depth")
    return Record(where=where, image=image, depth=depth)
