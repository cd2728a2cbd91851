"""Scheduler-side metrics: when each schedule entry is due next, when it last sent, how often.

The process that runs a scheduler (Celery beat, an APScheduler scheduler, an arq worker with
``cron_jobs``, a Huey consumer with periodic tasks, RQ's ``CronScheduler``) exports, per entry:

* ``otel_jobs_schedule_next_run_timestamp_seconds{job_name, schedule}``: the Unix time the
  entry is due next, as the scheduler has it. It stays in the past when the scheduler is stuck;
* ``otel_jobs_schedule_last_sent_timestamp_seconds{job_name, schedule}``: the Unix time this
  process last sent (enqueued, submitted) a run of the entry; no series before the first;
* ``otel_jobs_schedule_interval_seconds{job_name, schedule}``: the entry's interval; for a
  calendar entry (crontab) the gap to its next due time from the due time before it.

``job_name`` is the job the entry runs (the name its runs are recorded under), ``schedule`` the
entry's own name in its scheduler (an APScheduler job id, a beat entry's key...).

Adapters feed a :class:`Schedules` in one of two ways: a *source*, a function returning the
entries as the scheduler holds them now, called when the metrics are collected (never on the
scheduler's path), and :meth:`Schedules.sent`, called by the adapter's hook as the scheduler
sends a run (one dictionary store). A source that raises is counted under
``otel_jobs_internal_errors_total{component="schedules"}`` and left out of that collection.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from prometheus_client.core import GaugeMetricFamily, Metric

from . import errors

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter, Observation

NEXT_RUN = "otel_jobs_schedule_next_run_timestamp_seconds"
LAST_SENT = "otel_jobs_schedule_last_sent_timestamp_seconds"
INTERVAL = "otel_jobs_schedule_interval_seconds"

_FAMILIES = (
    (NEXT_RUN, "Unix time at which the schedule entry is due next.", "next_run"),
    (LAST_SENT, "Unix time at which this scheduler last sent a run of the entry.", "last_sent"),
    (
        INTERVAL,
        "Interval of the schedule entry (crontab: the gap to its next due time).",
        "interval",
    ),
)


class Entry(NamedTuple):
    """One schedule entry as its scheduler holds it now (what a source returns)."""

    job_name: str
    schedule: str
    next_run: float | None  # Unix time; None: not due again (paused, or a finished one-off)
    interval: float | None  # seconds; None: not known
    last_sent: float | None = None  # Unix time, for a scheduler that keeps it itself


SourceFn = Callable[[], Iterable[Entry]]


class Row(NamedTuple):
    """One entry as the gauges show it: its labels and (next run, last sent, interval)."""

    labels: dict[str, str]
    values: tuple[float | None, float | None, float | None]


class Schedules:
    """The schedule entries of this process's schedulers (see the module docstring)."""

    def __init__(self, cap: Callable[[str], str], cap_schedule: Callable[[str], str]) -> None:
        self._cap = cap
        self._cap_schedule = cap_schedule
        self._sources: dict[int, SourceFn] = {}
        self._sent: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def add_source(self, source: SourceFn) -> Callable[[], None]:
        """Collect ``source``'s entries from now on; returns the function that stops it."""
        key = id(source)
        with self._lock:
            self._sources[key] = source

        def remove() -> None:
            with self._lock:
                self._sources.pop(key, None)

        return remove

    def sent(self, job_name: str, schedule: str, at: float | None = None) -> None:
        """A run of entry ``schedule`` (of job ``job_name``) was sent now (or at ``at``)."""
        self._sent[(job_name, schedule)] = time.time() if at is None else at

    def entries(self) -> list[Row]:
        """Every entry with its values, read from the sources now."""
        with self._lock:
            sources = list(self._sources.values())
        found: dict[tuple[str, str], Entry] = {}
        for source in sources:
            try:
                for entry in source():
                    found[(entry.job_name, entry.schedule)] = entry
            except Exception as exc:
                errors.record("schedules", exc)
        sent = dict(self._sent)
        out = []
        for key in sorted(found.keys() | sent.keys()):
            held = found.get(key)
            last_sent = sent.get(key)
            if held is not None and held.last_sent is not None:
                last_sent = max(last_sent or held.last_sent, held.last_sent)
            labels = {"job_name": self._cap(key[0]), "schedule": self._cap_schedule(key[1])}
            if held is None:
                out.append(Row(labels, (None, last_sent, None)))
            else:
                out.append(Row(labels, (held.next_run, last_sent, held.interval)))
        return out

    def observations(self, index: int) -> Iterator[Observation]:
        from opentelemetry.metrics import Observation

        with errors.guard("collect.otel"):
            for row in self.entries():
                value = row.values[index]
                if value is not None and math.isfinite(value):
                    yield Observation(value, row.labels)


def observe_with(meter: Meter, current: Callable[[], Schedules]) -> None:
    """Register the three gauges as OpenTelemetry observable gauges on ``meter``; they report
    the entries of ``current()`` (the SDK keeps the first callbacks of a name on a meter)."""

    def callback(index: int) -> Callable[[Any], Iterable[Observation]]:
        return lambda _options: current().observations(index)

    for index, (name, description) in enumerate(
        (
            ("otel_jobs.schedule.next_run.timestamp", "Unix time the entry is due next."),
            ("otel_jobs.schedule.last_sent.timestamp", "Unix time a run was last sent."),
            ("otel_jobs.schedule.interval", "Interval of the schedule entry."),
        )
    ):
        meter.create_observable_gauge(
            name, callbacks=[callback(index)], unit="s", description=description
        )


class ScheduleCollector:
    """prometheus-client collector of the three schedule gauges."""

    def __init__(self, schedules: Schedules) -> None:
        self._schedules = schedules

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            entries = self._schedules.entries()
        except Exception as exc:
            errors.record("schedules", exc)
            entries = []
        for index, (name, help_text, _key) in enumerate(_FAMILIES):
            family = GaugeMetricFamily(name, help_text, labels=["job_name", "schedule"])
            for row in entries:
                value = row.values[index]
                if value is not None:
                    family.add_metric([row.labels["job_name"], row.labels["schedule"]], value)
            yield family


def gap(next_run: float | None, previous: float | None, following: float | None) -> float | None:
    """The interval of a calendar entry: from the due time before ``next_run`` (``previous``,
    when the adapter knows it) to ``next_run``; else from ``next_run`` to the one after."""
    if next_run is None:
        return None
    if previous is not None and previous < next_run:
        return next_run - previous
    if following is not None and following > next_run:
        return following - next_run
    return None


def unix(moment: Any) -> float | None:
    """A ``datetime`` (aware, or naive in local time) as Unix time; None stays None."""
    if moment is None:
        return None
    try:
        return float(moment.timestamp())
    except (OverflowError, ValueError, OSError):  # datetime.max and friends
        return None
