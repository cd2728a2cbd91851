"""Timing helpers shared by the benchmarks: interleaved repetitions, medians, result rows."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from typing import Any


def interleaved(
    contenders: dict[str, Callable[[], object]], *, reps: int, number: int, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Time each contender ``number`` calls at a time, ``reps`` rounds, taking turns.

    Every round runs each contender once (in an order that alternates between rounds, so that
    none always runs right after another), in the same process. Returns, per contender, the
    median seconds per call and, per pair, nothing: ratios are taken per round by :func:`ratio`
    so that a slow moment of the machine affects both sides of a round alike. Each contender's
    ``cpu`` rounds are the calling thread's CPU time per call (``time.thread_time``): what the
    calls cost the thread that makes them, without the time it waited for the GIL while other
    threads of the process (span exporters) ran; ``ratio(..., key="cpu")`` compares those.
    """
    names = list(contenders)
    per_round: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(warmup):
        for fn in contenders.values():
            for _ in range(max(1, number // 10)):
                fn()
    for r in range(reps):
        order = names if r % 2 == 0 else list(reversed(names))
        for name in order:
            fn = contenders[name]
            gc.collect()
            start, start_cpu = time.perf_counter(), time.thread_time()
            for _ in range(number):
                fn()
            cpu[name].append((time.thread_time() - start_cpu) / number)
            per_round[name].append((time.perf_counter() - start) / number)
    return {
        name: {"median": statistics.median(v), "rounds": v, "cpu": cpu[name]}  # type: ignore[dict-item]
        for name, v in per_round.items()
    }


def ratio(results: dict[str, Any], subject: str, baseline: str, key: str = "rounds") -> float:
    """Median over rounds of subject time / baseline time in the same round (``key="cpu"``:
    of the calling thread's CPU time)."""
    pairs = zip(results[subject][key], results[baseline][key], strict=True)
    return statistics.median(s / b for s, b in pairs)


def row(
    benchmark: str,
    *,
    subject: str,
    value: float,
    unit: str,
    baseline: str | None = None,
    baseline_value: float | None = None,
    ratio: float | None = None,
    target: str = "",
    met: bool | None = None,
    note: str = "",
) -> dict[str, Any]:
    """One line of the results table (every benchmark module returns a list of these)."""
    return {
        "benchmark": benchmark,
        "subject": subject,
        "value": value,
        "unit": unit,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ratio": ratio,
        "target": target,
        "met": met,
        "note": note,
    }


def us(seconds: float) -> float:
    return seconds * 1e6
