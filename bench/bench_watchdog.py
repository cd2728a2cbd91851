"""A watchdog tick with many runs in flight, and the memory each run in flight holds.

The runs are created the way adapters create them (``agent.start_run``, a recording SDK span
each) and left in flight, healthy; then ``Watchdog.tick()`` is timed (median of several
ticks). The memory per run is the growth of ``tracemalloc``'s traced memory while the runs
are started, divided by their number: the run, its span and its entry in the in-flight table
(the job names and ids, which the caller holds anyway, and the list keeping the runs are made
before measuring). The same measure with a no-op tracer gives otel-jobs' own share; the
difference is the SDK span's.
"""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from typing import Any

from opentelemetry import trace

import otel_jobs
from otel_jobs.core import agent as agent_mod

from ._timing import row
from .bench_core import tracer_provider

# runs in flight: tick target in seconds
TARGETS = {10_000: 0.005, 100_000: 0.050}
MEMORY_TARGET = 2048  # bytes per run in flight
OWN_MEMORY_TARGET = 400  # bytes per run in flight, otel-jobs' own share (without the SDK span)
JOB_NAMES = 100


def _measure(count: int, ticks: int, spans: bool = True) -> tuple[list[float], float]:
    provider: Any = tracer_provider() if spans else trace.NoOpTracerProvider()
    otel_jobs.instrument(
        tracer_provider=provider, prometheus=False, watchdog=False, frameworks=[], outbound=[]
    )
    try:
        agent = agent_mod.current()
        assert agent is not None
        for i in range(JOB_NAMES):  # series exist before measuring: they are per job, not per run
            agent.start_run(f"bench.job{i}", queue="bench").finish("success")
        names = [f"bench.job{i % JOB_NAMES}" for i in range(count)]
        ids = [str(i) for i in range(count)]
        runs: list[Any] = [None] * count
        start_run = agent.start_run
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            runs[i] = start_run(names[i], queue="bench", job_id=ids[i])
        gc.collect()
        per_run = (tracemalloc.get_traced_memory()[0] - before) / count
        tracemalloc.stop()
        watchdog = agent.watchdog
        watchdog.tick()  # warm
        durations = []
        for _ in range(ticks):
            start = time.perf_counter()
            watchdog.tick()
            durations.append(time.perf_counter() - start)
        assert len(agent.runs()) == count
        for run in runs:
            run.finish("success")
    finally:
        otel_jobs.uninstrument()
        if spans:
            provider.shutdown()
    return durations, per_run


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows = []
    counts = {200: 0.005, 2000: 0.050} if quick else TARGETS
    for count, target in counts.items():
        durations, per_run = _measure(count, 3 if quick else 15)
        tick = statistics.median(durations)
        rows.append(
            row(
                f"watchdog tick, {count:,} runs in flight",
                subject="Watchdog.tick()",
                value=tick * 1e3,
                unit="ms/tick",
                target="" if quick else f"< {target * 1e3:g} ms",
                met=None if quick else tick < target,
                note=f"{tick / count * 1e9:.0f} ns per run",
            )  # fmt: skip
        )
        rows.append(
            row(
                f"memory per run in flight ({count:,} runs)",
                subject="run + span + table entry",
                value=per_run,
                unit="bytes/run",
                target=f"< {MEMORY_TARGET} B",
                met=per_run < MEMORY_TARGET,
                note="tracemalloc",
            )  # fmt: skip
        )
    # The same, with spans off (a no-op tracer): what otel-jobs itself holds per run.
    count = 2000 if quick else 10_000
    _, own = _measure(count, 1, spans=False)
    _, total = _measure(count, 1)
    rows.append(
        row(
            f"memory per run in flight, otel-jobs' own share ({count:,} runs)",
            subject="run + table entry (no-op tracer)",
            value=own,
            unit="bytes/run",
            target=f"<= {OWN_MEMORY_TARGET} B",
            met=own <= OWN_MEMORY_TARGET,
            note=f"the SDK span's share: {total - own:,.0f} bytes (with it: {total:,.0f})",
        )  # fmt: skip
    )
    return rows
