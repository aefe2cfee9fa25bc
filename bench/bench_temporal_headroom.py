"""How much steadier the per-frame student could get by memory alone, and at what cost in accuracy.

The issue's temporal targets ask the streaming student for TAE and static jitter <= 0.7x, and AbsRel
<= 0.95x, those of the same student with its states reset every frame. This bench asks what simple causal
memories achieve on top of the trained per-frame (reset) student's output, on the evaluate stage's held-out
videos, scored by the evaluate stage's own code (alignment ``none``, vs ground truth):

- ``reset`` and ``stream``: the trained student per frame and streaming (as ``data/evaluate``);
- causal fusions of the ``reset`` output in log depth, frame by frame, each reading only frames <= t.
  ``memory`` is the fused previous frame, either as it is (``still``: no motion compensation) or warped
  into the current camera with the **ground-truth** poses and intrinsics (``gt_pose``: z-buffered forward
  splat, :func:`videomamba_depth.metrics.splat_depth`; perfect ego-motion, more than any student has).
  Pixels where memory and the current output differ by more than ``GATE`` in log depth (disocclusions,
  moving objects) keep the current output. Then either
  ``scale``: ``log d_t + beta * median(log memory - log d_t)`` (one offset per frame: a scale memory), or
  ``pixel``: ``beta * log memory + (1 - beta) * log d_t`` per pixel (an exponential moving average);
- ground-truth scale oracles (``gt_scale``): the ``reset`` output times one factor per frame, read from the
  truth. ``e_t``, the median of ``log(truth / d_t)`` over the frame's valid pixels, is frame t's scale error.
  ``per-frame`` removes it (every frame's scale right: what is left is shape); ``per-video`` removes each
  video's median error (the absolute level right, the frame-to-frame scale wander kept); ``video`` and
  ``causal`` keep the level and remove the wander, replacing ``e_t`` by its mean over the video, or over
  frames <= t. ``causal`` is what a scale memory could buy at best if it knew every frame's error but not
  the absolute scale: the frame's scale pulled to the running mean of the scales seen so far;
- ``floor``: the temporal metrics of the ground truth itself (what a perfect depth scores, surfaces do
  change depth between frames), and each variant's ``excess`` ratio ``(x - floor) / (reset - floor)``:
  the share of the per-frame student's avoidable flicker that is left.

Ratios are of the means over the videos (as the evaluate stage's headline), ``x / reset``. Pictures back
the numbers: ``bench_temporal_headroom_xt_{depth,log_ratio}.png``, the x-t slice (time downwards) of the
first video: per-frame, best fusion, truth, and log(depth / truth) of the first two; and
``bench_temporal_headroom_scale.png``, every video's ``e_t`` of the per-frame output against time (its level
and its wander; their median and standard deviation per video are ``reset_scale_error`` in the JSON).

Run: ``python -m bench.bench_temporal_headroom`` after ``make repro`` (``--checkpoint``, ``--data``,
``--betas``, ``--videos N``: the first N only). Results: ``bench/results/bench_temporal_headroom.{json,md}``
and the three PNGs above.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bench.bench_variants import held_out_stores
from bench.common import PARAMS, add_held_out_options, check_held_out_options, require_stores, write_results
from videomamba_depth.camera import relative_pose
from videomamba_depth.config import load_params, load_section
from videomamba_depth.evaluation import (
    HEADLINE_ALIGNMENT,
    EvaluateConfig,
    EvalVideo,
    load_eval_video,
    predict_video,
    score,
)
from videomamba_depth.evaluation.scoring import floor
from videomamba_depth.inference import StreamingDepth, load_checkpoint
from videomamba_depth.metrics import aggregate, splat_depth
from videomamba_depth.viz import plot_grid, robust_range

CHECKPOINT = Path("data/train/model_best.safetensors")
# |log memory - log d_t| above this (a 22% depth change) is a disocclusion or a moving object, not flicker.
GATE = 0.2
BETAS = (0.5, 0.7)
MOTIONS = ("still", "gt_pose")
MODES = ("scale", "pixel")
ORACLES = ("per-frame", "per-video", "video", "causal")
ACCURACY = ("abs_rel", "delta1", "moving_abs_rel", "near_abs_rel")
TEMPORAL = ("tae", "jitter_static")
# The stream-vs-reset targets (evaluate.target_stream_*_ratio of params.yaml).
TARGET_FIELDS = {"abs_rel": "target_stream_abs_rel_ratio", "tae": "target_stream_tae_ratio",
                 "jitter_static": "target_stream_jitter_ratio"}


def fuse(depth: np.ndarray, video: EvalVideo, beta: float, motion: str, mode: str,
         gate: float = GATE) -> np.ndarray:
    """Causal fusion of ``depth`` ``(T, H, W)`` metres (see the module docstring); ``(T, H, W)`` float32.

    ``motion``: ``still`` (the previous fused frame as it is) or ``gt_pose`` (warped with the video's
    ``pose_c2w`` and ``K_eval``); ``mode``: ``scale`` or ``pixel``. ``beta = 0`` returns ``depth``.
    """
    if motion not in MOTIONS or mode not in MODES:
        raise ValueError(f"fuse: motion must be one of {MOTIONS} and mode one of {MODES}, got {motion!r}, "
                         f"{mode!r}")
    # Log depth in float64: the fused value is re-used every frame, so rounding would accumulate.
    log_depth = np.log(np.clip(depth.astype(np.float64), 1e-6, None))
    fused = np.empty_like(log_depth)
    fused[0] = log_depth[0]
    image = video.image
    for t in range(1, len(depth)):
        if motion == "gt_pose":
            T_this_prev = relative_pose(video.pose_c2w[t - 1], video.pose_c2w[t])
            with np.errstate(invalid="ignore", divide="ignore"):
                memory = np.log(splat_depth(np.exp(fused[t - 1]), image, video.K_eval[t - 1], T_this_prev,
                                            video.K_eval[t], image.shape))
        else:
            memory = fused[t - 1]
        current = log_depth[t]
        with np.errstate(invalid="ignore"):
            agree = image & np.isfinite(memory) & (np.abs(memory - current) < gate)
        if mode == "scale":
            offset = float(np.median(memory[agree] - current[agree])) if agree.any() else 0.0
            fused[t] = current + beta * offset
        else:
            fused[t] = np.where(agree, beta * np.where(agree, memory, 0.0) + (1.0 - beta) * current, current)
    return np.exp(fused).astype(np.float32)


def frame_scale_errors(depth: np.ndarray, video: EvalVideo) -> np.ndarray:
    """``(T,)``: each frame's scale error ``e_t``, the median of ``log(truth / depth)`` over its valid pixels
    (0 for a frame without one, which the synthetic set never has)."""
    errors = np.zeros(len(depth))
    for t, (truth, d, ok) in enumerate(zip(video.reference, depth, video.reference_valid, strict=True)):
        if ok.any():
            errors[t] = np.median(np.log(truth[ok].astype(np.float64) / d[ok]))
    return errors


def oracle_scale(depth: np.ndarray, video: EvalVideo, oracle: str) -> np.ndarray:
    """``depth`` ``(T, H, W)`` metres times one ground-truth factor per frame (``oracle`` in
    :data:`ORACLES`, module docstring); ``(T, H, W)`` float32."""
    if oracle not in ORACLES:
        raise ValueError(f"oracle_scale: oracle must be one of {ORACLES}, got {oracle!r}")
    errors = frame_scale_errors(depth, video)
    if oracle == "per-frame":
        correction = errors
    elif oracle == "per-video":
        ok = video.reference_valid
        with np.errstate(divide="ignore", invalid="ignore"):
            log_error = np.log(video.reference[ok].astype(np.float64) / depth[ok])
        correction = np.full_like(errors, np.median(log_error) if ok.any() else 0.0)
    elif oracle == "video":
        correction = errors - errors.mean()
    else:
        correction = errors - np.cumsum(errors) / np.arange(1, len(errors) + 1)
    return (depth * np.exp(correction)[:, None, None]).astype(np.float32)


def variant_names(betas: Sequence[float]) -> list[tuple[str, str, str, float]]:
    """``(name, motion, mode, beta)`` of every fusion, e.g. ``gt_pose pixel b=0.7``."""
    return [(f"{motion} {mode} b={beta:g}", motion, mode, beta)
            for motion in MOTIONS for mode in MODES for beta in betas]


def measure(checkpoint: Path, data: Path, betas: Sequence[float], videos: int | None, threads: int | None,
            figure: Path | None) -> dict:
    """Per-variant means over the first ``videos`` held-out videos (None: all), their ratios to ``reset``
    and the floor."""
    config = load_section(EvaluateConfig, "evaluate", load_params(PARAMS))
    names = list(config.videos[:videos])
    require_stores("bench_temporal_headroom", (p for name in names for p in held_out_stores(data, name)))
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))
    model, _ = load_checkpoint(checkpoint, torch.device("cpu"))
    settings = config.settings()
    per_video: dict[str, list[dict[str, float]]] = {}
    floors, scale_errors = [], {}
    for name in names:
        video = load_eval_video(name, *held_out_stores(data, name))
        reset = predict_video(StreamingDepth(model, reset_every_frame=True), video, "per-frame")
        depths = {"reset": reset,
                  "stream": predict_video(StreamingDepth(model, anchoring=config.anchoring), video,
                                          "streaming")}
        for label, motion, mode, beta in variant_names(betas):
            depths[label] = fuse(reset, video, beta, motion, mode)
        for oracle in ORACLES:
            depths[f"gt_scale {oracle}"] = oracle_scale(reset, video, oracle)
        scale_errors[name] = frame_scale_errors(reset, video)
        for label, depth in depths.items():
            means = score(depth, video, HEADLINE_ALIGNMENT, settings).means
            per_video.setdefault(label, []).append({k: means[k] for k in (*ACCURACY, *TEMPORAL)})
        gt_floor = floor(video, settings)
        if gt_floor is None:
            raise SystemExit(f"bench_temporal_headroom: {name} has no ground truth (the floor and the "
                             "gt_pose fusions need it); use the synthetic held-out videos")
        floors.append({k: gt_floor.means[k] for k in TEMPORAL})
        if figure is not None and name == names[0]:
            best = f"gt_pose pixel b={max(betas):g}"
            xt_figure(figure, video, {"per-frame (reset)": reset, best: depths[best]})
    if figure is not None:
        scale_figure(figure.with_name(figure.stem.removesuffix("_xt") + "_scale.png"), scale_errors)
    means = {label: aggregate(rows) for label, rows in per_video.items()}
    gt = aggregate(floors)
    ratios = {label: {k: _ratio(m[k], means["reset"][k]) for k in (*ACCURACY, *TEMPORAL)}
              for label, m in means.items()}
    excess = {label: {k: _ratio(m[k] - gt[k], means["reset"][k] - gt[k]) for k in TEMPORAL}
              for label, m in means.items()}
    targets = {k: getattr(config, field) for k, field in TARGET_FIELDS.items()}
    return {"checkpoint": str(checkpoint), "videos": names, "alignment": HEADLINE_ALIGNMENT,
            "reset_scale_error": {name: {"level": float(np.median(e)), "wander": float(np.std(e))}
                                  for name, e in scale_errors.items()},
            "gate": GATE, "betas": list(betas), "means": means, "ratio_to_reset": ratios,
            "floor": gt, "floor_ratio_to_reset": {k: _ratio(gt[k], means["reset"][k]) for k in TEMPORAL},
            "excess": excess, "targets": targets,
            "meets_targets": {label: all(r[k] <= t for k, t in targets.items())
                              for label, r in ratios.items()}}


def _ratio(value: float, reference: float) -> float:
    """``value / reference``; NaN when the reference is 0 (nothing to compare with)."""
    return value / reference if reference != 0 else float("nan")


def xt_figure(path: Path, video: EvalVideo, depths: dict[str, np.ndarray]) -> None:
    """x-t slices (time downwards) of the middle image row: each depth and the truth, then each
    ``log(depth / truth)``."""
    rows = np.flatnonzero(video.image.any(axis=1))
    cols = np.flatnonzero(video.image.any(axis=0))
    row, xs = rows[len(rows) // 2], slice(cols[0], cols[-1] + 1)
    truth, ok = video.reference[:, row, xs], video.reference_valid[:, row, xs]
    vmin, vmax = robust_range(truth, ok)
    slices = {label: d[:, row, xs] for label, d in depths.items()}
    plot_grid(path.with_name(path.stem + "_depth.png"),
              [[np.where(ok, s, np.nan) for s in (*slices.values(), truth)]],
              title=f"{video.name}: x-t slice of row {row} (time downwards; stripes = flicker)",
              units="depth (m)", vmin=vmin, vmax=vmax, col_labels=[*slices, "ground truth"],
              ylabel="frame t")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = [np.where(ok, np.log(s / truth), np.nan) for s in slices.values()]
    plot_grid(path.with_name(path.stem + "_log_ratio.png"), [ratios],
              title=f"{video.name}: log(depth / truth) along the x-t slice", units="log ratio", vmin=-0.5,
              vmax=0.5, col_labels=list(slices), cmap="RdBu_r", ylabel="frame t")


def scale_figure(path: Path, errors: dict[str, np.ndarray]) -> None:
    """Each video's frame scale error ``e_t`` of the per-frame (reset) output against the frame index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    colours = plt.get_cmap("tab20").colors  # 20 distinct colours; the style tells the next 20 apart
    for i, (name, e) in enumerate(errors.items()):
        ax.plot(np.arange(len(e)), e, lw=1.2, color=colours[i % 20], ls="-" if i < 20 else "--", label=name)
    ax.axhline(0.0, color="k", lw=0.8)
    ax.set(xlabel="frame t", ylabel="scale error e_t = median log(truth / depth)",
           title="Per-frame student: how far each frame's scale is off")
    ax.legend(fontsize=7, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(r: dict) -> str:
    head = ("| variant | AbsRel | δ1 | moving AbsRel | near AbsRel | TAE (%) | jitter | AbsRel / reset | "
            "TAE / reset | jitter / reset | TAE excess | jitter excess |\n" + "|---|" + "---:|" * 11 + "\n")
    lines = []
    for label, m in r["means"].items():
        q, e = r["ratio_to_reset"][label], r["excess"][label]
        lines.append(f"| {label} | {m['abs_rel']:.4f} | {m['delta1']:.3f} | {m['moving_abs_rel']:.3f} | "
                     f"{m['near_abs_rel']:.3f} | {m['tae']:.3f} | {m['jitter_static']:.4f} | "
                     f"{q['abs_rel']:.3f} | {q['tae']:.3f} | {q['jitter_static']:.3f} | {e['tae']:.2f} | "
                     f"{e['jitter_static']:.2f} |")
    g, gr, t = r["floor"], r["floor_ratio_to_reset"], r["targets"]
    lines.append(f"| ground truth (floor) | 0 | 1 | 0 | 0 | {g['tae']:.3f} | {g['jitter_static']:.4f} | 0 | "
                 f"{gr['tae']:.3f} | {gr['jitter_static']:.3f} | 0 | 0 |")
    met = [label for label, ok in r["meets_targets"].items() if ok]
    return (head + "\n".join(lines) + "\n\n"
            f"Held-out videos {', '.join(r['videos'])}, alignment `{r['alignment']}`, `{r['checkpoint']}`; "
            f"fusions of the reset output, gate |Δ log d| < {r['gate']}. Targets (x / reset): AbsRel ≤ "
            f"{t['abs_rel']}, TAE ≤ {t['tae']}, jitter ≤ {t['jitter_static']}; met by: "
            f"{', '.join(met) if met else 'none'}. Excess = (x − floor) / (reset − floor).\n")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_held_out_options(parser, CHECKPOINT)
    parser.add_argument("--betas", type=float, nargs="+", default=list(BETAS))
    args = parser.parse_args(argv)
    check_held_out_options(parser, args)
    if not all(0.0 <= b < 1.0 for b in args.betas):
        parser.error(f"--betas: each must be in [0, 1), got {args.betas}")
    args.results.mkdir(parents=True, exist_ok=True)
    results = measure(args.checkpoint, args.data, args.betas, args.videos, args.threads,
                      args.results / "bench_temporal_headroom_xt.png")
    write_results("bench_temporal_headroom", results, markdown(results), args.results)
    return results


if __name__ == "__main__":
    main()
