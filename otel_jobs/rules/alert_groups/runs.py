"""Alerts about one run in flight: stalled, not heartbeating, over its max duration.

Each run's limits come from the worker's gauges (the job's declared values); the
``--heartbeat-timeout-default``/``--max-duration-default`` ceilings cover jobs declaring none.
"""

from __future__ import annotations

from ..config import RulesConfig
from ..promql import (
    JOB,
    RECORDS_GROUP,
    RUN_VARS,
    WHERE,
    Alert,
    Group,
    Record,
    by,
    sel,
    threshold,
)


def records(s: RulesConfig) -> list[Record]:
    """Runs in flight and stalled per job across its workers, and the oldest run's age and the
    stalest heartbeat's against the job's limits (the overview's panels, which would otherwise
    divide every worker's series at every step of their range); the alerts stay per worker,
    where the stuck run is."""
    ages = f"{RECORDS_GROUP}.ages"
    oldest = sel(s, "otel_jobs_oldest_run_start_timestamp_seconds")
    stalest = sel(s, "otel_jobs_stalest_heartbeat_timestamp_seconds")
    return [
        Record(
            "otel_jobs:runs_in_progress:sum",
            f"sum by ({by(s)}) ({sel(s, 'otel_jobs_runs_in_progress')})",
        ),
        Record(
            "otel_jobs:runs_stalled:sum",
            f"sum by ({by(s, 'state')}) ({sel(s, 'otel_jobs_runs_stalled')})",
        ),
        # Where no run is in flight the left side is empty: one series per job with runs.
        Record(
            "otel_jobs:oldest_run_age_over_max_duration:max",
            f"max by ({by(s)}) (\n  (time() - {oldest})\n  / "
            f"{sel(s, 'otel_jobs_run_max_duration_seconds')}\n)",
            ages,
        ),
        Record(
            "otel_jobs:stalest_heartbeat_age_over_timeout:max",
            f"max by ({by(s)}) (\n  (time() - {stalest})\n  / "
            f"{sel(s, 'otel_jobs_run_heartbeat_timeout_seconds')}\n)",
            ages,
        ),
    ]


def alerts(s: RulesConfig) -> list[Alert]:
    hb = sel(s, "otel_jobs_stalest_heartbeat_timestamp_seconds")
    oldest = sel(s, "otel_jobs_oldest_run_start_timestamp_seconds")
    hb_limit = threshold(
        sel(s, "otel_jobs_run_heartbeat_timeout_seconds"), s.heartbeat_timeout_default, hb
    )
    max_limit = threshold(
        sel(s, "otel_jobs_run_max_duration_seconds"), s.max_duration_default, oldest
    )
    return [
        Alert(
            "OtelJobsRunStalled",
            "critical",
            f"{sel(s, 'otel_jobs_runs_stalled')} > 0",
            "The otel-jobs watchdog reports a stalled run.",
            f"{{{{ $value }}}} run(s) of {JOB}{WHERE} stalled, state {{{{ $labels.state }}}} "
            "(blocked: waiting without CPU on I/O or a lock; spinning: burning CPU in a loop; "
            "unknown: not diagnosed). The watchdog's WARNING log and the stall span carry the "
            "stack.",
            dashboard_vars=RUN_VARS,
        ),
        Alert(
            "OtelJobsRunNotHeartbeating",
            "critical",
            f"(time() - {hb})\n> {hb_limit}",
            "A job run has stopped heartbeating.",
            f"The stalest run of {JOB}{WHERE} last heartbeated "
            "{{ $value | humanizeDuration }} ago, longer than the job's heartbeat timeout.",
            dashboard_vars=RUN_VARS,
        ),
        Alert(
            "OtelJobsRunOverMaxDuration",
            "warning",
            f"(time() - {oldest})\n> {max_limit}",
            "A job run is running longer than its max duration.",
            f"The oldest run of {JOB}{WHERE} started {{{{ $value | humanizeDuration }}}} "
            "ago, longer than the job's max duration.",
            dashboard_vars=RUN_VARS,
        ),
    ]


GROUP = Group(
    "otel-jobs.runs",
    order=10,
    default_for={
        "OtelJobsRunStalled": "1m",
        "OtelJobsRunNotHeartbeating": "2m",
        "OtelJobsRunOverMaxDuration": "2m",
    },
    alerts=alerts,
    records=records,
)
