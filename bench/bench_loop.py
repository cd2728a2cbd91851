"""What the watchdog's deeper look costs: the event-loop probe and the run's log tail.

* **Event-loop probe, per loop per tick**: real event loops, each running in a thread of its
  own, probed the way the watchdog does (``LoopProbes.tick``: read the last answer, observe
  the lag, send the next callback). What is measured is CPU time, both sides: the watchdog
  thread's around ``tick()`` (``time.thread_time``), divided by the number of loops, and the
  loop threads' own CPU clocks over all ticks, divided by ticks and loops. Wall time would
  count each side's wait for the GIL while the other works. Between two ticks the bench waits
  until every loop has answered (untimed). Target: < 20 us both together. Rows:

  - idle loops: the probe sees each waiting in its selector and records 0 without waking it
    (the common case between jobs);
  - busy loops: at each tick every loop is running a callback of the bench's (held on an
    event, released after the tick). The same loops and the same callbacks without any probe
    are the baseline, measured in the same rounds; the figures are the probe's CPU over it.
    *before*: the probe's callback sent with ``call_soon_threadsafe`` (a write to the loop's
    self-pipe, which its selector then returns for and reads: what the probe did up to now);
    *after*: queued behind the loop's callbacks without a wake (what it does now);
  - a loop woken from its selector by every probe (the earlier upper bound; now only for a
    callback queued just as its loop went to wait, and for loops of another kind, as uvloop's).
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
from otel_jobs.core.loop_probe import LoopProbes, idle, post
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


def _poll(done: Any) -> None:
    """Untimed: until ``done()``."""
    while not done():
        time.sleep(0.0005)


class _Loops:
    """Event loops running in threads of their own, which can be kept busy: each then runs a
    callback that waits at a gate, and when let through queues itself again, so that the loop
    never waits in its selector (as a loop that always has work) and is held at each tick."""

    def __init__(self, count: int) -> None:
        self.loops: list[tuple[asyncio.AbstractEventLoop, threading.Thread]] = []
        for i in range(count):
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name=f"bench-loop-{i}", daemon=True)
            thread.start()
            self.loops.append((loop, thread))
        _poll(lambda: all(loop.is_running() for loop, _ in self.loops))
        self.busy = False
        self.gates = [threading.Event() for _ in range(count)]
        self.at: list[threading.Event | None] = [None] * count
        # Each loop thread's CPU from leaving its gate to being back at it (its own clock).
        self.left: list[float | None] = [None] * count
        self.between = [0.0] * count

    def cpu(self) -> float:
        return sum(_thread_cpu(thread) for _, thread in self.loops)

    def _gate(self, i: int) -> None:
        left = self.left[i]
        if left is not None:
            self.between[i] += time.thread_time() - left
        gate = self.gates[i]
        self.at[i] = gate
        gate.wait()
        self.at[i] = None
        self.left[i] = time.thread_time()
        if self.busy:
            self.loops[i][0].call_soon(self._gate, i)

    def _all_at_gates(self) -> bool:
        return all(at is gate for at, gate in zip(self.at, self.gates, strict=True))

    def start_busy(self) -> None:
        self.busy = True
        self.left = [None] * len(self.loops)
        for i, (loop, _) in enumerate(self.loops):
            loop.call_soon_threadsafe(self._gate, i)
        _poll(self._all_at_gates)

    def let_through(self) -> None:
        """Each loop passes its gate once and is back at it (untimed)."""
        passed, self.gates = self.gates, [threading.Event() for _ in self.loops]
        for gate in passed:
            gate.set()
        _poll(self._all_at_gates)

    def stop_busy(self) -> None:
        self.busy = False
        passed, self.gates = self.gates, [threading.Event() for _ in self.loops]
        for gate in passed:
            gate.set()
        _poll(lambda: not any(self.at))

    def close(self) -> None:
        self.stop_busy()
        for loop, thread in self.loops:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            loop.close()


def _probe_cost(
    loops: _Loops, probes: LoopProbes | None, ticks: int, busy: bool
) -> tuple[float, float]:
    """(watchdog side, loop side): CPU seconds per loop per tick (``probes`` None: no probe)."""
    states = list(probes._probes.values()) if probes is not None else []

    def all_answered() -> bool:
        return not any(p.blocked_for(time.monotonic()) for p in states)

    if busy:
        loops.start_busy()
    try:
        if probes is not None:  # the first tick only sends
            probes.tick(time.monotonic())
            if busy:
                loops.let_through()
            _poll(all_answered)
        time.sleep(0.02)
        loops_before = loops.cpu()
        loops.between = [0.0] * len(loops.loops)
        spent = 0.0
        for _ in range(ticks):
            if probes is not None:
                start = time.thread_time()
                probes.tick(time.monotonic())
                spent += time.thread_time() - start
            if busy:
                loops.let_through()
            _poll(all_answered)
        # Busy: what each loop did between its gates (its wake-up at the gate is no part of
        # it); idle: all its CPU.
        loop_cpu = sum(loops.between) if busy else loops.cpu() - loops_before
    finally:
        if busy:
            loops.stop_busy()
    time.sleep(0.02)
    count = ticks * len(loops.loops)
    return spent / count, loop_cpu / count


#: How a probe reaches a busy loop: the way it does now, and the way it did before.
_PATHS = {"after": post, "before": lambda *_args: False}


def _probe_rounds(
    loops_count: int, ticks: int, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    """Per variant, (watchdog side, loop side) of each round; the busy variants take turns."""
    otel_jobs.instrument(prometheus=False, watchdog=False, frameworks=[], outbound=[])
    loops = _Loops(loops_count)
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        agent = agent_mod.current()
        assert agent is not None

        def probes() -> LoopProbes:
            made = LoopProbes(agent.telemetry)
            made.watch([_FakeRunOnLoop(loop, thread.ident) for loop, thread in loops.loops])  # type: ignore[misc]
            return made

        results["idle"] = [_probe_cost(loops, probes(), ticks, busy=False)]
        variants = ["none", "before", "after"]
        for r in range(rounds):
            for name in variants if r % 2 == 0 else reversed(variants):
                loop_probe.post = _PATHS.get(name, post)
                made = probes() if name != "none" else None
                results.setdefault(name, []).append(_probe_cost(loops, made, ticks, busy=True))
        loop_probe.post = _PATHS["before"]
        loop_probe.idle = lambda frame: False
        results["woken"] = [_probe_cost(loops, probes(), ticks, busy=False)]
        return results
    finally:
        loop_probe.idle = idle
        loop_probe.post = post
        loops.close()
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
    loops_count, ticks, rounds = (4, 20, 1) if quick else (10, 100, 9)
    found = _probe_rounds(loops_count, ticks, rounds)
    base_loop = statistics.median(loop for _, loop in found["none"])
    for name, what, subject in (
        ("idle", "idle loops", "not sent (waiting in its selector)"),
        ("before", "busy loops, before", "call_soon_threadsafe (self-pipe write)"),
        ("after", "busy loops, after", "queued, no wake"),
        ("woken", "loops woken from their selector", "call_soon_threadsafe, the loop asleep"),
    ):
        note = ""
        if name in ("before", "after"):
            # The probe's share: over the baseline of the same round (the rounds take turns).
            totals = sorted(
                (ours[0] + ours[1] - none[1]) * 1e6
                for ours, none in zip(found[name], found["none"], strict=True)
            )
            watchdog_side = statistics.median(ours[0] for ours in found[name])
            total_us = statistics.median(totals)
            loop_side = total_us / 1e6 - watchdog_side
            note = f"; {len(totals)} rounds: {totals[0]:.1f} to {totals[-1]:.1f} us"
        else:
            ((watchdog_side, loop_side),) = found[name]
            total_us = (watchdog_side + loop_side) * 1e6
        busy = name in ("before", "after")
        rows.append(
            row(
                f"event-loop probe, per loop per tick ({loops_count} {what})",
                subject=f"LoopProbes.tick + callback: {subject}",
                value=total_us,
                unit="us",
                baseline="the same busy loops without the probe" if busy else None,
                baseline_value=base_loop * 1e6 if busy else None,
                target=f"< {PROBE_TARGET_US:g} us",
                met=total_us < PROBE_TARGET_US,
                note=f"CPU; watchdog side {watchdog_side * 1e6:.1f} us, loop side {loop_side * 1e6:.1f} us{note}",
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
