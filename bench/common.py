"""Helpers every benchmark uses: one timing loop, one way to write results, the default student."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

from videomamba_depth.config import load_params, load_section
from videomamba_depth.models import ModelConfig, VideoMambaDepth, build_student
from videomamba_depth.prepare import PrepareConfig

RESULTS = Path(__file__).resolve().parent / "results"
PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def call_seconds(fn: Callable[[], object], repeats: int, warm_up: int = 1) -> list[float]:
    """Wall time of each of ``repeats`` calls of ``fn``, after ``warm_up`` untimed calls, seconds."""
    for _ in range(warm_up):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def write_results(name: str, results: dict, markdown: str, directory: Path = RESULTS) -> None:
    """``bench/results/<name>.json`` (the numbers) and ``<name>.md`` (the table the README quotes); prints
    the table. ``directory`` replaces bench/results (tests write elsewhere)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (directory / f"{name}.md").write_text(markdown)
    print(markdown)


def default_preprocessing() -> dict[str, int]:
    """The prepare geometry of params.yaml (``long_edge``, ``pad_multiple``): what ``make repro``'s student
    is trained with and so what ``infer`` runs it at."""
    prepare = load_section(PrepareConfig, "prepare", load_params(PARAMS))
    return {"long_edge": prepare.long_edge, "pad_multiple": prepare.pad_multiple}


def randomised_student(config: ModelConfig) -> VideoMambaDepth:
    """The student of ``config`` with random weights (seed 0) and its zero-initialised projections filled
    in (normal, std 0.02), so the temporal blocks and heads do a trained model's work, not the identity."""
    torch.manual_seed(0)
    model = build_student(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and p.abs().max() == 0:
                p.normal_(0.0, 0.02)
    return model


def default_student() -> VideoMambaDepth:
    """:func:`randomised_student` of params.yaml's ``train.model``, in eval mode."""
    config = ModelConfig.from_dict(load_params(PARAMS)["train"]["model"], where="params.yaml: train.model")
    return randomised_student(config).eval()


def add_held_out_options(parser: argparse.ArgumentParser, checkpoint: Path) -> None:
    """The options of every bench that runs a trained student on the evaluate stage's held-out videos:
    ``--checkpoint`` (default ``checkpoint``), ``--data``, ``--videos N``, ``--threads``, ``--results``."""
    parser.add_argument("--checkpoint", type=Path, default=checkpoint)
    parser.add_argument("--data", type=Path, default=Path("data"),
                        help="folder holding the pipeline's prepared, teacher and flow stores")
    parser.add_argument("--videos", type=int, default=None, help="the first N held-out videos (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", type=Path, default=RESULTS)


def check_held_out_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """One clear line (``parser.error``) for the options of :func:`add_held_out_options` that cannot work."""
    if not args.checkpoint.is_file():
        parser.error(f"{args.checkpoint}: no such model file (run `make repro` first, or give --checkpoint)")
    if args.videos is not None and args.videos < 1:
        parser.error(f"--videos: must be at least 1, got {args.videos}")


def require_stores(bench: str, paths: Iterable[Path]) -> None:
    """Exit with one line naming the first of ``paths`` that does not exist, how many more are missing, and
    what makes them."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise SystemExit(f"{bench} needs the pipeline's stores: missing {missing[0]}{more}; run `dvc repro "
                         "evaluate` (or pass --data DIR holding them)")
