"""What every image depth dataset shares: its config, its error type, file readers and the sample geometry.

A format loader (one module per on-disk format) only parses its index (a list file, a CSV, a JSON) into
:class:`Record` s and reads one record into a :class:`RawSample` at the original resolution, in metres.
:class:`ImageDepthDataset` does the rest the same way for every format: invalid depth masked, resize + pad
with :class:`~videomamba_depth.camera.ResizePad` and the ``prepare`` stage's own functions (so an image
sample has exactly the geometry of a prepared video frame), intrinsics and point pairs moved to the returned
pixels, and ``skip_bad`` handling.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from videomamba_depth.camera import IntrinsicsError, ResizePad, load_intrinsics, validate_K
from videomamba_depth.config import StageConfig
from videomamba_depth.errors import InputError, MissingDependencyError
from videomamba_depth.prepare import resample_nearest, resize_pad

FORMATS = ("filelist", "nyu_csv", "sunrgbd", "ibims1", "da2k")
# At most this many skip messages are kept per dataset (the count is exact; the list is for the log).
MAX_SKIP_MESSAGES = 20


class DatasetError(InputError):
    """A dataset index or file that cannot be used: the message names the file (and line) and the problem."""


@dataclass(frozen=True)
class ImageDatasetConfig(StageConfig):
    """One image dataset of a mixture (one entry of ``pretrain.datasets``).

    - ``format``: the on-disk layout, one loader each (see the README section "Image datasets").
    - ``root``: the dataset's root folder.
    - ``split``: which part: ``filelist``: the list file, relative to ``root`` (``train.txt``); ``nyu_csv``:
      ``train`` or ``test`` (``data/nyu2_<split>.csv``); ``sunrgbd``: the JSON list file relative to
      ``root`` (``train.json``); ``ibims1``: the image list relative to ``root`` (``imagelist.txt``);
      ``da2k``: the annotation file relative to ``root`` (``annotations.json``).
    - ``weight``: sampling weight of this dataset in the mixture (:class:`MixedImageSampler`).
    - ``depth_scale``: ``filelist`` only: metres = stored value / ``depth_scale`` for every depth file
      (``.npy``, ``.png``, ``.h5``); 1 means stored values are metres, 1000 millimetres.
    - ``h5_key``: ``filelist`` ``.h5`` depth: the dataset name inside the file.
    - ``max_depth``: metres; depth that is <= 0, NaN, inf or beyond this is invalid (0, ``valid`` False).
    - ``skip_bad``: False: a bad line or file is an error; True: it is skipped and counted (``.skipped``).
    - ``name``: label in logs and metrics; default ``<format>:<root folder name>/<split>``.
    - ``nyu_uint8_full_scale``: ``nyu_csv`` train PNGs (uint8): metres = value / 255 * this (10 m).
    - ``nyu_uint16_unit``: ``nyu_csv`` test PNGs (uint16): metres = value * this (millimetres: 0.001).
    - ``eval_crop``: ``nyu_csv``: mark depth outside the standard evaluation crop invalid.
    - ``bfx``: ``sunrgbd``: read the refined ``depth_bfx`` maps instead of the raw ``depth``.
    """

    format: Literal["filelist", "nyu_csv", "sunrgbd", "ibims1", "da2k"]
    root: str
    split: str = "train"
    weight: float = 1.0
    depth_scale: float = 1.0
    h5_key: str = "depth"
    max_depth: float = 80.0
    skip_bad: bool = False
    name: str = ""
    nyu_uint8_full_scale: float = 10.0
    nyu_uint16_unit: float = 0.001
    eval_crop: bool = False
    bfx: bool = False

    def __post_init__(self) -> None:
        for key in ("depth_scale", "max_depth", "nyu_uint8_full_scale", "nyu_uint16_unit"):
            value = getattr(self, key)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{key} must be a positive number, got {value}")
        if not (np.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"weight must be >= 0, got {self.weight}")
        if not self.root:
            raise ValueError("root must name the dataset folder")

    @property
    def label(self) -> str:
        return self.name or f"{self.format}:{Path(self.root).name}/{self.split}"


@dataclass(frozen=True)
class Record:
    """One sample of an index: where it was listed (``where``, "file:line") and the paths a loader needs."""

    where: str
    image: Path
    depth: Path | None = None
    intrinsics: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class RawSample:
    """One sample at its original resolution.

    ``rgb`` ``(H, W, 3)`` uint8; ``depth`` ``(H, W)`` float32 metres or None (relative-only datasets);
    ``mask`` ``(H, W)`` bool or None: extra validity from the dataset (its own invalid masks, an evaluation
    crop); ``K`` ``(3, 3)`` pixels or None; ``pairs`` ``(P, 5)`` float32 ``(u1, v1, u2, v2, closer)`` in
    original pixels (pixel centres at integers) or None.
    """

    rgb: np.ndarray
    depth: np.ndarray | None = None
    mask: np.ndarray | None = None
    K: np.ndarray | None = None
    pairs: np.ndarray | None = None


class ImageDepthDataset(Dataset):
    """Image samples of one dataset, resized and padded like ``prepare`` does for video frames.

    ``dataset[i]`` is a dict:
        ``rgb`` ``(3, H, W)`` uint8; ``depth`` ``(H, W)`` float32 metres, 0 where invalid; ``valid``
        ``(H, W)`` bool; ``image`` ``(H, W)`` bool, True on the image and False on its padding (where a
        teacher's prediction means nothing); ``K`` ``(3, 3)`` float32 in pixels of the returned image, zeros
        when unknown;
        ``has_K`` ``()`` bool; ``pairs`` ``(P, 5)`` float32 ``(u1, v1, u2, v2, closer)`` in returned-image
        pixels, ``closer`` = 1 when point 1 is the closer one, -1 otherwise (``(0, 5)`` for metric datasets).

    ``H, W`` is the padded size of :meth:`ResizePad.fit` for the image, so images of different aspect ratios
    give different sizes (:func:`collate_images` pads a batch to its largest). Subclasses implement
    :meth:`_read`. With ``skip_bad``, a record that cannot be read is replaced by the next readable one
    (in index order) and counted in ``skipped`` (per process: DataLoader workers count their own).
    """

    def __init__(
        self, config: ImageDatasetConfig, records: list[Record], *, long_edge: int, pad_multiple: int,
        skipped: int = 0, skip_messages: list[str] | None = None,
    ) -> None:
        if long_edge <= 0 or pad_multiple <= 0:
            raise ValueError(f"long_edge and pad_multiple must be positive, got {long_edge}, {pad_multiple}")
        if not records:
            raise DatasetError(f"{config.label}: no usable samples ({skipped} skipped)"
                               + (f"; first: {skip_messages[0]}" if skip_messages else ""))
        self.config = config
        self.records = records
        self.long_edge, self.pad_multiple = long_edge, pad_multiple
        self.skipped = skipped
        self.skip_messages = list(skip_messages or [])

    @classmethod
    def open(cls, config: ImageDatasetConfig, *, long_edge: int, pad_multiple: int) -> ImageDepthDataset:
        """Parse the dataset's index into records (each format's loader)."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self.config.label

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self.records):
            raise IndexError(f"{self.name}: index {index} out of range [0, {len(self.records)})")
        for attempt in range(len(self.records)):
            record = self.records[(index + attempt) % len(self.records)]
            try:
                return self._sample(record)
            except DatasetError as exc:
                if not self.config.skip_bad:
                    raise
                self.note_skip(str(exc))
        raise DatasetError(f"{self.name}: no record could be read ({self.skipped} skipped); first: "
                           f"{self.skip_messages[0]}")

    def note_skip(self, message: str) -> None:
        """Count one skipped line or file (``skip_bad``)."""
        self.skipped += 1
        if len(self.skip_messages) < MAX_SKIP_MESSAGES:
            self.skip_messages.append(message)

    def _read(self, record: Record) -> RawSample:
        raise NotImplementedError

    def _sample(self, record: Record) -> dict[str, torch.Tensor]:
        raw = self._read(record)
        height, width = raw.rgb.shape[:2]
        for key in ("depth", "mask"):
            value = getattr(raw, key)
            if value is not None and value.shape != (height, width):
                raise DatasetError(
                    f"{record.where}: {key} is {value.shape[1]}x{value.shape[0]} (WxH) but the image "
                    f"{record.image} is {width}x{height}"
                )
        geometry = ResizePad.fit(width, height, self.long_edge, self.pad_multiple)
        if raw.depth is None:
            depth = np.zeros((height, width), np.float32)
            valid = np.zeros((height, width), bool)
        else:
            depth, valid = mask_depth(raw.depth, self.config.max_depth)
            if raw.mask is not None:
                valid &= raw.mask
                depth = np.where(valid, depth, np.float32(0.0))
        rgb = resize_pad(raw.rgb[None], geometry)[0]
        depth = resample_nearest(depth[None], geometry)[0]
        valid = resample_nearest(valid[None], geometry)[0]
        has_K = raw.K is not None
        K = geometry.apply_K(raw.K) if has_K else np.zeros((3, 3))
        pairs = np.zeros((0, 5), np.float32) if raw.pairs is None else move_pairs(raw.pairs, geometry)
        return {
            "rgb": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))),
            "depth": torch.from_numpy(depth.astype(np.float32)),
            "valid": torch.from_numpy(valid),
            "image": torch.from_numpy(geometry.valid_mask()),
            "K": torch.from_numpy(K.astype(np.float32)),
            "has_K": torch.tensor(has_K),
            "pairs": torch.from_numpy(pairs.astype(np.float32)),
        }


