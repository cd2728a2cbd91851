"""Scheduled jobs: a scheduler that sends nothing when an entry is due, a job that has not
succeeded for longer than it should, a job failing run after run, no scheduler at all.

They read the worker-side gauges (``otel_jobs_last_success_timestamp_seconds``,
``otel_jobs_consecutive_failures``, ``otel_jobs_run_expected_every_seconds``) and the
scheduler-side ones (``otel_jobs_schedule_*``, exported by the process that schedules). A job is
identified by ``job_name`` (and ``queue``, and the other ``--group-by`` labels) but never by
``job``: a cron script's pushes carry ``job=<its job name>`` on the Pushgateway, and must count
as the same job as the workers' series.

Invariants and choices:

* Restarts and several workers: the last success is the maximum across instances over
  ``--no-success-window`` (a restarted worker has no series before its first success); a job
  whose ``expected_every`` has been declared, or that a schedule entry has sent, for the whole
  window and that did not succeed in it alerts too, so a job failing since before a restart does
  not fall silent once its old series leave the window. A job that only a schedule entry
  declares then alerts by its job name alone: no current series tells its queue.
* A job's threshold is its ``expected_every``; for a job that declares none, the interval of the
  schedule entries that send it (the scheduler's ``otel_jobs_schedule_interval_seconds``).
* A frozen scheduler cannot be scraped: its entries' last values (``last_over_time``) stand in for
  the current ones while its target is not up, for ``--scheduler-stale-window``; while it is up,
  only its current series count (a paused entry has none and is never late).
* Failures in a row are counted by each process since its own last success: the alert fires for
  an instance with ``--failing-repeatedly-count`` failures in a row unless another instance has
  succeeded more recently than it did.
"""

from __future__ import annotations

import re

from ..config import Option, RulesConfig, duration, positive
from ..promql import Alert, Group, escape_template, joined_matchers, num, sel

SCHEDULE_GRACE: Option[float] = Option(
    "schedule_grace_seconds",
    60.0,
    "seconds past an entry's due time, with nothing sent, after which the scheduler is late "
    "(`OtelJobsScheduledRunLate`)",
    positive,
    "SECONDS",
)
STALE_WINDOW: Option[str] = Option(
    "scheduler_stale_window",
    "1h",
    "how long the last values of a scheduler that cannot be scraped (frozen, down) still count "
    "for `OtelJobsScheduledRunLate`",
    duration,
    "DURATION",
)
NO_SUCCESS_GRACE: Option[float] = Option(
    "no_success_grace_seconds",
    300.0,
    "seconds a job may run past its expected_every without a success before "
    "`OtelJobsNoRecentSuccess`",
    positive,
    "SECONDS",
)
NO_SUCCESS_WINDOW: Option[str] = Option(
    "no_success_window",
    "2d",
    "the last success is looked up this far back across all instances and the Pushgateway; "
    "longer than the longest expected_every plus grace",
    duration,
    "DURATION",
)
FAILING_COUNT: Option[float] = Option(
    "failing_repeatedly_count",
    3.0,
    "failures in a row that fire `OtelJobsFailingRepeatedly`",
    positive,
    "RUNS",
)
SCHEDULER_LOOKBACK: Option[str] = Option(
    "scheduler_lookback",
    "1d",
    "a scheduler exported within this window, with no schedule series now, is absent "
    "(`OtelJobsSchedulerAbsent`; a Prometheus that never saw one does not miss it)",
    duration,
    "DURATION",
)

NEXT = "otel_jobs_schedule_next_run_timestamp_seconds"
SENT = "otel_jobs_schedule_last_sent_timestamp_seconds"
INTERVAL = "otel_jobs_schedule_interval_seconds"
LAST = "otel_jobs_last_success_timestamp_seconds"
FAILURES = "otel_jobs_consecutive_failures"
EVERY = "otel_jobs_run_expected_every_seconds"


def job_labels(s: RulesConfig) -> tuple[str, ...]:
    """``job_name`` and the ``--group-by`` labels that are neither ``job`` nor ``queue``."""
    return (
        "job_name",
        *(label for label in s.group_by if label not in ("job", "job_name", "queue")),
    )


def watched(s: RulesConfig) -> tuple[str, str]:
    """``(labels, expr)``: the jobs ``OtelJobsNoRecentSuccess`` watches (an ``expected_every``, or
    a schedule entry that sends them), for ``OtelJobsJobStoppedRunning`` to leave alone."""
    job = ", ".join(job_labels(s))
    return job, (
        f"(\n  max by ({job}) ({sel(s, EVERY)} < +Inf)\n  or\n"
        f"  max by ({job}) ({sel(s, INTERVAL)})\n)"
    )


