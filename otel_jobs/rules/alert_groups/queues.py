"""Alerts on the queues themselves, from ``otel-jobs monitor``: a backlog nobody drains, a broker
the monitor cannot read, the monitor gone.

The workers see a job only when it starts; these alerts read what the monitor reads on the
brokers, so they fire when no worker is left to report anything. Every selector of the monitor's
metrics carries ``--monitor-target-selector`` (the scrape job the monitor is scraped under) and
``--selector``. Two monitors on one broker, for availability, report the same figures: the
alerts take the ``max`` by queue (or broker), so they fire once, not once per monitor.

``OtelJobsMonitorAbsent`` fires for a monitor that was scraped within ``--monitor-lookback`` and
has no target up now; a Prometheus that never scraped a monitor (no monitor deployed) does not
miss one.
"""

from __future__ import annotations

from .. import fleet
from ..config import Option, RulesConfig, duration, matchers, positive
from ..promql import RECORDS_GROUP, Alert, Group, Record, escape_template, num

MONITOR_TARGET_SELECTOR: Option[str] = Option(
    "monitor_target_selector",
    'job="otel-jobs-monitor"',
    "matchers that pick the `otel-jobs monitor` scrape targets, for the queue alerts "
    "(`OtelJobsQueueBacklogOld`, `OtelJobsQueueBacklogGrowing`, `OtelJobsMonitorBrokerDown`, "
    "`OtelJobsMonitorAbsent`)",
    matchers,
    "MATCHERS",
)
BACKLOG_AGE: Option[float] = Option(
    "backlog_age_seconds",
    600.0,
    "seconds the oldest job may wait in a queue before the backlog is old",
    positive,
    "SECONDS",
)
BACKLOG_WINDOW: Option[str] = Option(
    "backlog_growing_window",
    "15m",
    "a queue whose waiting jobs grew over this window while its jobs finished no run is growing",
    duration,
    "DURATION",
)
MONITOR_LOOKBACK: Option[str] = Option(
    "monitor_lookback",
    "1d",
    "a monitor scraped within this window that has no target up now is absent (one never "
    "scraped is not missed)",
    duration,
    "DURATION",
)


def _msel(s: RulesConfig, name: str, extra: str = "") -> str:
    found = [m for m in (s.option(MONITOR_TARGET_SELECTOR), s.selector, extra) if m]
    return f"{name}{{{', '.join(found)}}}" if found else name


FINISHED = "otel_jobs_runs_finished_total"


def records(s: RulesConfig) -> list[Record]:
    """Finished runs over the growing window, per job across the workers (the records group
    of the job alerts: the same record when the windows are the same)."""
    if not _on_records(s):
        return []
    return fleet.windowed(
        s, FINISHED, ("outcome",), RECORDS_GROUP, increases=(s.option(BACKLOG_WINDOW),)
    )


def _on_records(s: RulesConfig) -> bool:
    # The records keep the queue label only when --group-by does.
    return s.recording_rules and "queue" in s.group_by


def alerts(s: RulesConfig) -> list[Alert]:
    age = s.option(BACKLOG_AGE)
    window = s.option(BACKLOG_WINDOW)
    lookback = s.option(MONITOR_LOOKBACK)
    if _on_records(s):
        # Every worker's counters, read once by the records rather than on each evaluation.
        drained = f"sum by (queue) ({fleet.increase_record(FINISHED, window)})"
    else:
        finished = FINISHED + (f"{{{s.selector}}}" if s.selector else "")
        drained = f"sum by (queue) (increase({finished}[{window}]))"
    up = _msel(s, "up")
    waiting = _msel(s, "otel_jobs_queue_depth", 'state="waiting"')
    queue = "queue {{ $labels.queue }} ({{ $labels.framework }})"
    return [
        Alert(
            "OtelJobsQueueBacklogOld",
            "warning",
            "max by (framework, queue) "
            f"({_msel(s, 'otel_jobs_queue_oldest_waiting_age_seconds')})\n> {num(age)}",
            "Jobs have been waiting in a queue for too long.",
            f"The oldest job waiting in {queue} has waited {{{{ $value | humanizeDuration }}}}, "
            f"more than {num(age)} s: no worker is taking its jobs (all down, busy, or every "
            "slot held by stuck runs).",
            dashboard_vars=("queue",),
        ),
        Alert(
            "OtelJobsQueueBacklogGrowing",
            "warning",
            "max by (framework, queue) "
            f"(delta({waiting}[{window}]))\n> 0\n"
            f"unless on (queue)\n{drained} > 0",
            "A queue keeps growing while its jobs finish nothing.",
            f"About {{{{ $value | humanize }}}} more jobs wait in {queue} than {window} ago, "
            f"and no run of its jobs finished in that time: nothing is draining it.",
            dashboard_vars=("queue",),
        ),
        Alert(
            "OtelJobsMonitorBrokerDown",
            "warning",
            f"max by (framework, broker) ({_msel(s, 'otel_jobs_monitor_broker_up')}) == 0",
            "otel-jobs monitor cannot read a broker.",
            "otel_jobs_monitor_broker_up is {{ $value }} for the {{ $labels.framework }} broker "
            "{{ $labels.broker }}: no monitor can read it (refused, timed out, authentication), "
            "so its queues have no figures and the backlog alerts cannot fire for them.",
            dashboard_vars=(),
        ),
        Alert(
            "OtelJobsMonitorAbsent",
            "warning",
            f"count by (job) (max_over_time({up}[{lookback}]))\nunless\ncount by (job) ({up} == 1)",
            "No otel-jobs monitor is up any more.",
            f"{{{{ $value }}}} target(s) matching {{{escape_template(s.option(MONITOR_TARGET_SELECTOR))}}} "
            f"were scraped in the last {lookback} and none is up now: the queues are no longer "
            "watched from the brokers.",
            dashboard_vars=(),
        ),
    ]


GROUP = Group(
    "otel-jobs.queues",
    order=60,
    default_for={
        "OtelJobsQueueBacklogOld": "5m",
        "OtelJobsQueueBacklogGrowing": "10m",
        "OtelJobsMonitorBrokerDown": "5m",
        "OtelJobsMonitorAbsent": "10m",
    },
    alerts=alerts,
    options=(MONITOR_TARGET_SELECTOR, BACKLOG_AGE, BACKLOG_WINDOW, MONITOR_LOOKBACK),
    records=records,
)
