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
identity); every recording happens on the watchdog's thread. Waking a loop (a write to its
self-pipe, its selector returning, the pipe read) is most of what a probe could cost, so the
probe wakes none that it need not, judging from where each loop thread is (one
``sys._current_frames()`` per tick):

* a loop found *idle*, waiting in its selector, is not sent anything: it would run a callback
  at once, so its lag is recorded as 0;
* a loop found *busy* (its thread runs a callback, or is held by one) gets the callback queued
  behind its current ones without a wake: it will look at its queue before it waits again;
* a callback queued just as the loop went to wait (the loop is found idle at the next tick with
  it still pending) is timed again from then and the loop woken.

A coroutine that itself blocks in a selector (``subprocess.run``) is not idle: its caller is
not the loop's. A loop that is not running (a stopped loop between two ``run_until_complete``
calls) is not blocked: its pending callback is voided, so that the time the loop was stopped is
never taken for lag. A closed loop, or one that has been garbage-collected, is forgotten; loops
are held weakly. asyncio's private internals used for this are read in
:mod:`otel_jobs.core.loop_internals` only (a loop of another kind is probed through
``call_soon_threadsafe``).

Cost: ``bench/bench_loop.py`` (the target is below 20 us per loop per tick, both threads).
"""

from __future__ import annotations

import contextvars
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .loop_internals import idle, post, thread_of, wake

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

    from .run import Run
    from .telemetry import Telemetry

__all__ = ["Blocked", "LoopProbe", "LoopProbes", "idle", "post"]

_monotonic = time.monotonic


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
        "attributes",
        "posted",
        "context",
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
        #: ``{"thread": label}``, the OpenTelemetry attributes of its lag.
        self.attributes: dict[str, str] = {}
        #: The pending callback was queued without waking the loop (it was busy).
        self.posted = False
        #: The context the callback runs in (made once: nothing of the watchdog's is copied).
        self.context = contextvars.Context()
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
            ident = thread_of(loop)
            if ident is None:
                ident = run.thread_id
            name = threads.get(ident, "unknown") if ident is not None else "unknown"
            probe = LoopProbe(loop, ident, name)
            telemetry = self._telemetry
            probe.label = telemetry.loop_threads(name)
            probe.attributes = {"thread": probe.label}
            probe._lag = telemetry.loop_lag.labels(probe.label)
            probes[id(loop)] = probe

    def tick(self, now: float) -> None:
        """Record the answers of the last tick's callbacks and schedule the next ones."""
        otel = self._telemetry.otel
        frames = sys._current_frames() if self._probes else {}
        for key, probe in list(self._probes.items()):
            loop = probe.loop_ref()
            if loop is None or loop.is_closed():
                del self._probes[key]
                continue
            frame = frames.get(probe.thread_id) if probe.thread_id is not None else None
            sent = probe.sent
            if sent is not None:
                answer = probe.answer
                if answer is None or answer[0] != probe.token:
                    if not loop.is_running():
                        probe.token += 1  # stopped, not blocked: the callback will not count
                        probe.sent = None
                    elif probe.posted and idle(frame):
                        # Queued just as the loop went to wait in its selector: from now on.
                        probe.sent = now
                        probe.posted = False
                        wake(loop)
                    # Else still waiting: the loop is blocked (blocked_for says how long).
                    continue
                lag = max(answer[1] - sent, 0.0)
                probe._lag.observe(lag)
                if otel is not None:
                    otel.loop_lag.record(lag, probe.attributes)
                probe.sent = None
            if not loop.is_running():
                continue
            if idle(frame):
                probe._lag.observe(0.0)  # waiting for I/O: it would run a callback at once
                if otel is not None:
                    otel.loop_lag.record(0.0, probe.attributes)
                continue
            probe.token += 1
            probe.sent = now
            # Busy (its thread is seen running): queued behind its callbacks, not woken.
            probe.posted = frame is not None and post(
                loop, probe._answered, probe.token, probe.context
            )
            if not probe.posted:
                try:
                    loop.call_soon_threadsafe(probe._answered, probe.token, context=probe.context)
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
