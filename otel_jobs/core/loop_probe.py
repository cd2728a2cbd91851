"""Event-loop lag: how late each asyncio loop that runs otel-jobs runs answers the watchdog.

An asyncio worker (arq, Dramatiq's async actors, APScheduler's ``AsyncIOExecutor``, an async
``@job``) runs every job of the process on one loop: a ``time.sleep()`` or a CPU loop inside
one coroutine holds every other run on it. The watchdog finds such a loop through the runs in
flight (``run.loop``) and, once per tick, asks it one question: it schedules one callback with
``loop.call_soon_threadsafe`` and looks, at its next tick, at when the loop ran it.

* **lag** (``otel_jobs_event_loop_lag_seconds``): from the moment the callback was scheduled
  to the moment the loop ran it; observed by the watchdog's thread at the tick after.
* **blocked** (``otel_jobs_event_loop_blocked_seconds``): while a callback waits, how long it
  has waited; 0 once it ran. It is a lower bound: the loop may have stopped up to one tick
  before the callback was scheduled.

What it must never do: run anything else on the loop. No task and no timer: one callback per
loop per tick at most, which stores one clock reading (and, the first time, the loop thread's
identity); every recording happens on the watchdog's thread. A loop found *idle*, its thread
waiting in its selector called by the loop's own ``_run_once`` (one ``sys._current_frames()``
per tick), is not woken: it would run a callback at once, so its lag is recorded as 0, and
waking it would be most of the probe's cost. A coroutine that itself blocks in a selector
(``subprocess.run``) is not idle: its caller is not ``_run_once``. A loop that is not running (a
stopped loop between two ``run_until_complete`` calls) is not blocked: its pending callback is
voided, so that the time the loop was stopped is never taken for lag. A closed loop, or one
that has been garbage-collected, is forgotten; loops are held weakly.

Cost: ``bench/bench_loop.py`` (the target is below 20 us per loop per tick, both threads).
"""

from __future__ import annotations

import functools
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

    from .run import Run
    from .telemetry import Telemetry

_monotonic = time.monotonic


@functools.lru_cache(maxsize=1)
def _idle_codes() -> tuple[frozenset[CodeType], CodeType]:
    """The selectors' select() codes and asyncio's _run_once code (asyncio is loaded by then:
    there is a loop to probe)."""
    import selectors
    from asyncio import base_events

    names = ("SelectSelector", "PollSelector", "EpollSelector", "DevpollSelector", "KqueueSelector")
    selects = frozenset(
        getattr(selectors, n).select.__code__ for n in names if hasattr(selectors, n)
    )
    return selects, base_events.BaseEventLoop._run_once.__code__  # type: ignore[attr-defined]


def idle(frame: FrameType | None) -> bool:
    """Whether a loop thread's innermost frame is its loop waiting for I/O (see above)."""
    if frame is None:
        return False
    selects, run_once = _idle_codes()
    if frame.f_code not in selects:
        return False
    caller = frame.f_back
    return caller is not None and caller.f_code is run_once


class LoopProbe:
    """The probe of one event loop (see the module docstring)."""

    __slots__ = (
        "loop_ref",
        "token",
        "sent",
        "answer",
        "thread_id",
        "native_id",
        "thread_name",
        "label",
        "_lag",
        "__weakref__",
    )

    def __init__(self, loop: AbstractEventLoop, thread_id: int | None, thread_name: str) -> None:
        self.loop_ref = weakref.ref(loop)
        self.token = 0
        #: Monotonic time the pending callback was scheduled; None: none is pending.
        self.sent: float | None = None
        #: ``(token, monotonic time)`` written by the callback in the loop's thread.
        self.answer: tuple[int, float] | None = None
        self.thread_id = thread_id
        self.native_id: int | None = None
        self.thread_name = thread_name
        self.label = ""
        self._lag: Any = None

    def _answered(self, token: int) -> None:
        # In the loop's thread, between two of its callbacks: one clock read, one store.
        self.answer = (token, _monotonic())
        if self.native_id is None:
            self.thread_id = threading.get_ident()
            self.native_id = threading.get_native_id()

    def blocked_for(self, now: float) -> float:
        """Seconds the pending callback has waited (0: none is waiting, or it has run)."""
        sent = self.sent
        if sent is None:
            return 0.0
        answer = self.answer
        if answer is not None and answer[0] == self.token:
            return 0.0
        return max(now - sent, 0.0)


