"""Host-issue and completion time of repeated calls, shared by the profiling scripts (``profile_*.py``)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def host_and_total(
    fn: Callable[[], object], sync: Callable[[], object], calls: int, repeats: int = 1, warmup: int = 3
) -> tuple[float, float]:
    """Seconds per call of ``fn``: ``(host, total)``, each the median over ``repeats`` batches of ``calls`` calls.

    ``host`` is the time to issue a batch (work queued asynchronously returns early), ``total`` the time until
    ``sync()`` says it has finished. ``warmup`` calls (then a sync) come first.
    """
    for _ in range(warmup):
        fn()
    sync()
    host, total = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()
        sync()
        t2 = time.perf_counter()
        host.append((t1 - t0) / calls)
        total.append((t2 - t0) / calls)
    return statistics.median(host), statistics.median(total)
