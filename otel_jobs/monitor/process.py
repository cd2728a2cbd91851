"""The monitor's loop: every collector polled once per interval, each within a deadline.

Each collector has a thread of its own that runs its :meth:`~Collector.poll` when asked; the loop
asks them all at once and waits for each until the poll's deadline (``poll_timeout``). A poll
that fails or does not answer in time marks that collector's broker down
(``otel_jobs_monitor_broker_up`` 0, its queue series withdrawn: the figures are unknown, not
zero) and is logged once, when the broker goes down and when it answers again; the collector is
asked to close its sockets, and is not asked again while its previous poll still runs, so a hung
broker holds one thread, never the loop or the other brokers.

What the loop must never do: die (an unexpected error is an internal error, counted in
``otel_jobs_internal_errors_total{component="monitor.<framework>"}`` and logged once), wait past
a deadline, or poll faster than asked (a poll that overran skips the slots it missed).

    monitor = Monitor([RQCollector("redis://127.0.0.1:6379/0")], interval=15, timeout=5)
    monitor.poll()                  # one poll (the tests and the benchmark drive it this way)
    monitor.run(stop_event)         # or every 15 s until stop_event is set
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..core import errors
from .base import BrokerUnavailable, Collector, QueueReading
from .lost.detector import lost_counters

logger = logging.getLogger("otel_jobs.monitor")

#: Buckets of ``otel_jobs_monitor_poll_duration_seconds``: 1 ms to 10 s.
POLL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class _Outcome:
    """What the last poll of one collector found: readings, or why there are none."""

    up: bool
    readings: tuple[QueueReading, ...] = ()
    reason: str = ""


class _Runner:
    """The thread that runs one collector's polls, one at a time, and hands each one's duration
    to ``observe`` as it returns (a poll that overran its deadline too, when it ends)."""

    def __init__(self, collector: Collector, observe: Callable[[float], None]) -> None:
        self.collector = collector
        self.observe = observe
        self.result: list[QueueReading] | BaseException = []
        self._asked = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._stopping = False
        self.thread = threading.Thread(
            target=self._loop, name=f"otel-jobs-monitor-{collector.framework}", daemon=True
        )
        self.thread.start()

    def ask(self) -> bool:
        """Start a poll; False when the previous one has not returned yet."""
        if not self._idle.is_set():
            return False
        self._idle.clear()
        self._asked.set()
        return True

    def wait(self, deadline: float) -> bool:
        return self._idle.wait(max(0.0, deadline - time.monotonic()))

    def stop(self) -> None:
        self._stopping = True
        self._asked.set()

    def _loop(self) -> None:
        while True:
            self._asked.wait()
            self._asked.clear()
            if self._stopping:
                return
            started = time.perf_counter()
            try:
                self.result = self.collector.poll()
            except BaseException as exc:  # handed to the loop, which decides what it means
                self.result = exc
            self.observe(time.perf_counter() - started)
            self._idle.set()


class Monitor:
    """Collectors, their last outcomes, and the registry the ``/metrics`` endpoint serves."""

    def __init__(
        self,
        collectors: Sequence[Collector],
        *,
        interval: float = 15.0,
        timeout: float = 5.0,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.collectors = list(collectors)
        self.interval = interval
        self.timeout = timeout
        self.registry = registry if registry is not None else CollectorRegistry()
        self._outcomes: dict[int, _Outcome] = {}
        self._lock = threading.Lock()
        self.registry.register(_Exposition(self))
        self.poll_duration = Histogram(
            "otel_jobs_monitor_poll_duration_seconds",
            "Time one poll of one broker took.",
            ["framework"],
            buckets=POLL_BUCKETS,
            registry=self.registry,
        )
        ProcessCollector(registry=self.registry)
        # The lost-run counters are part of every monitor's /metrics (no series before the first
        # lost run), whichever frameworks it watches: the rules read them (monitor/lost).
        lost_counters(self.registry)
        for collector in self.collectors:
            collector.register(self.registry)
        self._runners = [
            _Runner(c, self.poll_duration.labels(c.framework).observe) for c in self.collectors
        ]

    # --- polling ------------------------------------------------------------------------

    def poll(self) -> None:
        """Poll every collector once, returning by the deadline whatever they do."""
        deadline = time.monotonic() + self.timeout
        asked = [(runner, runner.ask()) for runner in self._runners]
        for index, (runner, started) in enumerate(asked):
            collector = runner.collector
            try:
                if not started:
                    self._set(index, _Outcome(False, reason="its previous poll has not returned"))
                elif not runner.wait(deadline):
                    self._set(index, _Outcome(False, reason=f"no answer within {self.timeout:g}s"))
                    collector.abort()
                else:
                    self._finished(index, runner)
            except Exception as exc:  # never let one collector stop the loop
                errors.record(f"monitor.{collector.framework}", exc)

    def _finished(self, index: int, runner: _Runner) -> None:
        collector, result = runner.collector, runner.result
        if isinstance(result, BrokerUnavailable):
            self._set(index, _Outcome(False, reason=str(result)))
        elif isinstance(result, BaseException):
            errors.record(f"monitor.{collector.framework}", result)
            self._set(index, _Outcome(False, reason=f"internal error {type(result).__name__}"))
        else:
            self._set(index, _Outcome(True, tuple(result)))

    def _set(self, index: int, outcome: _Outcome) -> None:
        with self._lock:
            before = self._outcomes.get(index)
            self._outcomes[index] = outcome
        collector = self.collectors[index]
        if not outcome.up and (before is None or before.up):
            logger.warning(
                "otel-jobs monitor: cannot read %s (%s); otel_jobs_monitor_broker_up"
                '{framework="%s", broker="%s"} is 0 and its queues have no series; polling on',
                collector.label,
                outcome.reason,
                collector.framework,
                collector.broker,
            )
        elif outcome.up and before is not None and not before.up:
            logger.warning("otel-jobs monitor: %s answers again", collector.label)

    def outcomes(self) -> list[tuple[Collector, _Outcome]]:
        with self._lock:
            return [
                (c, self._outcomes[i]) for i, c in enumerate(self.collectors) if i in self._outcomes
            ]

    # --- running ------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Poll every ``interval`` seconds until ``stop`` is set."""
        next_at = time.monotonic()
        while not stop.is_set():
            try:
                self.poll()
            except Exception as exc:
                errors.record("monitor", exc)
            next_at += self.interval
            now = time.monotonic()
            if next_at < now:  # this poll overran: skip the slots it missed
                next_at = now + self.interval - (now - next_at) % self.interval
            stop.wait(next_at - now)

    def close(self) -> None:
        for runner in self._runners:
            runner.stop()
        for collector in self.collectors:
            try:
                collector.close()
            except Exception as exc:
                errors.record(f"monitor.{collector.framework}", exc)