def mask_depth(depth: np.ndarray, max_depth: float) -> tuple[np.ndarray, np.ndarray]:
    """``(H, W)`` metres -> (depth float32 with 0 where invalid, valid bool): invalid is <= 0, NaN, inf or
    beyond ``max_depth``."""
    depth = np.asarray(depth, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0) & (depth <= max_depth)
    return np.where(valid, depth, np.float32(0.0)), valid


def move_pairs(pairs: np.ndarray, geometry: ResizePad) -> np.ndarray:
    """Point pairs ``(P, 5)`` in original pixels -> in resized + padded pixels (the map ``apply_K`` uses:
    pixel centre u goes to ``(u + 0.5) * sx - 0.5 + left``)."""
    (sx, sy), (left, top) = geometry.scale, geometry.pad[:2]
    out = np.array(pairs, dtype=np.float64, copy=True).reshape(-1, 5)
    out[:, [0, 2]] = (out[:, [0, 2]] + 0.5) * sx - 0.5 + left
    out[:, [1, 3]] = (out[:, [1, 3]] + 0.5) * sy - 0.5 + top
    return out.astype(np.float32)


def scale_K(K: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics of a ``from_size`` (W, H) image -> of the same view stored at ``to_size`` (pixel-area
    aligned, as ``ResizePad.apply_K``: centre u maps to ``(u + 0.5) * s - 0.5``)."""
    sx, sy = to_size[0] / from_size[0], to_size[1] / from_size[1]
    out = np.array(K, dtype=np.float64, copy=True)
    out[0, 0] *= sx
    out[0, 1] *= sx
    out[1, 1] *= sy
    out[0, 2] = (out[0, 2] + 0.5) * sx - 0.5
    out[1, 2] = (out[1, 2] + 0.5) * sy - 0.5
    return out


# --- file readers: each raises DatasetError naming ``where`` (file:line) and the file -----------------------


def read_rgb(path: Path, where: str) -> np.ndarray:
    """An image file -> ``(H, W, 3)`` uint8 RGB (grey and 16-bit images converted, alpha dropped)."""
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read image {path} ({exc.strerror or exc})") from exc
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise DatasetError(f"{where}: {path} is not a readable image")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_png(
    path: Path, where: str, dtypes: tuple[str, ...] = ("uint16",), *, grey_rgb: bool = False,
) -> np.ndarray:
    """A single-channel PNG -> ``(H, W)`` array of its stored integers, whose dtype must be in ``dtypes``.

    ``grey_rgb``: also accept a 3-channel PNG whose channels are equal (some releases store depth so).
    """
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read depth {path} ({exc.strerror or exc})") from exc
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise DatasetError(f"{where}: {path} is not a readable PNG")
    if image.ndim == 3 and grey_rgb and image.shape[2] == 3:
        if not (image == image[..., :1]).all():
            raise DatasetError(f"{where}: depth {path} has 3 unequal channels; expected one value per pixel")
        image = image[..., 0]
    if image.ndim != 2:
        raise DatasetError(f"{where}: depth {path} has {image.shape[2]} channels; expected one (grey PNG)")
    if image.dtype.name not in dtypes:
        raise DatasetError(
            f"{where}: depth {path} is {image.dtype.name}; expected {' or '.join(dtypes)} (a depth PNG of "
            "another bit depth would be mis-scaled)"
        )
    return image


def read_npy(path: Path, where: str, what: str = "depth") -> np.ndarray:
    """A numeric ``.npy`` array (pickles refused)."""
    try:
        array = np.load(path, allow_pickle=False)
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read {what} {path} ({exc.strerror or exc})") from exc
    except ValueError as exc:
        raise DatasetError(f"{where}: {what} {path} is not a numeric .npy array ({exc})") from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "iuf":
        dtype = getattr(array, "dtype", None)
        raise DatasetError(f"{where}: {what} {path} must hold numbers, got dtype {dtype}")
    return array


def read_h5(path: Path, key: str, where: str) -> np.ndarray:
    """Dataset ``key`` of an HDF5 file (needs the optional ``h5py``)."""
    h5py = _import_h5py()
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise DatasetError(f"{where}: {path} has no dataset '{key}' (set h5_key; it has {sorted(f)})")
            array = np.asarray(f[key][()])
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read HDF5 depth {path} ({exc})") from exc
    if array.dtype.kind not in "iuf":
        raise DatasetError(f"{where}: {path}:{key} must hold numbers, got dtype {array.dtype}")
    return array


def _import_h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise MissingDependencyError(
            "reading .h5 depth needs h5py: pip install 'videomamba-depth[h5]' (or pip install h5py)"
        ) from exc
    return h5py


def read_K(path: Path, where: str) -> np.ndarray:
    """One 3x3 intrinsics ``.npy`` or ``.json`` (:func:`~videomamba_depth.camera.load_intrinsics`)."""
    try:
        K = load_intrinsics(path)
    except IntrinsicsError as exc:
        raise DatasetError(f"{where}: {exc}") from exc
    if K.shape != (3, 3):
        raise DatasetError(f"{where}: intrinsics {path} must be one 3x3 matrix, got shape {K.shape}")
    return K


def read_text(path: Path, what: str) -> str:
    """The text of an index file, with a clear error when it is missing or not text."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: {what} not found") from exc
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read {what} ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: {what} is not UTF-8 text ({exc.reason})") from exc



