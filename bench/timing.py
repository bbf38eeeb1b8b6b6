"""The one way the benchmarks time things: the median of repeated runs (the machine is shared and noisy)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def paired_medians(first: Callable[[], object], second: Callable[[], object], repeat: int) -> tuple[float, float, float]:
    """Median seconds of each, and the median of first/second over pairs timed back to back, alternating which
    goes first: on a shared machine the load drifts, and the two halves of a pair see nearly the same load."""
    pairs = paired_runs(first, second, repeat)
    return (statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs),
            statistics.median(a / b for a, b in pairs))


def paired_runs(first: Callable[[], object], second: Callable[[], object], repeat: int) -> list[tuple[float, float]]:
    """Seconds of each, in ``repeat`` pairs timed back to back, alternating which goes first."""
    pairs = []
    for i in range(repeat):
        order = (first, second) if i % 2 == 0 else (second, first)
        timed = {fn: median_seconds(fn, 1) for fn in order}
        pairs.append((timed[first], timed[second]))
    return pairs


def paired_for(first: Callable[[], object], second: Callable[[], object], seconds: float,
               least: int = 5, most: int = 10_000) -> list[tuple[float, float]]:
    """Seconds of each in pairs timed back to back, alternating which goes first, until the pairs have taken
    ``seconds`` and there are at least ``least`` of them: a short query gets many pairs, so one unlucky turn of
    the scheduler moves its median of ratios little; a long one at least ``least``."""
    pairs: list[tuple[float, float]] = []
    spent = 0.0
    while len(pairs) < most and (spent < seconds or len(pairs) < least):
        pairs += paired_runs(first, second, 2)  # both orders, so neither side always goes first
        spent += sum(a + b for a, b in pairs[-2:])
    return pairs
