"""Alerts about the workers themselves: a frozen watchdog, a target down or absent."""

from __future__ import annotations

from ..config import RulesConfig
from ..promql import Alert, Group, escape_template, joined_matchers, num, sel


def alerts(s: RulesConfig) -> list[Alert]:
    up = sel(s, "up", target=True)
    return [
        Alert(
            "OtelJobsWatchdogNotTicking",
            "critical",
            f"time() - {sel(s, 'otel_jobs_watchdog_last_tick_timestamp_seconds')} > "
            f"{num(s.watchdog_stale_seconds)}",
            "The otel-jobs watchdog of a worker stopped ticking.",
            "The watchdog of {{ $labels.instance }} (scrape job {{ $labels.job }}) last ticked "
            "{{ $value | humanizeDuration }} ago: a worker process is frozen or its watchdog "
            "thread is gone, and its stuck runs go unreported.",
            dashboard_vars=("instance",),
        ),
        Alert(
            "OtelJobsTargetDown",
            "warning",
            f"{up} == 0",
            "A worker's otel-jobs metrics target is down.",
            "Prometheus cannot scrape {{ $labels.instance }} (scrape job {{ $labels.job }}): "
            "the worker is down or its /metrics endpoint unreachable, and its jobs are unwatched.",
            dashboard_vars=("instance",),
        ),
        Alert(
            "OtelJobsTargetAbsent",
            "warning",
            f"absent({up})",
            "No otel-jobs worker target is known to Prometheus.",
            "Prometheus has no scrape target matching "
            f"{{{escape_template(joined_matchers(s, True))}}}"
            ": no worker is being watched for stuck jobs.",
            dashboard_vars=(),
        ),
    ]


GROUP = Group(
    "otel-jobs.workers",
    order=20,
    default_for={
        "OtelJobsWatchdogNotTicking": "2m",
        "OtelJobsTargetDown": "5m",
        "OtelJobsTargetAbsent": "10m",
    },
    alerts=alerts,
)
