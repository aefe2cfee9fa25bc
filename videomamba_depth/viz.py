"""Colormaps and PNG figures for frames, depth maps, masks and x-t slices (``inspect``, evaluation).

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display needed). Scalar
maps get a colorbar labelled with their units; pixels marked invalid are drawn black.
"""

from __future__ import annotations

import functools
from pathlib import Path

import cv2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DEPTH_CMAP = "turbo"
SCALAR_CMAP = "viridis"
# Robust colour range: percentiles of the valid values, so a few outliers do not wash out the map.
RANGE_PERCENTILES = (1.0, 99.0)
# Colour levels of a colormap (matplotlib's default resolution of a named colormap).
COLOUR_LEVELS = 256
_DPI = 100
# Displayed image size in pixels: small images are enlarged (nearest neighbour), huge ones shrunk.
_MIN_SIDE, _MAX_WIDTH, _MAX_HEIGHT = 320, 1000, 800


def robust_range(values: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """(vmin, vmax): ``RANGE_PERCENTILES`` of the finite (and ``valid``) values; (0, 1) if there are none."""
    keep = np.isfinite(values) if valid is None else np.isfinite(values) & valid
    if not keep.any():
        return 0.0, 1.0
    lo, hi = np.percentile(values[keep], RANGE_PERCENTILES)
    return float(lo), float(hi if hi > lo else lo + 1e-6)


@functools.cache
def colour_table(cmap: str) -> np.ndarray:
    """``(256, 3)`` uint8 RGB table of ``cmap``: entry ``i`` is the colour matplotlib gives level ``i``."""
    return (matplotlib.colormaps[cmap].resampled(COLOUR_LEVELS)(np.arange(COLOUR_LEVELS))[:, :3] * 255.0
            + 0.5).astype(np.uint8)


def colorize(
    values: np.ndarray,
    vmin: float,
    vmax: float,
    cmap: str = DEPTH_CMAP,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Scalars ``(...)`` -> RGB ``(..., 3)`` uint8 through ``cmap`` on [vmin, vmax]; invalid ones black.

    A table look-up (:func:`colour_table`): value ``v`` takes level ``floor(256 (v - vmin) / (vmax - vmin))``
    clipped to 0..255, as matplotlib quantises a colormap. Computed in float32 (the preview of a 960 x 540
    video colours every frame): a value within ~1e-7 of a level boundary may take the neighbouring level.
    """
    values = np.asarray(values, dtype=np.float32)
    keep = np.isfinite(values) if valid is None else np.isfinite(values) & valid
    scale = np.float32(COLOUR_LEVELS / max(vmax - vmin, 1e-12))
    # NaN/inf become level 0 here (np.clip passes NaN through; the float -> uint8 cast is then undefined),
    # then black below.
    level = np.where(keep, values, np.float32(vmin))
    level -= np.float32(vmin)
    level *= scale
    np.clip(level, 0.0, COLOUR_LEVELS - 1, out=level)
    level = level.astype(np.uint8).reshape(-1, 1)
    # cv2's table look-up is ~25x faster than numpy fancy indexing over (N, 3) rows.
    rgb = cv2.applyColorMap(level, colour_table(cmap)[:, None, :]) if level.size else np.zeros((0, 1, 3))
    rgb = rgb.reshape(*values.shape, 3).astype(np.uint8, copy=False)
    rgb[~keep] = 0
    return rgb


def plot_image(path: str | Path, image: np.ndarray, *, title: str, xlabel: str = "x (px)",
               ylabel: str = "y (px)") -> Path:
    """Save an RGB uint8 image ``(H, W, 3)`` as a titled PNG figure with pixel axes."""
    fig, ax = _figure(image.shape[0], image.shape[1], colorbar=False)
    ax.imshow(image, interpolation="nearest", aspect="auto")
    return _save(fig, ax, path, title, xlabel, ylabel)


def plot_mask(path: str | Path, mask: np.ndarray, *, title: str, xlabel: str = "x (px)",
              ylabel: str = "y (px)") -> Path:
    """Save a boolean mask ``(H, W)`` as a PNG figure, True white and False black."""
    fig, ax = _figure(mask.shape[0], mask.shape[1], colorbar=False)
    ax.imshow(mask.astype(np.uint8), cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    return _save(fig, ax, path, f"{title}\nwhite = True ({mask.mean():.1%} of pixels)", xlabel, ylabel)


def plot_scalar(
    path: str | Path,
    values: np.ndarray,
    *,
    title: str,
    units: str,
    cmap: str = DEPTH_CMAP,
    valid: np.ndarray | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    xlabel: str = "x (px)",
    ylabel: str = "y (px)",
) -> Path:
    """Save a scalar map ``(H, W)`` colour-mapped, with a colorbar in ``units`` (robust range by default)."""
    lo, hi = robust_range(values, valid)
    vmin, vmax = (lo if vmin is None else vmin), (hi if vmax is None else vmax)
    keep = np.isfinite(values) if valid is None else np.isfinite(values) & valid
    fig, ax = _figure(values.shape[0], values.shape[1], colorbar=True)
    ax.imshow(colorize(values, vmin, vmax, cmap, valid), interpolation="nearest", aspect="auto")
    label = units if keep.all() else f"{units}   (black: invalid)"
    fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), ax=ax, label=label)
    return _save(fig, ax, path, title, xlabel, ylabel)


def _figure(height: int, width: int, *, colorbar: bool) -> tuple[Figure, object]:
    # One scale for both axes (square pixels), except that very short images (an x-t slice of a few frames)
    # are stretched vertically to stay readable.
    scale = min(max(1.0, _MIN_SIDE / width), _MAX_WIDTH / width, _MAX_HEIGHT / height)
    disp_w, disp_h = width * scale, max(height * scale, _MIN_SIDE / 2)
    extra_w = 1.6 if colorbar else 0.6
    fig = Figure(figsize=(disp_w / _DPI + extra_w, disp_h / _DPI + 0.9), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def _save(fig: Figure, ax: object, path: str | Path, title: str, xlabel: str, ylabel: str) -> Path:
    ax.set_title(title, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def plot_grid(
    path: str | Path,
    cells: list[list[np.ndarray | None]],
    *,
    title: str,
    units: str,
    vmin: float,
    vmax: float,
    col_labels: list[str],
    row_labels: list[str] | None = None,
    cmap: str = DEPTH_CMAP,
    valid: np.ndarray | None = None,
    xlabel: str = "x (px)",
    ylabel: str = "y (px)",
) -> Path:
    """Save a grid of images sharing one colour range and one colorbar in ``units``.

    ``cells[r][c]`` is an RGB uint8 image ``(H, W, 3)`` (drawn as is), a scalar map ``(H, W)`` (colour-mapped
    on ``[vmin, vmax]``; ``valid`` ``(H, W)``, when given, blacks out the other pixels) or None (left
    empty). Columns are titled with ``col_labels``, rows labelled with ``row_labels``; every cell of a row
    should have the same size.
    """
    rows, cols = len(cells), len(col_labels)
    height = max(c.shape[0] for row in cells for c in row if c is not None)
    width = max(c.shape[1] for row in cells for c in row if c is not None)
    # Same display scale rule as single figures, applied to the whole grid.
    scale = min(max(1.0, _MIN_SIDE / width), _MAX_WIDTH / (cols * width), _MAX_HEIGHT / (rows * height), 2.0)
    cell_w, cell_h = width * scale / _DPI, max(height * scale, _MIN_SIDE / 3) / _DPI
    fig = Figure(figsize=(cols * (cell_w + 0.35) + 1.4, rows * (cell_h + 0.35) + 0.8), dpi=_DPI,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            ax = axes[r][c]
            if cell is None:
                ax.axis("off")
                continue
            image = cell if cell.ndim == 3 else colorize(cell, vmin, vmax, cmap, valid)
            ax.imshow(image, interpolation="nearest", aspect="auto")
            ax.tick_params(labelsize=7)
            if r == 0:
                ax.set_title(col_labels[c], fontsize=9)
            if r == rows - 1:
                ax.set_xlabel(xlabel, fontsize=8)
            if c == 0:
                ax.set_ylabel(ylabel if row_labels is None else f"{row_labels[r]}\n{ylabel}", fontsize=8)
    fig.colorbar(ScalarMappable(Normalize(vmin, vmax), cmap), ax=axes, label=units, shrink=0.9)
    fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
