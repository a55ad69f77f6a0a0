"""The benchmarks' one timing rule: a warm-up run, then the median of ``repeats`` runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(
    fn: Callable[[], object], repeats: int, sync: Callable[[], object] = lambda: None
) -> float:
    """Median seconds of ``fn`` after one warm-up call; ``sync`` waits for queued device work."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
