"""The ``evaluate`` stage: teacher vs streaming student vs per-frame student on the held-out videos.

For each video of ``evaluate.videos`` the student (``data/train/model_best.safetensors``) runs through the
one streaming predictor (:class:`~videomamba_depth.inference.StreamingDepth`) twice: streaming (states
carried, the real use) and with its states reset before every frame (the per-frame ablation: what the
temporal module buys); an untrained student of the same architecture (initialised with seed
``UNTRAINED_SEED``, as ``train`` initialises with its default seed) streams too, the baseline that shows
what training bought. All are scored against ground truth where the prepared store has it (the
synthetic set), else against the teacher (:mod:`.scoring`). Outputs in ``out_dir`` (``data/evaluate``):

- ``metrics.json`` (DVC metrics): ``headline`` (the streaming student's targets at the metric alignment
  ``none``, :func:`headline`: accuracy, flicker vs the teacher and vs the per-frame student, each with its
  value, target and verdict, and ``all_ok``) and ``aggregate`` (mean over videos), ``{alignment: {method:
  {metric: value}}}`` (methods: ``METHODS``; region metrics ``scoring.REGION_METRICS`` included) plus
  ``floor`` (the ground truth's own temporal metrics);
- ``videos.json``: the same per video, with ``regions`` (share of the evaluated pixels in each region)
  (kept out of the DVC metrics, whose tables it would swamp);
- ``plots/<curve>/<video>.csv`` (DVC plots): ``abs_rel`` and ``moving_abs_rel`` (on moving-object pixels)
  per frame, ``jitter`` and ``tae`` per frame pair,
  ``drift`` (per-frame scale to the reference), ``change_histogram`` (frame-to-frame relative changes on
  static pixels); a column per method (and ``ground_truth``);
- ``images/<video>_strip.png``, ``<video>_xt.png``, ``<video>_xt_log_ratio.png`` (:mod:`.figures`).

Each output is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from videomamba_depth.config import StageConfig
from videomamba_depth.devices import resolve_device
from videomamba_depth.evaluation import figures
from videomamba_depth.evaluation.data import EvalVideo, load_eval_video
from videomamba_depth.evaluation.scoring import (
    DEPTH_METRICS,
    REGION_METRICS,
    ScoreSettings,
    change_histogram,
    floor,
    region_shares,
    score,
)
from videomamba_depth.inference import AnchoringConfig, StreamingDepth, load_checkpoint
from videomamba_depth.metrics import ALIGNMENTS, Alignment, aggregate
from videomamba_depth.models import build_student
from videomamba_depth.zarrio import PACKED_SUFFIX, atomic_directory, atomic_file

METHODS = ("teacher", "student_stream", "student_reset", "student_untrained")
# Seed of the untrained baseline's initialisation (train.seed's default: the trained model's own start).
UNTRAINED_SEED = 0
# The headline is judged on metric depth, as a metric model is used: no alignment to the reference.
HEADLINE_ALIGNMENT: Alignment = "none"


@dataclass(frozen=True)
class EvaluateConfig(StageConfig):
    """The ``evaluate`` section of params.yaml.

    - ``videos``: held-out manifest names (never in ``train.videos``).
    - ``alignments``: alignment modes reported (``metrics.ALIGNMENTS``); must include ``none`` (headline).
    - ``min_depth``, ``max_depth``: metres; reference depth outside is not evaluated, predictions are
      clipped to it.
    - ``still_flow_px``: ``jitter_still`` uses static pixels whose flow is shorter than this (pixels).
    - ``histogram_bins``, ``histogram_max_change``: change histogram over ``[-max, max]`` relative change.
    - ``strip_frames``: frames in the depth strip PNG; ``xt_row``: image row of the x-t slices as a fraction
      of the image height.
    - ``device``: ``cpu`` | ``cuda`` | ``auto``; ``threads``: torch CPU threads (0: all cores). Default 1:
      one-frame steps gain little from more, and on a busy machine OpenMP threads waiting for each other
      make them far slower (measured: a tiny model's step took 5 ms with 1 thread, 600 ms with 2 threads
      while other processes held both cores).
    - ``edge_threshold``, ``edge_band_px``: the depth-edge region: pixels within ``edge_band_px`` (square
      neighbourhood) of a pixel whose ground-truth ``|Δ log depth|`` to a 4-neighbour exceeds
      ``edge_threshold`` (``metrics.depth_edge_band``). ``near_view_depth``: the near-view region: frames
      whose 90th-percentile ground-truth depth is under this (metres; the synthetic near-wall turns).
    - headline targets of the streaming student at alignment ``none`` (:func:`headline`), all needed for
      ``all_ok``: accuracy against ground truth, ``target_abs_rel`` (AbsRel at most), ``target_delta1`` (δ1
      at least), ``target_moving_abs_rel`` (AbsRel on moving objects at most); flicker vs the teacher,
      ``target_tae_ratio`` and ``target_jitter_ratio`` (TAE and static jitter at most this x the
      teacher's); what the temporal module buys, streaming / per-frame student:
      ``target_stream_tae_ratio``, ``target_stream_jitter_ratio``, ``target_stream_abs_rel_ratio`` (at
      most). Flicker ratios alone are met by a blurred or constant depth (the untrained student's is
      near 0), hence the accuracy targets next to them.
    - ``anchoring``: keyframe anchoring of the streaming student (``inference.AnchoringConfig``).
    """

    videos: tuple[str, ...]
    alignments: tuple[Alignment, ...] = ("none", "median", "lstsq_disparity", "first_frame")
    min_depth: float = 1e-3
    max_depth: float = 80.0
    still_flow_px: float = 0.5
    histogram_bins: int = 41
    histogram_max_change: float = 0.2
    strip_frames: int = 4
    xt_row: float = 0.5
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    threads: int = 1
    edge_threshold: float = 0.1
    edge_band_px: int = 2
    near_view_depth: float = 2.0
    target_abs_rel: float = 0.12
    target_delta1: float = 0.85
    target_moving_abs_rel: float = 0.20
    target_tae_ratio: float = 0.5
    target_jitter_ratio: float = 0.5
    target_stream_tae_ratio: float = 0.7
    target_stream_jitter_ratio: float = 0.7
    target_stream_abs_rel_ratio: float = 0.95
    anchoring: AnchoringConfig = field(default_factory=AnchoringConfig)

    def __post_init__(self) -> None:
        if not self.videos or len(set(self.videos)) != len(self.videos):
            raise ValueError(f"videos: need at least one video and no duplicates, got {list(self.videos)}")
        unknown = set(self.alignments) - set(ALIGNMENTS)
        if unknown or HEADLINE_ALIGNMENT not in self.alignments:
            raise ValueError(f"alignments must be from {list(ALIGNMENTS)} and include "
                             f"'{HEADLINE_ALIGNMENT}', got {list(self.alignments)}")
        if not 0 < self.min_depth < self.max_depth:
            raise ValueError(f"need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}")
        if self.strip_frames < 1 or self.histogram_bins < 1 or self.threads < 0:
            raise ValueError("strip_frames and histogram_bins must be >= 1, threads >= 0")
        if not 0.0 <= self.xt_row <= 1.0 or self.histogram_max_change <= 0 or self.still_flow_px <= 0:
            raise ValueError("need xt_row in [0, 1], histogram_max_change > 0 and still_flow_px > 0")
        if self.edge_threshold <= 0 or self.edge_band_px < 0 or self.near_view_depth <= 0:
            raise ValueError(f"need edge_threshold > 0, edge_band_px >= 0 and near_view_depth > 0, got "
                             f"{self.edge_threshold}, {self.edge_band_px}, {self.near_view_depth}")

    def settings(self) -> ScoreSettings:
        return ScoreSettings(self.min_depth, self.max_depth, self.still_flow_px, self.histogram_bins,
                             self.histogram_max_change, self.edge_threshold, self.edge_band_px,
                             self.near_view_depth)


@dataclass
class _VideoResult:
    reference: str
    frames: int
    scores: dict[str, dict[str, dict[str, float]]]  # alignment -> method -> metric -> value
    floor: dict[str, float]
    regions: dict[str, float]  # <region>_pixels -> share of the evaluated pixels
    plots: dict[str, list[dict[str, Any]]]  # curve -> rows
    anchoring: dict[str, int]


def evaluate(
    config: EvaluateConfig,
    checkpoint: str | Path,
    *,
    data_dir: str | Path = "data",
    out_dir: str | Path = "data/evaluate",
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``config.videos`` (stores under ``data_dir``); write the outputs and return
    the metrics: ``metrics.json``'s content plus ``videos`` (``videos.json``'s)."""
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    if config.device != "cuda":
        torch.set_num_threads(config.threads or len(os.sched_getaffinity(0)))
    model, _ = load_checkpoint(checkpoint, resolve_device(config.device, "evaluate.device"))
    streaming = StreamingDepth(model, anchoring=config.anchoring)
    per_frame = StreamingDepth(model, reset_every_frame=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(UNTRAINED_SEED)
        untrained = StreamingDepth(build_student(model.config).to(next(model.parameters()).device))
    results: dict[str, _VideoResult] = {}
    with atomic_directory(out_dir / "images") as images:
        for name in config.videos:
            video = load_eval_video(
                name,
                *(data_dir / kind / f"{name}{PACKED_SUFFIX}" for kind in ("prepared", "teacher", "flow")),
            )
            depths = {
                "teacher": video.teacher,
                "student_stream": predict_video(streaming, video, "streaming"),
                "student_reset": predict_video(per_frame, video, "per-frame"),
                "student_untrained": predict_video(untrained, video, "untrained"),
            }
            results[name] = _score_video(video, depths, config)
            if streaming.anchor is not None:
                results[name].anchoring = {"restores": len(streaming.anchor.events),
                                           "stable_frames": streaming.anchor.stable_frames}
            figures.depth_strip(images / f"{name}_strip.png", video, depths, config.strip_frames)
            figures.xt_slices(images / f"{name}_xt.png", video, depths, config.xt_row)
            figures.xt_log_ratio(images / f"{name}_xt_log_ratio.png", video, depths, config.xt_row)
        with atomic_directory(out_dir / "plots") as plots:
            for name, result in results.items():
                for curve, rows in result.plots.items():
                    _write_csv(plots / curve / f"{name}.csv", rows)
    metrics = _metrics(results, config)
    summary = {k: v for k, v in metrics.items() if k != "videos"}
    for name, content in (("videos.json", metrics["videos"]), ("metrics.json", summary)):
        with atomic_file(out_dir / name) as tmp:
            tmp.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n")
    return metrics


def predict_video(predictor: StreamingDepth, video: EvalVideo, what: str) -> np.ndarray:
    """Depth ``(T, H, W)`` of the video, one frame at a time through ``predictor`` (reset first); ``what``
    names the pass in the progress bar."""
    predictor.reset()
    out = np.empty(video.teacher.shape, np.float32)
    for t in tqdm(range(video.num_frames), desc=f"evaluate {video.name} ({what})", unit="frame",
                  file=sys.stderr):
        out[t] = predictor(video.rgb[t], video.K[t], video.image)
    return out


def _score_video(video: EvalVideo, depths: dict[str, np.ndarray], config: EvaluateConfig) -> _VideoResult:
    settings = config.settings()
    scores: dict[str, dict[str, dict[str, float]]] = {}
    curves = {}
    for alignment in config.alignments:
        scores[alignment] = {}
        for method in METHODS:
            result = score(depths[method], video, alignment, settings,
                           is_reference=method == "teacher" and video.reference_kind == "teacher")
            scores[alignment][method] = result.means
            if alignment == HEADLINE_ALIGNMENT:
                curves[method] = result.curves
    gt_floor = floor(video, settings)
    # Every file of a plot has the same columns: "ground_truth" (the floor) is left empty without it, and
    # the teacher's AbsRel and scale are empty when it is the reference itself.
    nan_frames, nan_pairs = np.full(video.num_frames, np.nan), np.full(video.num_frames - 1, np.nan)
    plots = {
        "abs_rel": _rows("frame", {m: c.get("abs_rel", nan_frames) for m, c in curves.items()}),
        "moving_abs_rel": _rows("frame", {m: c.get("moving_abs_rel", nan_frames) for m, c in curves.items()}),
        "drift": _rows("frame", {m: c.get("scale", nan_frames) for m, c in curves.items()}),
    }
    for plot, curve in (("jitter", "jitter_static"), ("tae", "tae")):
        columns = {m: c[curve] for m, c in curves.items()}
        columns["ground_truth"] = nan_pairs if gt_floor is None else gt_floor.curves[curve]
        plots[plot] = _rows("pair", columns)
    histograms = {m: change_histogram(depths[m], video, settings) for m in METHODS}
    truth = None if gt_floor is None else change_histogram(video.reference, video, settings)
    plots["change_histogram"] = [
        {"relative_change": row["relative_change"], **{m: h[i]["fraction"] for m, h in histograms.items()},
         "ground_truth": float("nan") if truth is None else truth[i]["fraction"]}
        for i, row in enumerate(histograms["teacher"])
    ]
    means = {} if gt_floor is None else gt_floor.means
    return _VideoResult(video.reference_kind, video.num_frames, scores, means,
                        region_shares(video, settings), plots, {})


def _rows(x: str, columns: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    length = len(next(iter(columns.values())))
    return [{x: i, **{name: float(values[i]) for name, values in columns.items()}} for i in range(length)]


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as CSV; non-finite values (pairs or frames without pixels to compare) become empty cells."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if isinstance(v, float) and not math.isfinite(v) else v
                             for k, v in row.items()})


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _clean(tree: Any) -> Any:
    """NaN (nothing to compare) -> null, so metrics.json is strict JSON."""
    if isinstance(tree, dict):
        return {k: _clean(v) for k, v in tree.items()}
    return _finite(tree) if isinstance(tree, float) else tree


def _metrics(results: dict[str, _VideoResult], config: EvaluateConfig) -> dict[str, Any]:
    gt_videos = [n for n, r in results.items() if r.reference == "ground_truth"]
    # Accuracy is averaged over the videos with ground truth when there are any: an AbsRel against the
    # teacher is a different quantity and must not be mixed in.
    depth_videos = gt_videos or list(results)

    def video_means(name: str, alignment: str, method: str) -> dict[str, float]:
        means = results[name].scores[alignment][method]
        if name in depth_videos:
            return means
        return {k: v for k, v in means.items() if k not in (*DEPTH_METRICS, *REGION_METRICS, "scale_std")}

    aggregated = {
        alignment: {
            method: aggregate([video_means(n, alignment, method) for n in results]) for method in METHODS
        }
        for alignment in config.alignments
    }
    floors = [r.floor for r in results.values() if r.floor]
    return _clean({
        "reference": "ground_truth" if gt_videos else "teacher",
        "headline": headline(aggregated[HEADLINE_ALIGNMENT], config, bool(gt_videos)),
        "aggregate": {**aggregated, "floor": aggregate(floors) if floors else {}},
        "videos": {
            name: {"reference": r.reference, "frames": r.frames, "regions": r.regions, **r.scores,
                   "floor": r.floor}
            for name, r in results.items()
        },
        "anchoring": {
            "enabled": config.anchoring.enabled,
            "restores": sum(r.anchoring.get("restores", 0) for r in results.values()),
            "stable_frames": sum(r.anchoring.get("stable_frames", 0) for r in results.values()),
        },
    })


def headline(scores: dict[str, dict[str, float]], config: EvaluateConfig, has_gt: bool) -> dict[str, Any]:
    """The streaming student's targets at alignment ``none`` (``scores``: method -> aggregated metrics).

    ``targets``: name -> ``{"value", "target", "rule", "ok"}`` (``rule``: ``<=`` or ``>=``; ``ok`` null when
    the value cannot be computed): ``abs_rel``, ``delta1``, ``moving_abs_rel`` (against ground truth; null
    without it), ``tae_vs_teacher``, ``jitter_static_vs_teacher`` (ratios to the teacher),
    ``tae_vs_reset``, ``jitter_static_vs_reset``, ``abs_rel_vs_reset`` (ratios to the per-frame student).
    ``all_ok``: false when any target is missed, null when none is missed but one cannot be judged, else
    true: stability alone (a blurred or constant depth) never passes. ``vs_teacher`` (method -> metric ->
    ratio to the teacher) and ``abs_rel_vs_untrained`` are for reading, not targets.
    """
    nan = float("nan")

    def ratio(metric: str, method: str, over: str) -> float:
        den = scores[over].get(metric, nan)
        return scores[method].get(metric, nan) / den if den > 0 else nan

    def accuracy(value: float) -> float:
        return value if has_gt else nan  # an AbsRel against the teacher is not accuracy

    stream = scores["student_stream"]
    checks = {  # name -> (value, target, at most)
        "abs_rel": (accuracy(stream.get("abs_rel", nan)), config.target_abs_rel, True),
        "delta1": (accuracy(stream.get("delta1", nan)), config.target_delta1, False),
        "moving_abs_rel": (accuracy(stream.get("moving_abs_rel", nan)), config.target_moving_abs_rel, True),
        "tae_vs_teacher": (ratio("tae", "student_stream", "teacher"), config.target_tae_ratio, True),
        "jitter_static_vs_teacher": (ratio("jitter_static", "student_stream", "teacher"),
                                     config.target_jitter_ratio, True),
        "tae_vs_reset": (ratio("tae", "student_stream", "student_reset"), config.target_stream_tae_ratio,
                         True),
        "jitter_static_vs_reset": (ratio("jitter_static", "student_stream", "student_reset"),
                                   config.target_stream_jitter_ratio, True),
        "abs_rel_vs_reset": (accuracy(ratio("abs_rel", "student_stream", "student_reset")),
                             config.target_stream_abs_rel_ratio, True),
    }
    targets = {}
    for name, (value, target, at_most) in checks.items():
        ok = None if not math.isfinite(value) else bool(value <= target if at_most else value >= target)
        targets[name] = {"value": value, "target": target, "rule": "<=" if at_most else ">=", "ok": ok}
    verdicts = [t["ok"] for t in targets.values()]
    all_ok = False if False in verdicts else None if None in verdicts else True
    informative = ("abs_rel", "moving_abs_rel", "edge_abs_rel", "near_abs_rel", "tae", "jitter_static")
    return {
        "alignment": HEADLINE_ALIGNMENT,
        "all_ok": all_ok,
        "targets": targets,
        "vs_teacher": {m: {k: ratio(k, m, "teacher") for k in informative}
                       for m in METHODS if m != "teacher"},
        # What the states carried over time buy, region by region (near views: the memory of the room's
        # scale while the camera faces a plain wall).
        "stream_vs_reset": {k: ratio(k, "student_stream", "student_reset") for k in informative},
        # Below 1: training made the student more accurate than its own initialisation (a constant depth).
        "abs_rel_vs_untrained": ratio("abs_rel", "student_stream", "student_untrained"),
    }
