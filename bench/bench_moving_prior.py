"""How far a floating moving object is cannot be seen: the floor this sets under the moving-object target.

The synth stage draws a moving object's *apparent* size (``synth.moving_view_size``, a share of the image
width) and its angular speed (``moving_view_speed``, fields of view per second) independently of its distance
(``moving_distance_m``), and floats it at the camera's line of sight. So nothing in a frame, nor in its
motion across frames, tells a ball of 0.5 m at 2 m from one of 0.4 m at 1.6 m: only the occlusion order with
the room behind it and the prior over distances do. A passer (a person-sized box walking on the floor) is
different: its size and floor contact give its distance away.

This bench measures what that ambiguity costs on the evaluate stage's held-out videos, with ground truth:

- ``objects``: every 4-connected component of a frame's ground-truth motion mask (at least ``MIN_PIXELS``),
  with its median true depth ``d`` and its pixel count. Videos with a passer are kept apart
  (``floating`` = videos without one, whose every moving object floats);
- ``prior``: the one distance ``c`` that minimises the pixel-weighted ``|c / d - 1|`` over the floating
  objects of the **training** videos (the 1/d-weighted median of their ``d``): the best guess of a model
  that knows each object's shape exactly but not its distance. Its held-out moving AbsRel is the floor;
- the streaming student (``data/train/model_best``, as the evaluate stage runs it) on the same pixels:
  ``moving AbsRel`` (as the headline computes it, pooled over the objects' pixels), ``level`` (the
  pixel-weighted ``|s / d - 1|`` of the object medians ``s`` and ``d``: how far off the whole object is),
  ``shape`` (moving AbsRel after each object is rescaled to its true median: edges and shape only), and the
  correlation of ``log s`` with ``log d`` over the objects (0: no idea of the distance).

A picture backs the numbers: ``bench_moving_prior.png``, the student's object depth against the truth, one
point per object and frame, with the prior's guess and the diagonal.

Run: ``python -m bench.bench_moving_prior`` after ``make repro`` (``--checkpoint``, ``--data``,
``--train-videos``, ``--videos N``: the first N only, ``--threads``, ``--results``). Results:
``bench/results/bench_moving_prior.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch
import zarr

from bench.bench_variants import held_out_stores
from bench.common import PARAMS, add_held_out_options, check_held_out_options, require_stores, write_results
from videomamba_depth.config import load_params, load_section
from videomamba_depth.evaluation import EvaluateConfig, load_eval_video, predict_video
from videomamba_depth.inference import StreamingDepth, load_checkpoint
from videomamba_depth.zarrio import PACKED_SUFFIX, open_store

CHECKPOINT = Path("data/train/model_best.safetensors")
TRAIN_VIDEOS = Path("data/train_videos.yaml")
# Components smaller than this (an object entering at the border, a sliver behind furniture) are left out:
# their median says little about the object.
MIN_PIXELS = 20
GROUPS = ("floating", "with_passer")


def object_masks(motion: np.ndarray, min_pixels: int = MIN_PIXELS) -> Iterator[np.ndarray]:
    """The 4-connected components of one frame's motion mask ``(H, W)`` bool with at least ``min_pixels``
    pixels, each an ``(H, W)`` bool mask. Two objects that overlap in the image count as one."""
    labels, count = ndi.label(motion)
    for i in range(1, count + 1):
        mask = labels == i
        if mask.sum() >= min_pixels:
            yield mask


def prior_distance(depth: np.ndarray, pixels: np.ndarray) -> float:
    """The ``c`` minimising ``sum(pixels * |c / depth - 1|)``: the median of ``depth`` weighted by
    ``pixels / depth`` (the loss is ``sum(pixels / depth * |c - depth|)``), metres."""
    order = np.argsort(depth)
    d, w = depth[order], (pixels / depth)[order]
    cumulative = np.cumsum(w)
    return float(d[np.searchsorted(cumulative, 0.5 * cumulative[-1])])


def has_passer(group: zarr.Group, prepared: Path) -> bool:
    """Whether the synthetic video behind the prepared store ``group`` (opened from ``prepared``) has a passer
    (read from its ground-truth store's scene record, which the prepared store names)."""
    gt_path = group.attrs.get("ground_truth")
    if gt_path is None:
        raise SystemExit(f"{prepared}: no ground truth; this bench needs the synthetic videos' stores")
    scene = open_store(gt_path, "ground_truth").attrs["scene"]
    return scene["events"]["passer"] is not None


def training_objects(data: Path, videos: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Median true depth (metres) and pixel count of every object of the floating training videos."""
    depths, pixels = [], []
    for name in videos:
        prepared = data / "prepared" / f"{name}{PACKED_SUFFIX}"
        group = open_store(prepared, "prepared")
        if has_passer(group, prepared):
            continue
        gt = group["gt"]
        depth, motion = gt["depth"][:], gt["motion_mask"][:].astype(bool)
        for t in range(len(depth)):
            for mask in object_masks(motion[t]):
                depths.append(float(np.median(depth[t][mask])))
                pixels.append(int(mask.sum()))
    if not depths:
        raise SystemExit("bench_moving_prior: the training videos have no floating moving object to fit the "
                         "prior with")
    return np.array(depths), np.array(pixels, dtype=float)


def score_objects(student: np.ndarray, truth: np.ndarray, motion: np.ndarray, valid: np.ndarray,
                  prior: float) -> list[dict[str, float]]:
    """One row per object and frame of a video: ``student`` and ``truth`` ``(T, H, W)`` metres, ``motion``
    and ``valid`` ``(T, H, W)`` bool. Sums over the object's pixels, so pooled means weight pixels equally."""
    rows = []
    for t in range(len(truth)):
        for mask in object_masks(motion[t] & valid[t]):
            d, s = truth[t][mask].astype(np.float64), student[t][mask].astype(np.float64)
            d_obj, s_obj = float(np.median(d)), float(np.median(s))
            rows.append({"frame": t, "pixels": int(mask.sum()), "depth": d_obj, "student": s_obj,
                         "abs_rel_sum": float(np.sum(np.abs(s - d) / d)),
                         "shape_sum": float(np.sum(np.abs(s * (d_obj / s_obj) - d) / d)),
                         "level_sum": mask.sum() * abs(s_obj / d_obj - 1.0),
                         "prior_sum": mask.sum() * abs(prior / d_obj - 1.0)})
    return rows


def summarise(rows: list[dict[str, float]]) -> dict[str, float]:
    """Pixel-pooled means of a group's object rows and the correlation of log student and true depth."""
    pixels = sum(r["pixels"] for r in rows)
    s = np.log([r["student"] for r in rows])
    d = np.log([r["depth"] for r in rows])
    return {"objects": len(rows), "pixels": pixels,
            "prior_abs_rel": sum(r["prior_sum"] for r in rows) / pixels,
            "moving_abs_rel": sum(r["abs_rel_sum"] for r in rows) / pixels,
            "level": sum(r["level_sum"] for r in rows) / pixels,
            "shape": sum(r["shape_sum"] for r in rows) / pixels,
            "log_corr": float(np.corrcoef(s, d)[0, 1]) if len(rows) > 1 else float("nan")}


def measure(checkpoint: Path, data: Path, train_videos: Sequence[str], videos: int | None,
            threads: int | None, figure: Path | None) -> dict:
    """The prior fitted on ``train_videos`` and the scores of the first ``videos`` held-out videos (None:
    all), per group and per video."""
    config = load_section(EvaluateConfig, "evaluate", load_params(PARAMS))
    names = list(config.videos[:videos])
    held_out = [p for name in names for p in held_out_stores(data, name)]
    training = [data / "prepared" / f"{name}{PACKED_SUFFIX}" for name in train_videos]
    require_stores("bench_moving_prior", [*held_out, *training])
    train_depth, train_pixels = training_objects(data, train_videos)
    prior = prior_distance(train_depth, train_pixels)
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    model, _ = load_checkpoint(checkpoint, torch.device("cpu"))
    per_video, groups = {}, {g: [] for g in GROUPS}
    for name in names:
        prepared = held_out_stores(data, name)[0]
        video = load_eval_video(name, *held_out_stores(data, name))
        if video.motion is None:
            raise SystemExit(f"{prepared}: no ground-truth motion mask; this bench needs synthetic videos")
        student = predict_video(StreamingDepth(model, anchoring=config.anchoring), video, "streaming")
        rows = score_objects(student, video.reference, video.motion, video.reference_valid, prior)
        group = "with_passer" if has_passer(open_store(prepared, "prepared"), prepared) else "floating"
        groups[group] += rows
        per_video[name] = {"group": group, **summarise(rows)} if rows else {"group": group, "objects": 0}
    result = {"checkpoint": str(checkpoint), "videos": names, "train_videos": list(train_videos),
              "min_pixels": MIN_PIXELS, "prior_m": prior, "train_objects": len(train_depth),
              "train_prior_abs_rel": float(np.sum(train_pixels * np.abs(prior / train_depth - 1))
                                           / train_pixels.sum()),
              "groups": {g: summarise(rows) for g, rows in groups.items() if rows}, "per_video": per_video}
    if figure is not None:
        scatter(figure, groups, prior)
    return result


def scatter(path: Path, groups: dict[str, list[dict[str, float]]], prior: float) -> None:
    """Student object depth against the truth, log-log, one point per object and frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(5, 4.4))
    for group, colour in zip(GROUPS, ("tab:blue", "tab:orange"), strict=True):
        rows = groups[group]
        if rows:
            ax.scatter([r["depth"] for r in rows], [r["student"] for r in rows], s=8, alpha=0.6, c=colour,
                       label=f"{group.replace('_', ' ')} ({len(rows)})")
    lo, hi = 0.5, 6.0
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8, label="truth")
    ax.axhline(prior, color="tab:green", ls="--", lw=1, label=f"prior guess {prior:.2f} m")
    ticks = [0.5, 1, 1.5, 2, 3, 4, 6]
    ax.set(xscale="log", yscale="log", xlim=(lo, hi), ylim=(lo, hi), xlabel="true object depth (m, median)",
           ylabel="streaming student (m, median)", title="Held-out moving objects: depth seen vs true")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FixedFormatter([f"{t:g}" for t in ticks]))
        axis.set_minor_locator(NullLocator())
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(r: dict) -> str:
    head = ("| objects | count (object-frames) | prior guess AbsRel (floor) | student moving AbsRel | "
            "student level | student shape | corr(log student, log truth) |\n|---|" + "---:|" * 6 + "\n")
    lines = [f"| {g.replace('_', ' ')} | {s['objects']} | {s['prior_abs_rel']:.3f} | "
             f"{s['moving_abs_rel']:.3f} | {s['level']:.3f} | {s['shape']:.3f} | {s['log_corr']:.2f} |"
             for g, s in r["groups"].items()]
    return (head + "\n".join(lines) + "\n\n"
            f"Held-out videos {', '.join(r['videos'])}; the prior guess {r['prior_m']:.2f} m is fitted on "
            f"the {r['train_objects']} floating object-frames of the training videos (its AbsRel there: "
            f"{r['train_prior_abs_rel']:.3f}); student `{r['checkpoint']}`, streaming, alignment none. "
            "Pooled over object pixels. The floor holds for floating objects only: a passer's distance can "
            "be seen.\n")


def main(argv: list[str] | None = None) -> dict:
    import yaml

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_held_out_options(parser, CHECKPOINT)
    parser.add_argument("--train-videos", type=Path, default=TRAIN_VIDEOS,
                        help="YAML file whose `videos` list the training videos (fits the prior)")
    args = parser.parse_args(argv)
    check_held_out_options(parser, args)
    if not args.train_videos.is_file():
        parser.error(f"{args.train_videos}: no such file (the training videos' list)")
    train_videos = (yaml.safe_load(args.train_videos.read_text()) or {}).get("videos")
    if not isinstance(train_videos, list) or not train_videos:
        parser.error(f"{args.train_videos}: needs a non-empty `videos` list")
    args.results.mkdir(parents=True, exist_ok=True)
    results = measure(args.checkpoint, args.data, [str(v) for v in train_videos], args.videos, args.threads,
                      args.results / "bench_moving_prior.png")
    write_results("bench_moving_prior", results, markdown(results), args.results)
    return results


if __name__ == "__main__":
    main()
