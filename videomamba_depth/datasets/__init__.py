"""Image depth datasets in their real on-disk formats, for per-frame (image) pre-training.

One loader per format (``filelist``, ``nyu_csv``, ``sunrgbd``, ``ibims1``, ``da2k``), all returning the
same sample dict (:class:`ImageDepthDataset`) at the geometry the ``prepare`` stage gives video frames;
:class:`MixedImageSampler` / :class:`MixedImageDataset` mix them by weight, reproducibly and DDP-sharded.
"""

from __future__ import annotations

from videomamba_depth.datasets.base import (
    FORMATS,
    DatasetError,
    ImageDatasetConfig,
    ImageDepthDataset,
    RawSample,
    Record,
)
from videomamba_depth.datasets.da2k import DA2KDataset
from videomamba_depth.datasets.filelist import FileListDataset, write_filelist, write_image_sample
from videomamba_depth.datasets.ibims import IBims1Dataset
from videomamba_depth.datasets.mixing import (
    ImageKey,
    MixedImageDataset,
    MixedImageSampler,
    augment,
    collate_images,
)
from videomamba_depth.datasets.nyu import NYUCSVDataset
from videomamba_depth.datasets.sunrgbd import SUNRGBDDataset

LOADERS: dict[str, type[ImageDepthDataset]] = {
    "filelist": FileListDataset,
    "nyu_csv": NYUCSVDataset,
    "sunrgbd": SUNRGBDDataset,
    "ibims1": IBims1Dataset,
    "da2k": DA2KDataset,
}


def open_image_dataset(config: ImageDatasetConfig, *, long_edge: int, pad_multiple: int) -> ImageDepthDataset:
    """Parse the index of the dataset ``config`` describes (files are read per sample, lazily).

    Raises :class:`DatasetError` naming the file (and line) of a bad index entry or missing file, unless
    ``config.skip_bad`` (then such entries are skipped and counted in ``.skipped``).
    """
    return LOADERS[config.format].open(config, long_edge=long_edge, pad_multiple=pad_multiple)


__all__ = [
    "FORMATS",
    "LOADERS",
    "DA2KDataset",
    "DatasetError",
    "FileListDataset",
    "IBims1Dataset",
    "ImageDatasetConfig",
    "ImageDepthDataset",
    "ImageKey",
    "MixedImageDataset",
    "MixedImageSampler",
    "NYUCSVDataset",
    "RawSample",
    "Record",
    "SUNRGBDDataset",
    "augment",
    "collate_images",
    "open_image_dataset",
    "write_filelist",
    "write_image_sample",
]
