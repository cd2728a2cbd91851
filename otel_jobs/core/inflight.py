"""The gauges derived from the runs in flight, collected for prometheus-client.

:data:`GAUGES` lists them (name, help, the key of :meth:`Telemetry.inflight`), in the order they
are exposed; :class:`InflightCollector` builds them at each collection, and
:mod:`otel_jobs.core.textformat` writes the same gauges, in the same order, from the same
derivation. Nothing here runs on a job's path.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from . import errors

if TYPE_CHECKING:
    from .telemetry import Telemetry

#: name, help, and the key of Telemetry.inflight() of each gauge derived from the runs in flight
GAUGES: tuple[tuple[str, str, str], ...] = (
    ("otel_jobs_runs_in_progress", "Runs in flight now.", "in_progress"),
    (
        "otel_jobs_oldest_run_start_timestamp_seconds",
        "Start (Unix time) of the oldest run in flight; absent when none is.",
        "oldest_start",
    ),
    (
        "otel_jobs_stalest_heartbeat_timestamp_seconds",
        "Oldest last heartbeat (Unix time) among runs in flight; absent when none is.",
        "stalest_heartbeat",
    ),
    ("otel_jobs_run_max_duration_seconds", "Max duration in force for the job.", "max_duration"),
    (
        "otel_jobs_run_heartbeat_timeout_seconds",
        "Heartbeat timeout in force for the job.",
        "heartbeat_timeout",
    ),
    ("otel_jobs_runs_stalled", "Runs with a stall verdict now, by state.", "stalled"),
    (
        "otel_jobs_watchdog_last_tick_timestamp_seconds",
        "Last tick (Unix time) of the stuck-run watchdog.",
        "watchdog",
    ),
    (
        "otel_jobs_last_success_timestamp_seconds",
        "End (Unix time) of the last run of the job that succeeded; absent before the first.",
        "last_success",
    ),
    (
        "otel_jobs_consecutive_failures",
        "Runs of the job ended in failure or timeout since its last success.",
        "consecutive_failures",
    ),
    (
        "otel_jobs_run_expected_every_seconds",
        "How often the job must succeed (+Inf: not set).",
        "expected_every",
    ),
    (
        "otel_jobs_event_loop_blocked_seconds",
        "How long an asyncio event loop running runs has been unable to run anything (0: it runs).",
        "loop_blocked",
    ),
)


class InflightCollector:
    """prometheus-client collector for the gauges derived from the in-flight table."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            inflight = self._telemetry.inflight()
        except Exception as exc:
            errors.record("collect", exc)
            inflight = {}
        for name, help_text, key in GAUGES:
            samples = inflight.get(key, [])
            labelnames = (
                sorted(samples[0][0])
                if samples
                else (["job_name", "queue"] if key != "watchdog" else [])
            )
            family = GaugeMetricFamily(name, help_text, labels=labelnames)
            for labels, value in samples:
                family.add_metric([labels[k] for k in labelnames], value)
            yield family
        yield from self.other_families()

    def other_families(self) -> Iterator[Metric]:
        """The families not derived from the runs (also written so by core/textformat.py)."""
        findings = GaugeMetricFamily(
            "otel_jobs_config_finding", "A queue configuration mistake found at start-up (1 while it stands).",
            labels=["framework", "finding"],
        )  # fmt: skip
        for (framework, finding), value in sorted(self._telemetry.config_findings.items()):
            findings.add_metric([framework, finding], value)
        yield findings
        internal = errors.counts()
        family_c = CounterMetricFamily(
            "otel_jobs_internal_errors",
            "Errors inside otel-jobs, caught so the job is not affected.",
            labels=["component"],
        )
        for component, count in sorted(internal.items()):
            family_c.add_metric([component], count)
        yield family_c