class _Exposition:
    """Renders the last outcomes at each scrape; ages are computed then, so they grow smoothly."""

    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor

    def describe(self) -> list[Metric]:
        return list(self._families({}, []))

    def collect(self) -> Iterator[Metric]:
        yield from self._families(errors.counts(), self.monitor.outcomes())

    def _families(
        self, internal: dict[str, int], outcomes: list[tuple[Collector, _Outcome]]
    ) -> Iterator[Metric]:
        now = time.time()
        depth = GaugeMetricFamily(
            "otel_jobs_queue_depth",
            "Jobs in a queue by state, as the broker holds them.",
            labels=["framework", "queue", "state"],
        )
        age = GaugeMetricFamily(
            "otel_jobs_queue_oldest_waiting_age_seconds",
            "Age of the oldest job waiting in a queue (from its publish or due time).",
            labels=["framework", "queue"],
        )
        up = GaugeMetricFamily(
            "otel_jobs_monitor_broker_up",
            "1 when the last poll of the broker succeeded.",
            labels=["framework", "broker"],
        )
        brokers: dict[tuple[str, str], bool] = {}
        queues: set[tuple[str, str]] = set()
        for collector, outcome in outcomes:
            key = (collector.framework, collector.broker)
            # Several collectors on one broker (two Huey instances): up only if all answered.
            brokers[key] = brokers.get(key, True) and outcome.up
            for reading in outcome.readings:
                if (collector.framework, reading.queue) in queues:
                    continue  # the same queue read twice: one series
                queues.add((collector.framework, reading.queue))
                for state, count in reading.depths.items():
                    depth.add_metric([collector.framework, reading.queue, state], float(count))
                if reading.oldest_due is not None and reading.depths.get("waiting"):
                    age.add_metric(
                        [collector.framework, reading.queue], max(0.0, now - reading.oldest_due)
                    )
        for (framework, broker), answered in brokers.items():
            up.add_metric([framework, broker], 1.0 if answered else 0.0)
        errors_family = CounterMetricFamily(
            "otel_jobs_internal_errors",
            "Errors inside otel-jobs, caught so that the monitor goes on.",
            labels=["component"],
        )
        for component, count in sorted(internal.items()):
            errors_family.add_metric([component], float(count))
        yield from (depth, age, up, errors_family)
