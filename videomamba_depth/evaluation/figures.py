"""Evaluation figures: a depth strip (rgb | teacher | student | truth) and x-t slices that show flicker.

An x-t slice stacks one image row over time (time downwards): a stable depth video gives smooth vertical
structures, flicker shows as horizontal stripes (the whole row changing from one frame to the next).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from videomamba_depth.evaluation.data import EvalVideo
from videomamba_depth.viz import plot_grid, robust_range

# Colour range of the log-ratio x-t slices: +-this many log units (0.15 ~ +-16 %).
LOG_RATIO_RANGE = 0.15


def _crop_box(image: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _masked(depth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return np.where(valid & (depth > 0), depth, np.nan)


def depth_strip(path: Path, video: EvalVideo, depths: dict[str, np.ndarray], frames: int) -> Path:
    """rgb | teacher | student (streaming) | truth for ``frames`` evenly spaced frames, one shared range.

    ``depths``: method name -> ``(T, H, W)`` metres; the truth column appears when the reference is ground
    truth. Padding is cropped; invalid pixels are black.
    """
    ys, xs = _crop_box(video.image)
    picks = np.unique(np.linspace(0, video.num_frames - 1, frames).round().astype(int))
    columns = {"rgb": None, "teacher": video.teacher, "student (streaming)": depths["student_stream"]}
    if video.reference_kind == "ground_truth":
        columns["ground truth"] = video.reference
    cells = []
    for t in picks:
        row: list[np.ndarray | None] = [video.rgb[t, ys, xs]]
        for name, depth in list(columns.items())[1:]:
            ok = video.teacher_valid[t] if name == "teacher" else video.image
            row.append(_masked(depth[t], ok)[ys, xs])
        cells.append(row)
    reference = video.reference[picks][:, ys, xs]
    vmin, vmax = robust_range(reference, video.reference_valid[picks][:, ys, xs])
    return plot_grid(
        path, cells, title=f"{video.name}: depth (shared colour range; black: invalid)", units="depth (m)",
        vmin=vmin, vmax=vmax, col_labels=list(columns), row_labels=[f"frame {t}" for t in picks],
    )


def xt_slices(path: Path, video: EvalVideo, depths: dict[str, np.ndarray], row_fraction: float) -> Path:
    """Depth along one image row over time (time downwards): teacher | student stream | per-frame | truth."""
    row, ys, xs, columns = _xt_columns(video, depths, row_fraction)
    cells = [[_masked(depth[:, row, xs], video.image[row, xs][None]) for depth in columns.values()]]
    reference = video.reference[:, row, xs]
    vmin, vmax = robust_range(reference, video.reference_valid[:, row, xs])
    return plot_grid(
        path, cells, title=f"{video.name}: x-t slice of image row y={row - ys.start} (time downwards; "
        "horizontal stripes = flicker)", units="depth (m)", vmin=vmin, vmax=vmax, col_labels=list(columns),
        ylabel="frame t",
    )


def xt_log_ratio(path: Path, video: EvalVideo, depths: dict[str, np.ndarray], row_fraction: float) -> Path:
    """``log(depth / reference)`` along the x-t slice: errors that change from frame to frame are flicker."""
    row, _, xs, columns = _xt_columns(video, depths, row_fraction)
    reference = video.reference[:, row, xs]
    ok = video.reference_valid[:, row, xs] & (reference > 0)
    labels = [name for name, d in columns.items() if d is not video.reference]
    cells = [[_log_ratio(columns[name][:, row, xs], reference, ok) for name in labels]]
    return plot_grid(
        path, cells, title=f"{video.name}: log(depth / {video.reference_kind.replace('_', ' ')}) along the "
        "x-t slice (time downwards)", units="log ratio", vmin=-LOG_RATIO_RANGE, vmax=LOG_RATIO_RANGE,
        col_labels=labels, cmap="RdBu_r", ylabel="frame t",
    )


def _log_ratio(depth: np.ndarray, reference: np.ndarray, ok: np.ndarray) -> np.ndarray:
    ok = ok & (depth > 0)
    return np.where(ok, np.log(np.where(ok, depth, 1.0) / np.where(ok, reference, 1.0)), np.nan)


def _xt_columns(
    video: EvalVideo, depths: dict[str, np.ndarray], row_fraction: float
) -> tuple[int, slice, slice, dict[str, np.ndarray]]:
    ys, xs = _crop_box(video.image)
    row = ys.start + min(int(row_fraction * (ys.stop - ys.start)), ys.stop - ys.start - 1)
    columns = {"teacher": video.teacher, "student (streaming)": depths["student_stream"],
               "student (per-frame)": depths["student_reset"]}
    if video.reference_kind == "ground_truth":
        columns["ground truth"] = video.reference
    return row, ys, xs, columns
