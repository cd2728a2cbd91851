"""RQ's work horse emits its run's span; its worker counts the run.

RQ's ``Worker`` forks a work horse per job, which leaves by ``os._exit`` once the job is done. A
horse that kept instruments of its own paid, on every job, for building them, for a metrics
snapshot at the run's start and at its end (so that the worker's ``/metrics`` saw them), and
for two threads (the watchdog's, a bounded flush): several milliseconds on a short job. Instead
(:mod:`otel_jobs.integrations.rq`):

* the worker counts the run once the horse has exited, from the :class:`Record` the horse left
  in a page of memory it shares with it (made before the first fork, one per worker process):
  its start and queue wait, unless the horse counted them itself (below), and its outcome and
  duration (:meth:`~otel_jobs.core.agent.Agent.count_start`, ``count_finish``). A horse that
  left no end died mid-job: the worker records it as lost, as before, and a start it did not
  count goes with the dead children's counts (:func:`count_lost_start`);
* the horse is a one-run child (:meth:`~otel_jobs.core.agent.Agent.forking_one_run`): no
  watchdog thread at fork, instruments only if something is recorded there (a stall verdict,
  an outbound call without a timeout). Its run records into a :class:`RemoteSeries`, which
  writes the record instead of counting;
* the horse starts one thread as its run starts, :class:`Helper` (without waiting for it to
  run): it ticks the watchdog every interval, so a long run still gets its stall verdicts and
  its in-flight gauges (the snapshot each tick writes, the run's start counted in it at the
  first tick, which the record then says), and exports the spans as the run ends, which the
  horse waits for at most :data:`FLUSH_TIMEOUT`.

Never: count a run's start or end in both processes, or write a snapshot for a run that ended
before a tick.
"""

from __future__ import annotations

import _thread
import math
import mmap
import struct
import threading
from typing import TYPE_CHECKING

from ..core import errors, providers
from ..core.run import OUTCOMES
from ..core.streaks import State

if TYPE_CHECKING:
    from ..core.agent import Agent

#: How long a horse waits for its spans to be exported before it exits (seconds).
FLUSH_TIMEOUT = 2.0

# Horse number, outcome (index in OUTCOMES, -1: none), seconds, start counted by the horse.
_LAYOUT = struct.Struct("<Iid?")
_NONE = -1


class Record:
    """How its horse's run ended, in a page of memory the worker shares with its horses.

    The worker makes it before its first fork (anonymous shared memory: every horse it forks
    maps the same page), and calls :meth:`next_horse` before each fork; the horse writes
    :meth:`start_counted` if it counts its run's start itself and :meth:`finished` as its run
    ends; the worker reads it once the horse has exited. The horse number tells this horse's
    record from an earlier one's.
    """

    def __init__(self) -> None:
        self._page = mmap.mmap(-1, mmap.PAGESIZE)
        self.horse = 0

    def next_horse(self) -> None:
        """In the worker, before it forks the next horse."""
        self.horse += 1
        _LAYOUT.pack_into(self._page, 0, self.horse, _NONE, 0.0, False)

    def start_counted(self) -> None:
        """In the horse: it counted its run's start itself (in its snapshot)."""
        _LAYOUT.pack_into(self._page, 0, self.horse, _NONE, 0.0, True)

    def finished(self, outcome: str, seconds: float) -> None:
        """In the horse, as its run ends."""
        counted = self.read_start_counted()
        _LAYOUT.pack_into(self._page, 0, self.horse, OUTCOMES.index(outcome), seconds, counted)

    def read_start_counted(self) -> bool:
        """Whether the horse counted its run's start itself."""
        horse, _outcome, _seconds, counted = _LAYOUT.unpack_from(self._page, 0)
        return horse == self.horse and bool(counted)

    def read(self) -> tuple[str, float] | None:
        """In the worker, the horse gone: ``(outcome, seconds)``, or None if it left none."""
        horse, outcome, seconds, _counted = _LAYOUT.unpack_from(self._page, 0)
        if horse != self.horse or not 0 <= outcome < len(OUTCOMES):
            return None
        return OUTCOMES[outcome], seconds


