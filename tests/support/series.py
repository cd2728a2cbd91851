"""The series the runs and watchdog tests read most, named once: a run's outcome, a verdict
given, and any series of an agent's own registry (read without a scrape).

>>> assert runs_finished(agent_metrics(), "billing.sync", "success", queue="billing") == 1
"""

from __future__ import annotations

from typing import Any

from . import Samples


def runs_finished(samples: Samples, job_name: str, outcome: str, **labels: str) -> float:
    """``otel_jobs_runs_finished_total{job_name, outcome, **labels}``: its one sample."""
    return samples.value(
        "otel_jobs_runs_finished_total", job_name=job_name, outcome=outcome, **labels
    )


def stalls_detected(samples: Samples, job_name: str, reason: str, **labels: str) -> float:
    """``otel_jobs_stalls_detected_total{job_name, reason, **labels}``: its one sample."""
    return samples.value(
        "otel_jobs_stalls_detected_total", job_name=job_name, reason=reason, **labels
    )


def registry_total(agent: Any, name: str, **labels: str) -> float:
    """The sum of the samples ``name{**labels}`` in ``agent``'s registry as it is now."""
    return sum(
        sample.value
        for family in agent.telemetry.registry.collect()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )
