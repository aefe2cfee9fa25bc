"""DA-2K: images with annotated relative-depth point pairs (Depth Anything V2's benchmark).

Layout under ``root`` (DepthAnything/Depth-Anything-V2, ``DA-2K.md``)::

    annotations.json        {"<image path>": [{"point1": [h1, w1], "point2": [h2, w2],
                                               "closer_point": "point1"}, ...], ...}
    images/...              the images, at the paths the keys give (relative to root)

Points are ``[row, column]`` pixel positions of the image; ``closer_point`` names the point nearer to the
camera (the release always writes ``"point1"``; ``"point2"`` is accepted too). A sample has no metric
depth (``depth`` 0, ``valid`` False, ``has_K`` False) and its ``pairs`` rows are ``(u1, v1, u2, v2,
closer)``: u a column, v a row, ``closer`` 1 when point 1 is the closer, -1 otherwise; for a ranking loss.
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
    read_json,
    read_rgb,
    require_file,
)


class DA2KDataset(ImageDepthDataset):
    """DA-2K relative-depth pairs (module docstring)."""

    @classmethod
    def open(cls, config: ImageDatasetConfig, *, long_edge: int, pad_multiple: int) -> DA2KDataset:
        path = index_path(config, ".json", "DA-2K annotations are in annotations.json: split: annotations")
        annotations = read_json(path, "DA-2K annotations")
        if not isinstance(annotations, dict):
            raise DatasetError(f"{path}: expected a JSON object of image path -> list of point pairs")
        root = Path(config.root)
        makers = [
            (lambda key=key, value=value: _parse_image(root, path, key, value))
            for key, value in annotations.items()
        ]
        records, skipped, messages = collect(config, makers)
        return cls(config, records, long_edge=long_edge, pad_multiple=pad_multiple, skipped=skipped,
                   skip_messages=messages)

    def _read(self, record: Record) -> RawSample:
        rgb = read_rgb(record.image, record.where)
        height, width = rgb.shape[:2]
        pairs = record.extra["pairs"]
        u, v = pairs[:, [0, 2]], pairs[:, [1, 3]]
        outside = ((u < 0) | (u > width - 1) | (v < 0) | (v > height - 1)).any(axis=1)
        if outside.any():
            i = int(np.flatnonzero(outside)[0])
            raise DatasetError(f"{record.where}[{i}]: point ({pairs[i, 1]:g}, {pairs[i, 0]:g}) or "
                               f"({pairs[i, 3]:g}, {pairs[i, 2]:g}) [row, column] is outside the "
                               f"{width}x{height} image")
        return RawSample(rgb=rgb, pairs=pairs)


def _point(value: object, where: str, key: str) -> tuple[float, float]:
    if (
        not isinstance(value, list) or len(value) != 2
        or not all(isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x) for x in value)
    ):
        raise DatasetError(f"{where}: '{key}' must be [row, column] numbers, got {value!r}")
    return float(value[0]), float(value[1])


def _parse_image(root: Path, path: Path, key: str, value: object) -> Record:
    where = f"{path}: '{key}'"
    if not isinstance(value, list) or not value:
        raise DatasetError(f"{where}: expected a non-empty list of point pairs, got {value!r}")
    rows = []
    for i, pair in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(pair, dict):
            raise DatasetError(f"{at}: expected an object with point1, point2, closer_point, got {pair!r}")
        missing = sorted({"point1", "point2", "closer_point"} - pair.keys())
        if missing:
            raise DatasetError(f"{at}: missing {', '.join(missing)}")
        (v1, u1), (v2, u2) = _point(pair["point1"], at, "point1"), _point(pair["point2"], at, "point2")
        if pair["closer_point"] not in ("point1", "point2"):
            closer = pair["closer_point"]
            raise DatasetError(f"{at}: closer_point must be 'point1' or 'point2', got {closer!r}")
        rows.append((u1, v1, u2, v2, 1.0 if pair["closer_point"] == "point1" else -1.0))
    image = require_file(root / key, where, "image")
    return Record(where=where, image=image, extra={"pairs": np.array(rows, dtype=np.float64)})