def _seconds(window: str) -> str:
    """A Prometheus duration as a number of seconds, in PromQL."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    total = sum(float(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", window))
    return num(total)


def alerts(s: RulesConfig) -> list[Alert]:
    grace = num(s.option(SCHEDULE_GRACE))
    stale = s.option(STALE_WINDOW)
    no_success_grace = num(s.option(NO_SUCCESS_GRACE))
    window = s.option(NO_SUCCESS_WINDOW)
    count = num(s.option(FAILING_COUNT))
    lookback = s.option(SCHEDULER_LOOKBACK)
    job = ", ".join(job_labels(s))
    job_queue = ", ".join((*job_labels(s), "queue"))
    entry = ", ".join((*job_labels(s), "schedule"))
    up = sel(s, "up")

    def held(metric: str) -> str:
        # The current series; for a target that is not up (frozen, down), its last value.
        return (
            f"max by ({entry}) (\n  {sel(s, metric)}\n  or\n"
            f"  (last_over_time({sel(s, metric)}[{stale}]) unless on (job, instance) {up} == 1)\n)"
        )

    last_success = f"max by ({job_queue}) (max_over_time({sel(s, LAST)}[{window}]))"
    declared = f"max by ({job_queue}) ({sel(s, EVERY)} < +Inf)"
    scheduled = f"max by ({job}) ({sel(s, INTERVAL)})"
    return [
        Alert(
            "OtelJobsScheduledRunLate",
            "critical",
            f"time() - {held(NEXT)}\n> {grace}\n"
            f"unless on ({entry})\n{held(SENT)}\n>= on ({entry})\n{held(NEXT)}",
            "A scheduler sent nothing when an entry was due.",
            "Entry {{ $labels.schedule }} of {{ $labels.job_name }} was due "
            "{{ $value | humanizeDuration }} ago and its scheduler sent nothing since: the "
            "scheduler is stuck, frozen or down, and none of its jobs is being sent.",
            dashboard_vars=("job_name",),
        ),
        Alert(
            "OtelJobsNoRecentSuccess",
            "critical",
            f"time() - {last_success}\n> on ({job}) group_left ()\n"
            f"{watched(s)[1]} + {no_success_grace}\n"
            # Declared for the whole window and no success in it (its last one has left the
            # window, or there was none): at least the window.
            f"or\n(\n  {declared}\n  and on ({job_queue})\n"
            f"  max by ({job_queue}) ({sel(s, EVERY)} offset {window})\n"
            f"  unless on ({job_queue})\n  {last_success}\n) * 0 + {_seconds(window)}\n"
            # Sent by a schedule entry for the whole window, no expected_every declared now (the
            # branch above) and no success in it on any queue: by the job name alone.
            f"or\n(\n  {scheduled}\n  and on ({job})\n"
            f"  max by ({job}) ({sel(s, INTERVAL)} offset {window})\n"
            f"  unless on ({job})\n  max by ({job}) ({sel(s, EVERY)} < +Inf)\n"
            f"  unless on ({job})\n  max by ({job}) (max_over_time({sel(s, LAST)}[{window}]))\n"
            f") * 0 + {_seconds(window)}",
            "A job has not succeeded for longer than it should.",
            "{{ $labels.job_name }}{{ if $labels.queue }} on queue {{ $labels.queue }}{{ end }} "
            "last succeeded "
            "{{ $value | humanizeDuration }} ago (across all its workers and the Pushgateway), "
            "longer than how often it must succeed plus "
            f"{no_success_grace} s: its runs fail, are not sent, or no worker takes them.",
        ),
        Alert(
            "OtelJobsFailingRepeatedly",
            "warning",
            f"max by ({job_queue}) ({sel(s, FAILURES)}) >= {count}\n"
            f"unless on ({job_queue})\n(\n  max by ({job_queue}) ({sel(s, LAST)})\n"
            f"  > on ({job_queue})\n  max by ({job_queue}) (\n"
            f"    {sel(s, LAST)} and on ({job_queue}, job, instance) {sel(s, FAILURES)} >= {count}"
            "\n  )\n)",
            "A job has failed several times in a row.",
            "{{ $labels.job_name }} on queue {{ $labels.queue }} ended in failure or timeout "
            "{{ $value }} times in a row since its last success: each failure may look "
            "harmless, together they mean its work is not being done.",
        ),
        Alert(
            "OtelJobsSchedulerAbsent",
            "critical",
            f"count(last_over_time({sel(s, NEXT)}[{lookback}]))\nunless on ()\n"
            f"count({sel(s, NEXT)})",
            "No scheduler exports its schedule any more.",
            f"{{{{ $value }}}} schedule entries were exported in the last {lookback}"
            + (
                f" (matching {{{escape_template(joined_matchers(s, False))}}})"
                if s.selector
                else ""
            )
            + " and none is now: no scheduler process (Celery beat, APScheduler, cron jobs of a "
            "worker) is being scraped, so scheduled jobs are probably not being sent.",
            dashboard_vars=(),
        ),
    ]


GROUP = Group(
    "otel-jobs.schedules",
    order=50,
    default_for={
        "OtelJobsScheduledRunLate": "2m",
        "OtelJobsNoRecentSuccess": "5m",
        "OtelJobsFailingRepeatedly": "1m",
        "OtelJobsSchedulerAbsent": "10m",
    },
    alerts=alerts,
    options=(
        SCHEDULE_GRACE,
        STALE_WINDOW,
        NO_SUCCESS_GRACE,
        NO_SUCCESS_WINDOW,
        FAILING_COUNT,
        SCHEDULER_LOOKBACK,
    ),
)
