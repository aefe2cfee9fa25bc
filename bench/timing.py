"""The one timing helper of the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


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
