"""Dramatiq: a message lost with its worker more than ``otel-jobs monitor --max-lost`` times is
not run again; its worker fails it into Dramatiq's dead-letter queue.

Dramatiq hands a message whose worker died out again as it was, and its ``Retries`` counts only
runs that raised: a message that kills its worker every time (the poison job) would come back
for ever. With ``--requeue-lost`` the monitor tells the next delivery what it counted
(:mod:`otel_jobs.monitor.lost.dramatiq`): the attempt record, with how many times the job was
lost (``lost``) and its ``--max-lost``, in the message option
:data:`~otel_jobs.core.lease_records.REQUEUE_MARK` (Redis broker), or in Redis for a message
RabbitMQ marks as redelivered (one ``GET``, for those only). At the start of each message
(:func:`lost_too_often`, called by the middleware's ``before_process_message``):

* no mark, not redelivered: nothing more (a dict lookup, no I/O);
* the mark of this very attempt (Dramatiq keeps the attempt number: a later retry of the job
  keeps the mark but not the number): the run counts ``otel_jobs_runs_redelivered_total`` and
  its ``previous_attempt`` is known without I/O;
* ``lost`` above ``max_lost``: the message is not run. It is failed as Dramatiq's ``AgeLimit``
  fails a message (``message.fail()`` and ``SkipMessage``, raised by the middleware: no other
  middleware's ``before_process_message`` runs), so Dramatiq nacks it into the dead-letter
  queue (``<queue>.XQ``; counted in ``otel_jobs_runs_dead_lettered_total``). Its run ends
  ``cancelled`` (a message a middleware failed before the actor ran), its span with
  ``otel_jobs.lost.count`` and ``otel_jobs.lost.action`` ``dead_lettered``, and one WARNING
  is logged. A result backend stores the ``SkipMessage``, whose text says it was lost.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from ..core.lease_records import REQUEUE_MARK

if TYPE_CHECKING:
    from ..core.agent import Agent
    from ..core.run import Run

logger = logging.getLogger("otel_jobs")


def lost_too_often(agent: Agent, run: Run, message: Any) -> str | None:
    """Why ``message`` must not run (its job was lost more than ``--max-lost`` times), or None.
    Also counts a run handed out again after a loss (see the module docstring)."""
    lease = agent.lease
    mark = message.options.get(REQUEUE_MARK)
    # RabbitMQ's proxy holds the flag itself (no AttributeError raised for a Redis message's).
    if mark is None and message.__dict__.get("redelivered"):
        mark = lease.record(run)  # RabbitMQ: one GET, for a message it redelivered only
    if not mark or not lease.requeued(run, mark):
        return None
    agent.telemetry.record_redelivered(run.series)
    try:
        data = json.loads(mark)
        lost, limit = data.get("lost"), data.get("max_lost")
    except (ValueError, TypeError, AttributeError):
        return None
    if not isinstance(lost, int) or not isinstance(limit, int) or lost <= limit:
        return None
    run.span.set_attribute("otel_jobs.lost.count", lost)
    run.span.set_attribute("otel_jobs.lost.action", "dead_lettered")
    logger.warning(
        "otel-jobs: Dramatiq message %s of %s (queue %s) was lost with its worker %d times, more "
        "than otel-jobs monitor --max-lost %d: not run again, moved to the dead-letter queue",
        run.job_id,
        run.name,
        run.queue,
        lost,
        limit,
        extra={"job_name": run.name, "job_id": run.job_id, "job_queue": run.queue},
    )
    return f"lost with its worker {lost} times (otel-jobs monitor --max-lost {limit})"
