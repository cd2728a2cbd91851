"""What the watchdog's deeper look costs: the event-loop probe and the run's log tail.

* **Event-loop probe, per loop per tick**: real event loops, each running in a thread of its
  own, probed the way the watchdog does (``LoopProbes.tick``: read the last answer, observe
  the lag, schedule the next callback with ``call_soon_threadsafe``). What is measured is CPU
  time, both sides: the watchdog thread's around ``tick()`` (``time.thread_time``), divided by
  the number of loops, and the loop threads' own CPU clocks over all ticks, divided by ticks and
  loops: an idle loop woken by the callback (its selector returns, it reads its wake-up pipe,
  runs the callback, waits again). Wall time would count each side's wait for the GIL while
  the other works. Between two ticks the bench waits until every loop has answered (untimed).
  Target: < 20 us both together. Two rows: idle loops (the probe sees each waiting in its
  selector and records 0 without waking it: the common case between jobs) and the same loops
  woken by every probe (as a loop busy with work is: the upper bound).
* **Log record inside a run**: the record factory otel-jobs installs (it keeps the record in
  the run's tail) against the factory it wraps, in the same rounds; the wrapped factory returns
  a record made once, so that only otel-jobs' share is measured. Target: < 1 us more per
  record. The same outside any run (one context variable read).
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time
from typing import Any

import otel_jobs
from otel_jobs.core import agent as agent_mod
from otel_jobs.core import logtail, loop_probe
from otel_jobs.core.loop_probe import LoopProbes, idle
from otel_jobs.core.run import Run

from ._timing import interleaved, ratio, row

PROBE_TARGET_US = 20.0
RECORD_TARGET_NS = 1000.0


class _FakeRunOnLoop:
    """What LoopProbes.watch reads of a run: its loop and thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, thread_id: int | None) -> None:
        self.loop = loop
        self.thread_id = thread_id
        self.finished = False


def _thread_cpu(thread: threading.Thread) -> float:
    """CPU seconds a thread of this process has used (Linux: its own CPU clock)."""
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


def _probe_cost(loops_count: int, ticks: int, wake: bool) -> tuple[float, float]:
    """(watchdog side, loop side): CPU seconds per loop per tick.

    ``wake``: every tick wakes every loop with its callback, as for loops that are busy (the
    probe of an idle loop, waiting in its selector, records 0 without waking it).
    """
    otel_jobs.instrument(prometheus=False, watchdog=False, frameworks=[], outbound=[])
    loops: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []
    try:
        agent = agent_mod.current()
        assert agent is not None
        for i in range(loops_count):
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name=f"bench-loop-{i}", daemon=True)
            thread.start()
            loops.append((loop, thread))
        while not all(loop.is_running() for loop, _ in loops):
            time.sleep(0.001)
        probes = LoopProbes(agent.telemetry)
        probes.watch([_FakeRunOnLoop(loop, thread.ident) for loop, thread in loops])  # type: ignore[misc]
        states = list(probes._probes.values())

        def all_answered() -> None:
            # Untimed: every loop answers before the next tick, as between two watchdog ticks.
            while any(p.blocked_for(time.monotonic()) for p in states):
                time.sleep(0.0005)

        if wake:
            loop_probe.idle = lambda frame: False

        probes.tick(time.monotonic())  # the first tick only sends
        all_answered()
        time.sleep(0.05)
        loops_before = sum(_thread_cpu(thread) for _, thread in loops)
        durations = []
        for _ in range(ticks):
            start = time.thread_time()
            probes.tick(time.monotonic())
            durations.append((time.thread_time() - start) / loops_count)
            all_answered()
        time.sleep(0.05)
        loop_side = (sum(_thread_cpu(thread) for _, thread in loops) - loops_before) / (
            ticks * loops_count
        )
        return statistics.mean(durations), loop_side
    finally:
        loop_probe.idle = idle
        for loop, thread in loops:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()
        otel_jobs.uninstrument()


def _record_cost(reps: int, number: int) -> tuple[dict[str, Any], float, float]:
    """otel-jobs' share of a record: the wrapping factory around a factory that returns a
    record made once, so that the record's own construction (several microseconds on a
    loaded machine, and noisy) is no part of either side."""
    otel_jobs.instrument(prometheus=False, watchdog=True, frameworks=[], outbound=[])
    saved = logtail._previous
    try:
        agent = agent_mod.current()
        assert agent is not None
        logtail.install()  # as the watchdog does when it starts (idempotent)
        assert logging.getLogRecordFactory() is logtail._keeping_factory
        args = ("bench", logging.INFO, __file__, 1, "fetching page %d of %d", (7, 20), None)
        record = saved(*args)

        def made_once(*_args: Any, **_kwargs: Any) -> logging.LogRecord:
            return record

        logtail._previous = made_once
        factory = logtail._keeping_factory

        def plain() -> object:
            return made_once(*args)

        def ours() -> object:
            return factory(*args)

        outside = interleaved({"plain": plain, "ours": ours}, reps=reps, number=number)
        run: Run = agent.start_run("bench.logs")
        run.activate()
        try:
            inside = interleaved({"plain": plain, "ours": ours}, reps=reps, number=number)
        finally:
            run.deactivate()
            run.finish("success")
        extra_in = inside["ours"]["median"] - inside["plain"]["median"]
        extra_out = outside["ours"]["median"] - outside["plain"]["median"]
        return inside, extra_in, extra_out
    finally:
        logtail._previous = saved
        otel_jobs.uninstrument()
        logtail.uninstall()


def run(quick: bool = False) -> list[dict[str, Any]]:
    rows = []
    loops_count, ticks = (4, 20) if quick else (10, 200)
    for wake, what in ((False, "idle loops"), (True, "each loop woken")):
        watchdog_side, loop_side = _probe_cost(loops_count, ticks, wake)
        total_us = (watchdog_side + loop_side) * 1e6
        rows.append(
            row(
                f"event-loop probe, per loop per tick ({loops_count} {what})",
                subject="LoopProbes.tick + the loop's callback",
                value=total_us,
                unit="us",
                target=f"< {PROBE_TARGET_US:g} us",
                met=total_us < PROBE_TARGET_US,
                note=f"CPU; watchdog side {watchdog_side * 1e6:.1f} us, loop side {loop_side * 1e6:.1f} us",
            )  # fmt: skip
        )
    reps, number = (3, 2000) if quick else (21, 50_000)
    inside, extra_in, extra_out = _record_cost(reps, number)
    rows.append(
        row(
            "log record inside a run (kept for the verdict)",
            subject="record factory of otel-jobs",
            value=max(extra_in, 1e-12) * 1e9,
            unit="ns extra/record",
            baseline="the factory it wraps",
            baseline_value=inside["plain"]["median"] * 1e9,
            ratio=ratio(inside, "ours", "plain"),
            target=f"< {RECORD_TARGET_NS:g} ns",
            met=extra_in < RECORD_TARGET_NS / 1e9,
            note=f"outside any run: {extra_out * 1e9:.0f} ns extra",
        )  # fmt: skip
    )
    return rows
