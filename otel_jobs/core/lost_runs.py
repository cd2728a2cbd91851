"""The end of a run whose process died before finishing it (killed, OOM), recorded by the process
that saw it die: RQ's worker for its work horse, a Celery pool for its child.

:func:`record_lost_run` is bound as :meth:`Agent.record_lost_run <otel_jobs.core.agent.Agent>`.
It counts the outcome at once and emits the run's span (now, or, when the dying process may have
exported the run's one span itself, once the agent's deferred thread knows: :mod:`.deferred`).
It never counts a start the dead process's snapshot already holds.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind

from .forked_runs import RunIdentity, run_attributes
from .spans import record_outcome

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .agent import Agent


def record_lost_run(
    agent: Agent,
    name: str,
    *,
    started_at: float | None = None,
    outcome: str = "failure",
    exc: BaseException | None = None,
    parent: otel_context.Context | None = None,
    native_max_duration: float | None = None,
    span_exported_elsewhere: Callable[[bool], bool | float] | None = None,
    count_start: bool = False,
    **run: Unpack[RunIdentity],
) -> None:
    """Record the end of a run whose process died before finishing it (killed, OOM).

    Called by the process that saw it die (RQ's worker for its work horse, a pool for its
    child), with the run's ``queue``, ``job_id``, ``attempt`` and ``framework``
    (:class:`~otel_jobs.core.forked_runs.RunIdentity`). Counts the outcome and the duration
    (from ``started_at``, Unix time) and emits the run's span, but no start: the dead process counted that, and its last snapshot
    keeps it on ``/metrics``, while its in-flight gauges vanished with it. ``parent``: the
    trace context the run was published with, so that its span stays in that trace.
    ``native_max_duration``: the framework's limit for the run, so that the thresholds this
    process exports for the job are the ones the dead process had in force.
    ``span_exported_elsewhere``: the run's one span may be another's, which the dying process ends on
    its way out (an adopted span of another instrumentation). The outcome is counted now;
    the span waits: ``span_exported_elsewhere(final)`` is called on the agent's deferred thread and
    returns True when the dying process's span was exported (no span here), False when it
    was not (this process emits the run's span, ended at the time of this call), or the
    seconds after which to ask again. ``final``: the agent is stopping, decide now.
    ``count_start``: the dead process's snapshot does not hold the run's start (it started
    after that process's last snapshot): count it here too.
    """
    now = time.time()
    seconds = max(0.0, now - started_at) if started_at is not None else 0.0
    series = agent.series_for(name, run.get("queue"), native_max_duration)
    if count_start:
        series.record_start()
    series.record_finish(outcome, seconds)
    if agent.pusher is not None:
        agent.pusher.run_finished(series.job_name)
    emit = functools.partial(
        _lost_run_span, agent, name, run, started_at, now, outcome, exc, parent
    )
    if span_exported_elsewhere is None:
        emit()
    else:

        def check(final: bool) -> float | None:
            answer = span_exported_elsewhere(final)
            if answer is True:
                return None
            if answer is False or final:
                emit()
                return None
            return float(answer)

        agent.deferred.call_later(0.0, check)
    agent.write_snapshot()


def _lost_run_span(
    agent: Agent,
    name: str,
    run: RunIdentity,
    started_at: float | None,
    now: float,
    outcome: str,
    exc: BaseException | None,
    parent: otel_context.Context | None,
) -> None:
    start_ns = int((started_at if started_at is not None else now) * 1e9)
    attrs = run_attributes(name, run)
    attrs["job.outcome"] = outcome
    span = agent.tracer.start_span(
        name, context=parent, kind=SpanKind.CONSUMER, attributes=attrs, start_time=start_ns
    )
    try:
        if span.is_recording():
            record_outcome(span, outcome, exc)
    finally:
        span.end()
