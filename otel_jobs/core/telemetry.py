"""The instruments otel-jobs records into, on Prometheus and on OpenTelemetry.

One :class:`Telemetry` per process holds:

* prometheus-client counters and histograms in a private ``CollectorRegistry``, recorded
  per run through :class:`Series` objects that cache their label children (built once per
  ``(job_name, queue)``, so a run only increments);
* the same measurements as OpenTelemetry instruments (:mod:`otel_jobs.core.otel_instruments`),
  recorded only when a metrics pipeline exists;
* a collector that derives the in-flight gauges (runs in progress, oldest run, stalest
  heartbeat, thresholds in force, stalled verdicts, watchdog tick) from the in-flight table
  (:meth:`Telemetry.inflight`) when they are collected, never on the hot path
  (:mod:`otel_jobs.core.inflight`).

The label values ``job_name``, ``queue``, ``host`` and ``call_site`` are capped (see
:class:`LabelCap`): past the cap a new value becomes ``__overflow__`` and is counted in
``otel_jobs_label_overflow_total{label}``. A value is first made valid UTF-8 and cut to 200
characters (:mod:`otel_jobs.core.labels`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from . import errors, schedules
from ._prometheus_internals import counter_inc, histogram_observe
from .config import OVERFLOW_VALUE, Settings
from .inflight import InflightCollector
from .labels import clean as clean_label
from .otel_instruments import OtelInstruments
from .run import wall_time_of
from .streaks import KEEP, STREAK_OUTCOMES, State

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter, Observation

    from .run import Run

#: Default buckets of the run duration histogram (``duration_buckets``): 10 ms to 8 hours in
#: eight buckets, which keeps a job within the series budget (docs: performance,
#: ``bench/bench_series.py``). 60 s (the rules' "far above usual" floor) and 3600 s (the default
#: max duration) are boundaries: "p95 above it" then reads that bucket exactly.
DURATION_BUCKETS: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 28800.0)
#: Default buckets of the queue wait histogram (``queue_wait_buckets``). 300 s, the rules' default
#: "p95 queue wait is high", is a boundary, with one bucket above it.
QUEUE_WAIT_BUCKETS: tuple[float, ...] = (1.0, 30.0, 300.0, 1800.0)
#: Outcomes whose counter exists at 0 from a job's first run: the rules' increase() and rate()
#: see their first run (failure ratio, timeouts). Retries and cancellations get their series at
#: their first run, which keeps an all-success job within the series budget.
ZERO_OUTCOMES = ("success", "failure", "timeout")

STALL_STATES = ("blocked", "spinning", "unknown")
# Stall counters at 0 from a job's first run. The third reason, ``loop_blocked`` (an asyncio
# loop held by synchronous work), gets its series at its first verdict: only async jobs can
# have it, and a zero series for every job would cost each one a series.
STALL_REASONS = ("no_heartbeat", "max_duration")

#: Event-loop lag buckets: from 1 ms (a loop that keeps up) to a minute (a loop held by
#: synchronous work).
LOOP_LAG_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
#: Distinct ``thread`` label values (event loops' threads) kept before overflow.
MAX_LOOP_THREADS = 32


class LabelCap:
    """Admit at most ``limit`` distinct values of one label; the rest become ``__overflow__``."""

    def __init__(self, label: str, limit: int, on_overflow: Callable[[str], None]) -> None:
        self.label = label
        self.limit = limit
        self._seen: set[str] = set()
        self._on_overflow = on_overflow
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        # Once per new value (or per run of a value that needs cleaning, which is never cached):
        # every label value is valid UTF-8 and at most 200 characters (core.labels).
        value = clean_label(value)
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) < self.limit:
                self._seen.add(value)
                return value
        self._on_overflow(self.label)
        return OVERFLOW_VALUE


class Series:
    """The instruments of one ``(job_name, queue)``, with their label children built once."""

    __slots__ = (
        "job_name",
        "queue",
        "started",
        "_start_inc",
        "_by_outcome",
        "_telemetry",
        "attrs",
        "max_duration",
        "heartbeat_timeout",
        "queue_wait",
        "expected_every",
        "last_success",
        "failures",
        "_failure_times",
        "stalled_once",
    )

    def __init__(self, telemetry: Telemetry, job_name: str, queue: str) -> None:
        self.job_name = job_name
        self.queue = queue
        self._telemetry = telemetry
        self.started = telemetry.started.labels(job_name, queue)
        self._start_inc = counter_inc(self.started)
        self.attrs = {"job_name": job_name, "queue": queue}
        # Per outcome, what a finished run records: (counter inc, duration observe, OTel attrs).
        # The counters of ZERO_OUTCOMES exist at 0 from the first run, for increase() and
        # rate(); histogram children other than the success duration are built at their first
        # observation, as a histogram with none would only add zero samples to every scrape,
        # per job and outcome (bench/bench_scrape.py).
        self._by_outcome: dict[str, tuple[Callable[[float], None], Any, dict[str, str]]] = {}
        for outcome in ZERO_OUTCOMES:
            telemetry.finished.labels(job_name, queue, outcome)
        self._recorders("success")
        self.queue_wait: Any = None
        # Stall counters exist at 0 from the first run, so increase() sees a job's first stall.
        for reason in STALL_REASONS:
            telemetry.stalls.labels(job_name, queue, reason)
        self.max_duration = math.inf
        self.heartbeat_timeout = math.inf
        # How often the job must succeed (+Inf: not said), the last success (Unix time) and
        # the failures since it in this process (core/streaks.py merges them across forks).
        self.expected_every = math.inf
        self.last_success: float | None = None
        self.failures = 0
        self._failure_times: list[float] = []
        # The runs_stalled gauges (one per state) exist from the job's first stall verdict
        # on, not before: zero-valued series per state of every job cost 3 series each.
        self.stalled_once = False

    def _recorders(self, outcome: str) -> tuple[Callable[[float], None], Any, dict[str, str]]:
        telemetry, name, queue = self._telemetry, self.job_name, self.queue
        found = self._by_outcome[outcome] = (
            counter_inc(telemetry.finished.labels(name, queue, outcome)),
            histogram_observe(telemetry.duration.labels(name, queue, outcome)),
            {"job_name": name, "queue": queue, "outcome": outcome},
        )
        return found

    def record_start(self) -> None:
        self._start_inc(1)
        otel = self._telemetry.otel
        if otel is not None:
            otel.started.add(1, self.attrs)

    def record_finish(self, outcome: str, seconds: float) -> None:
        recorders = self._by_outcome.get(outcome)
        if recorders is None:
            recorders = self._recorders(outcome)
        inc, observe, attrs = recorders
        inc(1)
        observe(seconds)
        otel = self._telemetry.otel
        if otel is not None:
            otel.finished.add(1, attrs)
            otel.duration.record(seconds, attrs)
        if outcome == "success":
            self.last_success = _time()
            if self.failures:
                self.failures = 0
                self._failure_times = []
        elif outcome in STREAK_OUTCOMES:
            with self._telemetry._series_lock:
                self.failures += 1
                times = self._failure_times
                times.append(_time())
                if len(times) > KEEP:
                    del times[0]

    def state(self) -> State:
        """This process's last success and failure streak of the series (core/streaks.py)."""
        return State(
            self.last_success, self.failures, tuple(self._failure_times), self.expected_every
        )

    def record_queue_wait(self, seconds: float) -> None:
        """Observe a run's queue wait; a negative, infinite or NaN one (a publisher's clock
        ahead of this one, a bad timestamp) is not a wait and is left out."""
        if not 0 <= seconds < math.inf:
            return
        if self.queue_wait is None:
            self.queue_wait = self._telemetry.queue_wait.labels(self.job_name, self.queue)
        self.queue_wait.observe(seconds)
        otel = self._telemetry.otel
        if otel is not None:
            otel.queue_wait.record(seconds, self.attrs)


