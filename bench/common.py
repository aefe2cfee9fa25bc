"""Helpers every benchmark uses: one timing loop and one way to write results."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


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
