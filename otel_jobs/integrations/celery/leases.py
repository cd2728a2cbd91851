"""What a Celery run adds to its worker process's lease, and what a requeued one carries.

Called from the ``task_prerun`` receiver (:func:`started`): a dict store for the lease
(:meth:`otel_jobs.core.lease.LeaseKeeper.track`), whose callables run later on the lease
thread, and the redelivery count:

* where the lease lives: the app's broker, when it is a Redis (:func:`broker_redis_url`), else
  ``OTEL_JOBS_LEASE_URL`` only;
* ``redelivers``: the task acknowledges late (``acks_late``): its broker hands it out again
  when the worker dies (RabbitMQ at once, Redis after the visibility timeout), so a monitor
  only counts it;
* ``requeue``: what ``otel-jobs monitor --requeue-lost`` publishes again when the broker does
  not redeliver (early acknowledgement: the message is gone once delivered): the task's name,
  id, arguments (kombu's JSON, which keeps dates, UUIDs and decimals), retries and queue.
  Arguments JSON cannot hold (a pickled object) leave the run watched but not requeueable;
* ``otel_jobs_runs_redelivered_total``: a message redelivered by its broker
  (``delivery_info["redelivered"]``) or requeued by the monitor (its
  :data:`~otel_jobs.core.lease.REQUEUE_MARK` header, whose attempt the run's
  ``previous_attempt`` returns without a round trip).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ...core.lease import REQUEUE_MARK

if TYPE_CHECKING:
    from ...core.agent import Agent
    from ...core.run import Run


def broker_redis_url(app: Any) -> str | None:
    """The app's broker URL if its broker is a Redis (the first of a failover list), else None."""
    conf = app.conf
    url = conf.get("broker_write_url") or conf.get("broker_url")
    if isinstance(url, (list, tuple)):
        url = url[0] if url else None
    if not isinstance(url, str):
        return None
    url = url.split(";")[0].strip()
    return url if url.startswith(("redis://", "rediss://")) else None


def started(agent: Agent, run: Run, task: Any, request: Any) -> None:
    """The run's lease entry (computed later, on the lease thread) and its redelivery."""
    lease = agent.lease
    if lease.enabled:
        app = task.app
        lease.track(run, lambda: broker_redis_url(app), lambda: _extra(task, request, run))
    delivery = getattr(request, "delivery_info", None) or {}
    if lease.requeued(run, getattr(request, REQUEUE_MARK, None)) or (
        isinstance(delivery, dict) and delivery.get("redelivered")
    ):
        agent.telemetry.record_redelivered(run.series)


def _extra(task: Any, request: Any, run: Run) -> dict[str, Any]:
    if getattr(task, "acks_late", False):
        return {"redelivers": True}
    from kombu.utils.json import dumps

    try:
        body: str | None = dumps([list(request.args or ()), dict(request.kwargs or {})])
    except (TypeError, ValueError):
        body = None
    delivery = getattr(request, "delivery_info", None) or {}
    return {
        "redelivers": False,
        "requeue": {
            "task": task.name,
            "body": body,
            "retries": int(getattr(request, "retries", 0) or 0),
            "queue": run.queue,
            "exchange": delivery.get("exchange") if isinstance(delivery, dict) else None,
            "routing_key": delivery.get("routing_key") if isinstance(delivery, dict) else None,
        },
    }
