"""Runs another process ran, recorded in this one: an RQ work horse runs one job and ends with
``os._exit``; its worker, which forked it, opens the run's span before the fork (warm SDK pages:
the child would pay about 0.5 ms of copy-on-write faults for its first span) and counts its
start and end (:mod:`otel_jobs.integrations.rq_horse`). Bound as methods of
:class:`~otel_jobs.core.agent.Agent`; never on another job's path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypedDict

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from .labels import utf8
from .spans import job_attributes

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .agent import Agent
    from .telemetry import Series


class RunIdentity(TypedDict, total=False):
    """Which run another process ran: the keywords of :meth:`Agent.start_run
    <otel_jobs.core.agent.Agent.start_run>` that name it (``queue`` None: ``default``;
    ``attempt``: 1; ``framework``: ``otel_jobs``)."""

    queue: str | None
    job_id: str | None
    attempt: int
    framework: str


def open_span(agent: Agent, name: str, **run: Unpack[RunIdentity]) -> trace.Span:
    """The span of a run that a child this process is about to fork runs (RQ's work horse),
    started here, where the SDK's code and data are warm: a freshly forked process pays
    about 0.5 ms of copy-on-write page faults for its first span. The child makes it current
    and ends it (``start_run(span=..., own_span=True)``); this process never ends it."""
    attrs = run_attributes(name, run)
    return agent.tracer.start_span(attrs["job.name"], kind=SpanKind.CONSUMER, attributes=attrs)


def run_attributes(name: str, run: RunIdentity) -> dict[str, Any]:
    """The span attributes of a run of ``name`` that another process ran (``job.*``), UTF-8
    (see :meth:`Agent.start_run`)."""
    job_id = run.get("job_id")
    return job_attributes(
        utf8(name),
        utf8(run.get("queue") or "default"),
        run.get("attempt", 1),
        run.get("framework", "otel_jobs"),
        utf8(job_id) if isinstance(job_id, str) else job_id,
    )


def series_for(
    agent: Agent, name: str, queue: str | None = None, native_max_duration: float | None = None
) -> Series:
    """The series of a run of ``name`` another process runs (RQ's work horse, see
    :meth:`Agent.forking_one_run`), with the thresholds :meth:`Agent.start_run` would resolve."""
    series = agent.telemetry.series(name, queue or "default")
    configured = agent.settings.for_job(name)
    series.max_duration = (
        configured.max_duration or native_max_duration or agent.settings.max_duration
    )
    series.heartbeat_timeout = configured.heartbeat_timeout or agent.settings.heartbeat_timeout
    if configured.expected_every is not None:
        series.expected_every = configured.expected_every
    return series


def count_start(
    agent: Agent, series: Series, started_at: float, enqueued_at: float | None = None
) -> None:
    """Count here the start of a run another process ran (at ``started_at``, Unix time),
    and its queue wait."""
    series.record_start()
    if enqueued_at is not None:
        series.record_queue_wait(started_at - enqueued_at)
    _counted_here(agent)


def count_finish(agent: Agent, series: Series, outcome: str, seconds: float) -> None:
    """Count here the end of a run another process ran (its process told how it ended)."""
    series.record_finish(outcome, seconds)
    if agent.pusher is not None:
        agent.pusher.run_finished(series.job_name)
    _counted_here(agent)


def _counted_here(agent: Agent) -> None:
    # A long-lived child that forks the one-run children (an RQ worker of `rq worker-pool`)
    # writes its snapshot from its watchdog, like a pool child (core.multiprocess).
    if agent.share.in_child:
        agent.defer_snapshots_to_watchdog()
        agent.share.flush_or_mark_stale(agent.telemetry.registry)