def read_json(path: Path, what: str) -> Any:
    """The parsed JSON of an index file (:func:`read_text`'s errors, or one naming the file when it is not
    valid JSON)."""
    try:
        return json.loads(read_text(path, what))
    except ValueError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc

def collect(
    config: ImageDatasetConfig, makers: Iterable[Callable[[], Record]],
) -> tuple[list[Record], int, list[str]]:
    """Build one record per maker; a :class:`DatasetError` from a maker is raised, or with ``skip_bad``
    counted. Returns (records, skipped, first skip messages)."""
    records, skipped, messages = [], 0, []
    for make in makers:
        try:
            records.append(make())
        except DatasetError as exc:
            if not config.skip_bad:
                raise
            skipped += 1
            if len(messages) < MAX_SKIP_MESSAGES:
                messages.append(str(exc))
    return records, skipped, messages


def index_path(config: ImageDatasetConfig, suffix: str, hint: str) -> Path:
    """The index file ``root/split``, or ``root/<split><suffix>`` when ``split`` names no existing file and
    has no suffix (``split: train`` finds ``train.txt``). A :class:`DatasetError` with ``hint`` when neither
    is a file."""
    path = Path(config.root) / config.split
    if not path.is_file() and not path.suffix and path.with_suffix(suffix).is_file():
        path = path.with_suffix(suffix)
    if not path.is_file():
        raise DatasetError(f"{path}: {config.format} index not found ({hint})")
    return path


def read_K_text(path: Path, where: str) -> np.ndarray:
    """A 3x3 K written as 9 whitespace-separated numbers, row-major (float64, checked)."""
    text = read_text(path, "intrinsics")
    try:
        values = np.array([float(v) for v in text.split()], dtype=np.float64)
    except ValueError as exc:
        raise DatasetError(f"{where}: intrinsics {path} must hold numbers only ({exc})") from exc
    if values.size != 9:
        raise DatasetError(f"{where}: intrinsics {path} must hold 9 numbers (3x3), got {values.size}")
    try:
        return validate_K(values.reshape(3, 3), str(path))
    except IntrinsicsError as exc:
        raise DatasetError(f"{where}: {exc}") from exc


def require_file(path: Path, where: str, what: str) -> Path:
    """``path`` if it is a file, else a :class:`DatasetError` naming ``where`` and the missing file."""
    if not path.is_file():
        raise DatasetError(f"{where}: {what} {path} not found")
    return path

