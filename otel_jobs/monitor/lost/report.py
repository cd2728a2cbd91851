"""What the monitor says of each lost run: one span ``<job> lost`` (:func:`lost_span`) and one
WARNING record (:func:`log_lost`), both naming the run, its worker, its last checkpoint and what
was done with it (``otel_jobs.lost.action``, ``lost_action``):

* ``counted``: nothing more (no ``--requeue-lost``, or a framework that is not requeued);
* ``broker_redelivers``: its broker hands it out again by itself (counted only);
* ``requeued``, ``requeue_failed``: put back on its queue, or could not be;
* ``dead_lettered``, ``not_requeued``: lost more than ``--max-lost`` times, moved to the
  framework's failed place (or there is none): not requeued again;
* ``dead_letter_on_redelivery``: lost more than ``--max-lost`` times, handed out again by its
  broker: its worker fails the next delivery into the dead-letter queue (Dramatiq).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry import trace

    from .runs import LostRun

logger = logging.getLogger("otel_jobs.monitor")


def lost_span(tracer: trace.Tracer, run: LostRun, action: str, losses: int) -> None:
    """One span ``<job> lost``, from the run's start to its lease's expiry."""
    attrs: dict[str, Any] = {
        "job.name": run.name,
        "job.queue": run.queue,
        "job.attempt": run.attempt,
        "job.framework": run.framework,
        "job.outcome": "lost",
        "otel_jobs.worker.host": run.host,
        "otel_jobs.worker.pid": run.pid,
        "otel_jobs.lease.expired_at": run.expired_at,
        "otel_jobs.lost.action": action,
        "otel_jobs.lost.count": losses,
    }
    if run.job_id is not None:
        attrs["job.id"] = run.job_id
    if run.started is not None:
        attrs["otel_jobs.run.started_at"] = run.started
    progress = run.checkpoint.get("progress")
    if isinstance(progress, (int, float)):
        attrs["job.progress"] = float(progress)
    details = run.checkpoint.get("details")
    if details:
        attrs["otel_jobs.checkpoint.details"] = json.dumps(details, sort_keys=True)
    start = run.started if run.started is not None else run.expired_at
    span = tracer.start_span(
        f"{run.name} lost",
        kind=SpanKind.INTERNAL,
        attributes=attrs,
        start_time=int(start * 1e9),
    )
    span.set_status(Status(StatusCode.ERROR, "lost with its worker"))
    span.end(end_time=int(max(start, run.expired_at) * 1e9))


def log_lost(run: LostRun, action: str, losses: int, now: float, requeues: bool) -> None:
    """One WARNING record naming the run, its worker, when, its checkpoint and the action."""
    progress = run.checkpoint.get("progress")
    details = run.checkpoint.get("details")
    started = f"{now - run.started:.0f}s ago" if run.started is not None else "at an unknown time"
    what = {
        "counted": (
            "counted (--requeue-lost puts such runs back)"
            if requeues
            else f"counted ({run.framework} runs are not requeued)"
        ),
        "broker_redelivers": "not requeued: its broker hands it out again",
        "requeued": "requeued on its queue, same id and arguments",
        "requeue_failed": "could not be requeued (see above)",
        "dead_lettered": f"lost {losses} times: not requeued again, moved to the failed jobs",
        "not_requeued": f"lost {losses} times: not requeued again",
        "dead_letter_on_redelivery": (
            f"lost {losses} times: its broker hands it out again, and its worker then moves it "
            "to the dead-letter queue without running it (--max-lost)"
        ),
    }[action]
    logger.warning(
        "otel-jobs monitor: run %s of %s (queue %s, attempt %d) was lost with its worker %s "
        "pid %d: started %s, its lease expired %.0fs ago%s; %s",
        run.job_id,
        run.name,
        run.queue,
        run.attempt,
        run.host,
        run.pid,
        started,
        max(0.0, now - run.expired_at),
        (
            f", last checkpoint progress={progress} details={json.dumps(details)}"
            if progress is not None or details
            else ""
        ),
        what,
        extra={
            "job_name": run.name,
            "job_id": run.job_id,
            "job_queue": run.queue,
            "job_framework": run.framework,
            "worker_host": run.host,
            "worker_pid": run.pid,
            "lost_action": action,
            "lost_count": losses,
        },
    )
