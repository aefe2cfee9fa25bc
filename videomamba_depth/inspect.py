"""``videomamba-depth inspect``: what is in a store, how it is stored, and a picture of it.

Works on any Zarr v3 group (every store the pipeline writes, including subgroups such as ``prepared``'s
``gt``): the tree, shapes, dtypes, dimension names, chunk and shard shapes, codecs, stored vs raw bytes,
per-array statistics (streamed over blocks of frames, so memory stays bounded) and the attributes. A damaged
store (a missing or truncated shard, see :func:`~videomamba_depth.zarrio.verify_store`) is still described,
with its problems listed first and no statistics for the damaged arrays (they would read as fill values).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from videomamba_depth import viz
from videomamba_depth.errors import InputError
from videomamba_depth.zarrio import open_store, stored_files, verify_store

# Statistics read at most this many uncompressed bytes at a time.
STATS_BLOCK_BYTES = 64 * 2**20
DEPTH_UNITS = frozenset({"m", "metres", "meters"})
DEFAULT_PNG_ARRAYS = ("rgb", "depth")


class InspectError(InputError):
    """A request ``inspect`` cannot satisfy (no such array, not an image, frame out of range)."""


def describe_store(path: str | Path, *, stats: bool = True) -> dict[str, Any]:
    """A JSON-serialisable description of the group at ``path``: groups and arrays, recursively.

    ``problems`` lists what makes the store incomplete or corrupt (empty when it is sound).
    """
    path = Path(path)
    root = open_store(path, verify=False)
    problems = verify_store(path, root)
    files = stored_files(root)
    damaged = {p.array for p in problems}
    groups, arrays = [], []
    _walk(root, "", groups, arrays, stats, damaged)
    return {
        "path": str(path),
        "kind": root.attrs.get("kind"),
        "problems": [str(p) for p in problems],
        "files": len(files),
        "stored_bytes": sum(files.values()),
        "attrs": dict(root.attrs),
        "groups": groups,
        "arrays": arrays,
    }


def _walk(group: zarr.Group, prefix: str, groups: list, arrays: list, stats: bool, damaged: set[str]) -> None:
    for name, node in sorted(group.members(), key=lambda m: m[0]):
        member = f"{prefix}/{name}"
        if isinstance(node, zarr.Group):
            groups.append({"path": member, "attrs": dict(node.attrs)})
            _walk(node, member, groups, arrays, stats, damaged)
        else:
            arrays.append(describe_array(node, member, stats=stats and member not in damaged))


def describe_array(array: zarr.Array, name: str, *, stats: bool = True) -> dict[str, Any]:
    """Shape, dtype, layout, codecs, bytes and (optionally) statistics of an array."""
    raw = math.prod(array.shape) * array.dtype.itemsize
    stored = sum(stored_files(array).values())
    codecs = array.metadata.to_dict()["codecs"]
    return {
        "path": name,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "dims": list(array.metadata.dimension_names or []),
        "chunks": list(array.chunks),
        "shards": None if array.shards is None else list(array.shards),
        "codecs": format_codecs(codecs),
        "stored_bytes": stored,
        "raw_bytes": raw,
        "compression_ratio": raw / stored if stored else None,
        "attrs": dict(array.attrs),
        "stats": array_stats(array) if stats else None,
    }


def format_codecs(codecs: list[dict]) -> str:
    """Zarr v3 codec metadata as one line, e.g. ``sharding_indexed[bytes > blosc(cname=zstd, ...)]``."""
    parts = []
    for codec in codecs:
        name, config = codec["name"], dict(codec.get("configuration") or {})
        if name == "sharding_indexed":
            parts.append(f"sharding_indexed[{format_codecs(config['codecs'])}]")
            continue
        args = ", ".join(f"{k}={v}" for k, v in config.items())
        parts.append(f"{name}({args})" if args else name)
    return " > ".join(parts)


def array_stats(array: zarr.Array) -> dict[str, Any] | None:
    """min/max/mean over finite values and NaN/inf counts (numbers), or the True count (bool).

    Reads blocks of whole chunks along the first axis, at most ``STATS_BLOCK_BYTES`` at a time.
    """
    if array.size == 0:
        return None
    is_bool, is_float = array.dtype == np.bool_, np.issubdtype(array.dtype, np.floating)
    item_bytes = max(1, math.prod(array.shape[1:]) * array.dtype.itemsize)
    chunk = array.chunks[0] if array.ndim else 1
    step = chunk * max(1, STATS_BLOCK_BYTES // (chunk * item_bytes)) if array.ndim else 1
    count = nan = inf = trues = 0
    total, lo, hi = 0.0, math.inf, -math.inf
    for start in range(0, array.shape[0] if array.ndim else 1, step):
        block = np.asarray(array[start : start + step] if array.ndim else array[...])
        if is_bool:
            trues += int(block.sum())
            continue
        if is_float:
            nan += int(np.isnan(block).sum())
            inf += int(np.isinf(block).sum())
            block = block[np.isfinite(block)]
        if block.size:
            count += block.size
            total += float(block.sum(dtype=np.float64))
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    if is_bool:
        return {"true": trues, "false": array.size - trues, "fraction_true": trues / array.size}
    stats: dict[str, Any] = {
        "min": lo if count else None, "max": hi if count else None, "mean": total / count if count else None
    }
    if is_float:
        stats.update({"finite": count, "nan": nan, "inf": inf})
    return stats


def format_report(description: dict[str, Any]) -> str:
    """The human-readable report printed by ``videomamba-depth inspect``: the tree in path order."""
    d = description
    lines = [
        f"{d['path']}: Zarr v3 group, kind={d['kind']}, {d['files']} files, "
        f"{_bytes(d['stored_bytes'])} stored",
        "  attributes:",
        *_format_attrs(d["attrs"], 4),
    ]
    if d["problems"]:
        lines[1:1] = [
            "  PROBLEMS: incomplete or corrupt store (re-run the stage that writes it; no stats for damaged "
            "arrays):",
            *(f"    {p}" for p in d["problems"]),
        ]
    nodes = [(g["path"], g, None) for g in d["groups"]] + [(a["path"], None, a) for a in d["arrays"]]
    for node_path, group, a in sorted(nodes, key=lambda n: n[0]):
        if group is not None:
            lines += [f"{node_path}/  group", "  attributes:", *_format_attrs(group["attrs"], 4)]
            continue
        dims = f"({', '.join(a['dims'])})" if a["dims"] else "(unnamed)"
        ratio = f"{a['compression_ratio']:.2f}x" if a["compression_ratio"] else "n/a"
        extra = {k: v for k, v in a["attrs"].items() if k not in ("units", "description")}
        lines += [
            f"{node_path}  {a['dtype']} {tuple(a['shape'])}  dims {dims}",
            f"    chunks {tuple(a['chunks'])}  shards {tuple(a['shards']) if a['shards'] else None}",
            f"    codecs {a['codecs']}",
            f"    bytes {_bytes(a['stored_bytes'])} stored / {_bytes(a['raw_bytes'])} raw "
            f"(compression {ratio})",
            f"    units {a['attrs'].get('units', '?')!r}: {a['attrs'].get('description', '')}",
        ]
        if extra:
            lines.append(f"    attrs {json.dumps(extra, sort_keys=True)}")
        if a["stats"] is not None:
            lines.append("    stats " + "  ".join(f"{k} {_number(v)}" for k, v in a["stats"].items()))
    return "\n".join(lines)


def _format_attrs(attrs: dict[str, Any], indent: int) -> list[str]:
    """Nested mappings one key per line; other values as compact JSON."""
    lines = []
    for key, value in sorted(attrs.items()):
        if isinstance(value, dict) and value:
            lines += [f"{' ' * indent}{key}:", *_format_attrs(value, indent + 2)]
        else:
            lines.append(f"{' ' * indent}{key}: {json.dumps(value)}")
    return lines


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _number(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def render_png(
    path: str | Path,
    out: str | Path,
    *,
    array: str | None = None,
    frame: int = 0,
    row: int | None = None,
    xt: bool = False,
) -> Path:
    """Draw one frame of an array of ``path`` (or, with ``xt``, image row ``row`` over time) into ``out``.

    uint8 RGB arrays are drawn as images, bool arrays as masks, numbers colour-mapped with a colorbar
    (turbo for depth in metres, invalid pixels black; viridis otherwise; 2-channel flow as its magnitude).
    ``array`` defaults to ``rgb`` or ``depth``. In an x-t slice time runs down the vertical axis: flicker
    shows as horizontal streaks, a stable video as smooth vertical structures.
    """
    path = Path(path)
    group = open_store(path)
    name = array or next((n for n in DEFAULT_PNG_ARRAYS if n in group), None)
    if name is None or name not in group or not isinstance(group[name], zarr.Array):
        arrays = describe_store(path, stats=False)["arrays"]
        images = ", ".join(a["path"].lstrip("/") for a in arrays if _is_image(a["dims"]))
        raise InspectError(f"{path}: no array {name or 'rgb/depth'!r}; arrays with images: {images}")
    arr = group[name]
    dims = tuple(arr.metadata.dimension_names or ())
    if not _is_image(dims):
        raise InspectError(f"{path}/{name}: dims {dims} have no 'y' and 'x' axes; nothing to draw")
    timed, height = dims[0] == "t", arr.shape[dims.index("y")]
    if xt:
        if not timed:
            raise InspectError(f"{path}/{name}: has no time axis, so no x-t slice")
        row = height // 2 if row is None else row
        if not 0 <= row < height:
            raise InspectError(f"{path}/{name}: row {row} outside 0..{height - 1}")
        values = np.asarray(arr[:, row])
        title = f"{path.name}/{name}: row y={row} over {arr.shape[0]} frames (x-t slice)"
        ylabel = "frame t"
    else:
        if timed and not -arr.shape[0] <= frame < arr.shape[0]:
            raise InspectError(f"{path}/{name}: frame {frame} outside 0..{arr.shape[0] - 1}")
        values = np.asarray(arr[frame] if timed else arr[...])
        title = f"{path.name}/{name}" + (f": frame {frame % arr.shape[0]} of {arr.shape[0]}" if timed else "")
        ylabel = "y (px)"
    channels = values.shape[2] if dims[-1] == "c" else None
    units = str(arr.attrs.get("units", ""))
    if values.dtype == np.uint8 and channels == 3:
        return viz.plot_image(out, values, title=title, ylabel=ylabel)
    if channels == 1:
        values = values[..., 0]
    elif channels == 2:
        values, title = np.hypot(values[..., 0].astype(np.float64), values[..., 1]), f"{title} (magnitude)"
    elif channels is not None:
        raise InspectError(f"{path}/{name}: {channels} channels of {values.dtype}; nothing to draw")
    if values.dtype == np.bool_:
        return viz.plot_mask(out, values, title=title, ylabel=ylabel)
    values = values.astype(np.float64)
    if units in DEPTH_UNITS:
        # Depth 0 (or below) marks pixels without a value (teacher invalid, padding).
        return viz.plot_scalar(out, values, title=title, units=units, cmap=viz.DEPTH_CMAP, valid=values > 0,
                               ylabel=ylabel)
    return viz.plot_scalar(out, values, title=title, units=units, cmap=viz.SCALAR_CMAP, ylabel=ylabel)


def _is_image(dims: Any) -> bool:
    return "y" in dims and "x" in dims