class RemoteSeries:
    """The series a horse's run records into: its job name, queue and thresholds, read by the
    horse's watchdog and in-flight gauges like a :class:`~otel_jobs.core.telemetry.Series`, with
    the counting left to the worker (the start and the queue wait were counted as it forked the
    horse; the end goes into the :class:`Record`)."""

    __slots__ = ("job_name", "queue", "attrs", "max_duration", "heartbeat_timeout",
                 "expected_every", "stalled_once", "failures", "last_success", "_record",
                 "enqueued_at", "started_at")  # fmt: skip

    def __init__(
        self,
        job_name: str,
        queue: str,
        record: Record,
        enqueued_at: float | None = None,
        started_at: float = 0.0,
    ) -> None:
        self.job_name = job_name
        self.queue = queue
        self.attrs = {"job_name": job_name, "queue": queue}
        self.max_duration = math.inf
        self.heartbeat_timeout = math.inf
        self.expected_every = math.inf
        self.stalled_once = False
        self.failures = 0
        self.last_success: float | None = None
        self._record = record
        self.enqueued_at = enqueued_at
        self.started_at = started_at

    def record_start(self) -> None:
        pass  # counted by the worker once the horse has exited, or by the helper's first tick

    def record_queue_wait(self, seconds: float) -> None:
        pass  # the same

    def count_start_here(self, agent: Agent) -> None:
        """In the horse, at the helper's first tick (its first snapshot): the run's start and
        queue wait counted in the horse's own instruments, and the record says so."""
        series = agent.telemetry.series(self.job_name, self.queue)
        series.max_duration, series.heartbeat_timeout = self.max_duration, self.heartbeat_timeout
        series.record_start()
        if self.enqueued_at is not None:  # a bad wait is left out by record_queue_wait
            series.record_queue_wait(self.started_at - self.enqueued_at)
        self._record.start_counted()

    def record_finish(self, outcome: str, seconds: float) -> None:
        self._record.finished(outcome, seconds)

    def state(self) -> State:
        """No last success or failure streak of its own: the worker keeps them."""
        return State(None, 0, (), self.expected_every)


class Helper:
    """The horse's one thread (see the module docstring), started without waiting for it."""

    def __init__(self, agent: Agent, series: RemoteSeries) -> None:
        self._agent = agent
        self._series = series
        self._ended = threading.Event()
        self._flushed = threading.Event()
        _thread.start_new_thread(self._loop, ())

    def _loop(self) -> None:
        agent = self._agent
        interval = agent.settings.watchdog_interval if agent.settings.watchdog else None
        ended = self._ended
        try:
            if not ended.wait(interval):
                self._series.count_start_here(agent)  # the first snapshot shows the start
                agent.watchdog.tick()  # guards itself: counts and logs what goes wrong
                while not ended.wait(interval):
                    agent.watchdog.tick()
            # Spans, and the metrics of a horse that recorded some (OTLP): exported now or never.
            spans_only = not agent.telemetry_built()
            providers.flush(int(FLUSH_TIMEOUT * 1000), spans_only=spans_only, inline=True)
        except Exception as exc:
            errors.record("integration.rq", exc)
        finally:
            self._flushed.set()

    def run_ended(self) -> None:
        """In the horse's main thread, its run ended: the spans exported, or the timeout passed
        (no wait when there is nothing to export: no span processor, no metrics pipeline)."""
        self._ended.set()
        if providers.has_exports(spans_only=not self._agent.telemetry_built()):
            self._flushed.wait(FLUSH_TIMEOUT)


def count_lost_start(
    agent: Agent, name: str, queue: str, enqueued_at: float | None, started_at: float
) -> None:
    """In the worker: the start of a horse's run the horse did not count (killed before its
    first tick), kept with the dead children's counts, where the horse's snapshot would have
    left it (the worker's own instruments count the lost run's end only)."""
    from prometheus_client import CollectorRegistry

    from ..core.telemetry import Telemetry

    scratch = Telemetry(agent.settings, lambda: [], None)
    series = scratch.series(name, queue)
    series.record_start()
    if enqueued_at is not None:
        series.record_queue_wait(started_at - enqueued_at)
    started = CollectorRegistry(auto_describe=False)
    started.register(scratch.started)
    started.register(scratch.queue_wait)
    agent.share.fold(started)


def run_ended(agent: Agent, helper: Helper | None) -> None:
    """The horse's run ended and the horse exits next: its snapshot, if it recorded anything
    (a stall, an outbound call without a timeout), then its spans exported (bounded)."""
    if agent.telemetry_built():
        agent.write_snapshot()
    if helper is not None:
        helper.run_ended()
    else:
        providers.flush(int(FLUSH_TIMEOUT * 1000), spans_only=True)