_time = time.time


class Telemetry:
    """All instruments of this process (see the module docstring)."""

    def __init__(
        self, settings: Settings, runs: Callable[[], list[Run]], meter: Meter | None
    ) -> None:
        self.settings = settings
        self._runs = runs
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        # Registered first, so a collection derives the runs in flight before it reads the
        # counters: every run it shows in progress has its start counted in the same snapshot.
        reg.register(InflightCollector(self))
        self.started = Counter(
            "otel_jobs_runs_started", "Runs started.", ["job_name", "queue"], registry=reg
        )
        self.finished = Counter(
            "otel_jobs_runs_finished",
            "Runs finished, by outcome.",
            ["job_name", "queue", "outcome"],
            registry=reg,
        )
        self.duration = Histogram(
            "otel_jobs_run_duration_seconds", "Wall time of finished runs.", ["job_name", "queue", "outcome"],
            buckets=settings.duration_buckets, registry=reg,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "otel_jobs_queue_wait_seconds", "Time from publish (or due time) to start of a run.", ["job_name", "queue"],
            buckets=settings.queue_wait_buckets, registry=reg,
        )  # fmt: skip
        self.stalls = Counter(
            "otel_jobs_stalls_detected",
            "Stall verdicts given by the watchdog.",
            ["job_name", "queue", "reason"],
            registry=reg,
        )
        self.skipped = Counter(
            "otel_jobs_runs_skipped",
            "Scheduled runs that never started.",
            ["job_name", "queue", "reason"],
            registry=reg,
        )
        self.dead_lettered = Counter(
            "otel_jobs_runs_dead_lettered",
            "Jobs sent to the dead-letter queue, not to be retried.",
            ["job_name", "queue"],
            registry=reg,
        )
        self.redelivered = Counter(
            "otel_jobs_runs_redelivered",
            "Runs of a job handed out again after a run of it was lost (broker redelivery, "
            "or a requeue by otel-jobs monitor).",
            ["job_name", "queue"],
            registry=reg,
        )
        self.no_timeout = Counter(
            "otel_jobs_outbound_calls_without_timeout", "Outbound calls made without an effective timeout.",
            ["library", "host", "call_site"], registry=reg,
        )  # fmt: skip
        self.loop_lag = Histogram(
            "otel_jobs_event_loop_lag_seconds",
            "How late an asyncio event loop running runs ran the watchdog's probe.",
            ["thread"], buckets=LOOP_LAG_BUCKETS, registry=reg,
        )  # fmt: skip
        self.overflow = Counter(
            "otel_jobs_label_overflow",
            "Label values replaced by __overflow__ past their cap.",
            ["label"],
            registry=reg,
        )
        ProcessCollector(registry=reg)

        self.job_names = LabelCap("job_name", settings.max_job_names, self._overflowed)
        self.queues = LabelCap("queue", settings.max_queues, self._overflowed)
        self.hosts = LabelCap("host", settings.max_hosts, self._overflowed)
        self.call_sites = LabelCap("call_site", settings.max_call_sites, self._overflowed)
        self.loop_threads = LabelCap("thread", MAX_LOOP_THREADS, self._overflowed)
        #: Set by the watchdog: ``[(labels, seconds)]`` of each event loop it probes.
        self.loops_blocked: Callable[[], list[tuple[dict[str, str], float]]] | None = None
        # Scheduler-side gauges (core/schedules.py), fed by the scheduler adapters.
        self.schedules = schedules.Schedules(
            self.job_names, LabelCap("schedule", settings.max_job_names, self._overflowed)
        )
        reg.register(schedules.ScheduleCollector(self.schedules))
        self._series: dict[tuple[str, str], Series] = {}
        self._series_lock = threading.Lock()
        self.watchdog_last_tick: float | None = None
        self.config_findings: dict[tuple[str, str], float] = {}
        self.otel = OtelInstruments(meter, self) if meter is not None else None

    def _overflowed(self, label: str) -> None:
        self.overflow.labels(label).inc()

    def series(self, job_name: str, queue: str) -> Series:
        """The cached instruments of a ``(job_name, queue)`` (label values capped)."""
        found = self._series.get((job_name, queue))
        if found is not None:
            return found
        key = (self.job_names(job_name), self.queues(queue))
        with self._series_lock:
            found = self._series.get(key)
            if found is None:
                found = Series(self, *key)
                self._series[key] = found
        # An overflowed name is not cached under its own key: the cache would grow with every
        # distinct name, which is what the cap is for. Its runs go through the caps each time.
        return found

    def all_series(self) -> list[Series]:
        return list({id(s): s for s in list(self._series.values())}.values())

    # --- event counters used by the watchdog, schedulers and outbound checks ---------

    def record_stall(self, series: Series, reason: str) -> None:
        series.stalled_once = True
        self.stalls.labels(series.job_name, series.queue, reason).inc()
        if self.otel is not None:
            self.otel.stalls.add(1, {**series.attrs, "reason": reason})

    def record_skipped(self, series: Series, reason: str) -> None:
        self.skipped.labels(series.job_name, series.queue, reason).inc()
        if self.otel is not None:
            self.otel.skipped.add(1, {**series.attrs, "reason": reason})

    def record_dead_lettered(self, series: Series) -> None:
        self.dead_lettered.labels(series.job_name, series.queue).inc()
        if self.otel is not None:
            self.otel.dead_lettered.add(1, series.attrs)

    def record_redelivered(self, series: Series) -> None:
        self.redelivered.labels(series.job_name, series.queue).inc()
        if self.otel is not None:
            self.otel.redelivered.add(1, series.attrs)

    def record_no_timeout(self, library: str, host: str, call_site: str) -> None:
        host, call_site = self.hosts(host), self.call_sites(call_site)
        self.no_timeout.labels(library, host, call_site).inc()
        if self.otel is not None:
            self.otel.no_timeout.add(1, {"library": library, "host": host, "call_site": call_site})

    # --- derived at collection time ------------------------------------------------------

    def inflight(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        """The in-flight gauges as ``{gauge: [(labels, value), ...]}``, derived from the runs now."""
        now_mono, now_wall = time.monotonic(), time.time()
        per_series: dict[int, list[Any]] = {}
        stalled: dict[tuple[int, str], int] = {}
        for run in self._runs():
            series = run.series
            entry = per_series.get(id(series))
            if entry is None:
                per_series[id(series)] = [series, 1, run.start_mono, run.last_beat]
            else:
                entry[1] += 1
                if run.start_mono < entry[2]:
                    entry[2] = run.start_mono
                if run.last_beat < entry[3]:
                    entry[3] = run.last_beat
            if run.verdict is not None:
                series.stalled_once = True
                key = (id(series), run.state or "unknown")
                stalled[key] = stalled.get(key, 0) + 1
        out: dict[str, list[tuple[dict[str, str], float]]] = {
            "in_progress": [], "oldest_start": [], "stalest_heartbeat": [],
            "max_duration": [], "heartbeat_timeout": [], "stalled": [], "watchdog": [],
            "last_success": [], "consecutive_failures": [], "expected_every": [],
            "loop_blocked": self.loops_blocked() if self.loops_blocked is not None else [],
        }  # fmt: skip
        series_by_id = {}
        known = self.all_series()
        if per_series:
            # A run may record into a series that is not one of these (an RQ work horse's run,
            # counted by its worker: integrations/rq_horse.RemoteSeries): shown all the same.
            ids = {id(series) for series in known}
            known.extend(entry[0] for key, entry in per_series.items() if key not in ids)
        for series in known:
            series_by_id[id(series)] = series
            out["max_duration"].append((series.attrs, series.max_duration))
            out["heartbeat_timeout"].append((series.attrs, series.heartbeat_timeout))
            out["expected_every"].append((series.attrs, series.expected_every))
            out["consecutive_failures"].append((series.attrs, float(series.failures)))
            if series.last_success is not None:
                out["last_success"].append((series.attrs, series.last_success))
            entry = per_series.get(id(series))
            out["in_progress"].append((series.attrs, float(entry[1]) if entry else 0.0))
            if entry:
                out["oldest_start"].append(
                    (series.attrs, wall_time_of(entry[2], now_mono, now_wall))
                )
                out["stalest_heartbeat"].append(
                    (series.attrs, wall_time_of(entry[3], now_mono, now_wall))
                )
            if not series.stalled_once:
                continue
            for state in STALL_STATES:
                count = stalled.get((id(series), state), 0)
                out["stalled"].append(({**series.attrs, "state": state}, float(count)))
        if self.watchdog_last_tick is not None:
            out["watchdog"].append(({}, self.watchdog_last_tick))
        return out

    def observations(self, key: str) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        with errors.guard("collect.otel"):
            for labels, value in self.inflight()[key]:
                # The SDK drops +Inf (a limit or an expected_every not set) with a WARNING
                # at every collection: leave it out here instead.
                if not math.isinf(value):
                    yield Observation(value, labels)
