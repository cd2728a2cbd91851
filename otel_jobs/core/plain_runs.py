"""The lean start of a plain ``@job`` run: a sync or async function, no framework, no
captured arguments.

Such a run always has the same name, queue, thresholds, series and span attributes in one
process: :func:`plan` works them out once (from a first run made by
:meth:`otel_jobs.core.agent.Agent.start_run`, so that they are the same), and :func:`start_run`
starts each later run from that plan, doing what ``Agent.start_run`` does for it and nothing
else (no keyword handling, no settings read, no attribute dict made per run). A plan holds for
as long as the process has the same instruments (``Agent._telemetry``): a new agent, or a
forked child's fresh instruments, make a new one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind

from . import errors
from .run import Run
from .spans import job_attributes
from .telemetry import Series

if TYPE_CHECKING:
    from .agent import Agent
    from .telemetry import Telemetry

_CONSUMER = SpanKind.CONSUMER


class Plan:
    """What every run of one plain ``@job`` starts with, in this process's instruments."""

    __slots__ = (
        "telemetry",
        "name",
        "queue",
        "series",
        "attributes",
        "max_duration",
        "heartbeat_timeout",
        "on_stall",
        "expected_every",
    )

    def __init__(self, telemetry: Telemetry, run: Run, expected_every: float | None) -> None:
        self.telemetry = telemetry
        self.name = run.name
        self.queue = run.queue
        self.series: Series = run.series
        # Shared by the runs' spans: the SDK reads it (its sampler gets a read-only view) and
        # copies it into each span's own attributes.
        self.attributes = job_attributes(run.name, run.queue, 1, "otel_jobs", None)
        self.max_duration = run.max_duration
        self.heartbeat_timeout = run.heartbeat_timeout
        self.on_stall = run.on_stall
        self.expected_every = expected_every


def plan(agent: Agent, run: Run, options: dict[str, Any]) -> Plan | None:
    """The plan of the job of ``run``, a run :meth:`Agent.start_run` started with ``options``
    (``@job``'s own, validated); None if its instruments are not this process's own series
    (an RQ work horse's run) or not built."""
    telemetry = agent._telemetry
    if telemetry is None or run.series.__class__ is not Series or run.attempt != 1:
        return None
    every = agent.settings.for_job(run.name).expected_every or options.get("expected_every")
    return Plan(telemetry, run, every)


def start_run(agent: Agent, plan: Plan) -> Run:
    """Start a run of ``plan``'s job: what :meth:`Agent.start_run` does for it (same span, same
    counts, same thresholds, same entry in the in-flight table)."""
    if not agent.serving:
        agent.start_serving()
    series = plan.series
    series.max_duration = plan.max_duration
    series.heartbeat_timeout = plan.heartbeat_timeout
    if plan.expected_every is not None:
        series.expected_every = plan.expected_every
    name = plan.name
    run = Run(
        agent, name, plan.queue, None, 1, "otel_jobs", series,
        plan.max_duration, plan.heartbeat_timeout, plan.on_stall,
    )  # fmt: skip
    try:
        run.span = agent.tracer.start_span(name, kind=_CONSUMER, attributes=plan.attributes)
    except RecursionError:
        raise
    except Exception as exc:
        errors.record("run.start", exc)
    try:
        series.record_start()
    except RecursionError:
        pass
    except Exception as exc:
        errors.record("run.start", exc)
    agent._runs[run.key] = run
    return run