@dataclass
class Blocked:
    """A loop that ran nothing for longer than the threshold, and the runs on it."""

    probe: LoopProbe
    seconds: float
    runs: list[Run] = field(default_factory=list)
    #: The run whose task holds the loop (running at the look), if any.
    culprit: Run | None = None
    #: The loop_blocked_timeout in force.
    threshold: float = 0.0


class LoopProbes:
    """Every loop the watchdog probes in this process; used only by the watchdog's thread
    (and, for the gauge, read by a scrape)."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry
        self._probes: dict[int, LoopProbe] = {}  # id(loop) -> probe

    def rebind(self, telemetry: Telemetry) -> None:
        """A forked child: new instruments, and none of the parent's loops."""
        self._telemetry = telemetry
        self._probes = {}

    def probe_of(self, loop: AbstractEventLoop | None) -> LoopProbe | None:
        if loop is None:
            return None
        probe = self._probes.get(id(loop))
        return probe if probe is not None and probe.loop_ref() is loop else None

    def watch(self, runs: list[Run]) -> None:
        """Start probing the loops of these runs that are not probed yet."""
        probes = self._probes
        new: list[Run] = []
        for run in runs:
            loop = run.loop
            if loop is not None:
                probe = probes.get(id(loop))
                if probe is None or probe.loop_ref() is not loop:
                    new.append(run)
        if not new:
            return
        threads = {t.ident: t.name for t in threading.enumerate()}
        for run in new:
            loop = run.loop
            if loop is None or self.probe_of(loop) is not None:
                continue
            # The thread running the loop, which is not always the run's: Dramatiq's worker
            # thread waits while its async actor runs on the event-loop thread. asyncio's
            # loops keep it in _thread_id while they run (the probe's first answer says too).
            ident = getattr(loop, "_thread_id", None)
            if not isinstance(ident, int):
                ident = run.thread_id
            name = threads.get(ident, "unknown") if ident is not None else "unknown"
            probe = LoopProbe(loop, ident, name)
            telemetry = self._telemetry
            probe.label = telemetry.loop_threads(name)
            probe._lag = telemetry.loop_lag.labels(probe.label)
            probes[id(loop)] = probe

    def tick(self, now: float) -> None:
        """Record the answers of the last tick's callbacks and schedule the next ones."""
        telemetry = self._telemetry
        otel = telemetry.otel
        frames = sys._current_frames() if self._probes else {}
        for key, probe in list(self._probes.items()):
            loop = probe.loop_ref()
            if loop is None or loop.is_closed():
                del self._probes[key]
                continue
            sent = probe.sent
            if sent is not None:
                answer = probe.answer
                if answer is None or answer[0] != probe.token:
                    if loop.is_running():
                        continue  # still waiting: the loop is blocked (blocked_for says how long)
                    probe.token += 1  # stopped, not blocked: the callback will not count
                    probe.sent = None
                    continue
                lag = max(answer[1] - sent, 0.0)
                probe._lag.observe(lag)
                if otel is not None:
                    otel.loop_lag.record(lag, {"thread": probe.label})
                probe.sent = None
            if not loop.is_running():
                continue
            if probe.thread_id is not None and idle(frames.get(probe.thread_id)):
                probe._lag.observe(0.0)  # waiting for I/O: it would run a callback at once
                if otel is not None:
                    otel.loop_lag.record(0.0, {"thread": probe.label})
                continue
            probe.token += 1
            probe.sent = now
            try:
                loop.call_soon_threadsafe(probe._answered, probe.token)
            except RuntimeError:  # closed meanwhile
                probe.sent = None

    def blocked(self, now: float, threshold: float, runs: list[Run]) -> dict[int, Blocked]:
        """Loops that ran nothing for longer than ``threshold``, with their runs in flight.

        Keyed by ``id(loop)``. Empty (the common case) without looking at the runs.
        """
        found: dict[int, Blocked] = {}
        for key, probe in self._probes.items():
            seconds = probe.blocked_for(now)
            if seconds > threshold:
                found[key] = Blocked(probe, seconds)
        if found:
            for run in runs:
                loop = run.loop
                if loop is not None and not run.finished:
                    entry = found.get(id(loop))
                    if entry is not None and entry.probe.loop_ref() is loop:
                        entry.runs.append(run)
        return found

    def samples(self) -> list[tuple[dict[str, str], float]]:
        """The blocked gauge: ``[({"thread": name}, seconds)]``, one per loop."""
        now = _monotonic()
        by_label: dict[str, float] = {}
        for probe in list(self._probes.values()):
            seconds = probe.blocked_for(now)
            if seconds >= by_label.get(probe.label, 0.0):
                by_label[probe.label] = seconds
        return [({"thread": label}, seconds) for label, seconds in by_label.items()]
