"""The Celery configuration audit: known queue mistakes in an app's configuration and tasks.

Run at the worker's start (``worker_init``) and by ``otel-jobs doctor --celery-app``. Reads the
app only: starts nothing and connects to nothing. Each finding's id is a stable label value of
``otel_jobs_config_finding``; the docs list them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..base import Finding
from .request import FRAMEWORK, number

_VISIBILITY_BROKERS = ("redis", "rediss", "sqs", "redis+socket")
_DEFAULT_VISIBILITY_TIMEOUT = 3600.0


def _user_tasks(app: Any) -> list[Any]:
    return [t for name, t in sorted(app.tasks.items()) if not name.startswith("celery.")]


def _names(tasks: Iterable[Any], limit: int = 5) -> str:
    names = [t.name for t in tasks]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _hard_soft(task: Any, conf: Any) -> tuple[float | None, float | None]:
    hard = number(getattr(task, "time_limit", None) or conf.get("task_time_limit"))
    soft = number(getattr(task, "soft_time_limit", None) or conf.get("task_soft_time_limit"))
    return hard, soft


def _soft_above_hard(task: Any, conf: Any) -> bool:
    hard, soft = _hard_soft(task, conf)
    return hard is not None and soft is not None and soft > hard


def _task_limit(task: Any, conf: Any) -> float | None:
    """The longest a task may run; None: forever."""
    hard, soft = _hard_soft(task, conf)
    if hard is not None and soft is not None:
        return max(hard, soft)  # the prefork pool arms the hard limit when the soft one fires
    return hard or soft


def _acks_late(task: Any, conf: Any) -> bool:
    value = getattr(task, "acks_late", None)
    return bool(conf.get("task_acks_late") if value is None else value)


def _rejects_on_worker_lost(task: Any, conf: Any) -> bool:
    value = getattr(task, "reject_on_worker_lost", None)
    return bool(conf.get("task_reject_on_worker_lost") if value is None else value)


def _calls_retry(task: Any) -> bool:
    code = getattr(getattr(task, "run", None), "__code__", None)
    return code is not None and "retry" in code.co_names


def _queue_name(app: Any, task: Any) -> str:
    queue = getattr(task, "queue", None)
    if queue:
        return str(getattr(queue, "name", queue))
    try:
        routed = app.amqp.router.route({}, task.name, (), {})
        routed_queue = routed.get("queue")
        return str(getattr(routed_queue, "name", routed_queue))
    except Exception:  # a router that needs real arguments: fall back to the default queue
        return str(app.conf.get("task_default_queue") or "celery")


def _has_dead_letter(app: Any, queue: str) -> bool:
    queues = app.conf.get("task_queues") or ()
    for q in queues:
        if getattr(q, "name", None) == queue:
            arguments = getattr(q, "queue_arguments", None) or {}
            return "x-dead-letter-exchange" in arguments
    return False


def audit(app: Any) -> list[Finding]:
    """Check a Celery app's configuration and its registered tasks for known queue mistakes.

    >>> from otel_jobs.integrations.celery import audit
    >>> from proj.celery import app
    >>> for finding in audit(app):
    ...     print(finding.finding, finding.message)

    Imports the app's task modules (``include`` / ``imports``) the way a worker does (an
    import error propagates: the tasks could not be checked); starts nothing and connects to
    nothing.
    """
    app.loader.import_default_modules()
    conf = app.conf
    tasks = _user_tasks(app)
    findings: list[Finding] = []
    if not tasks:
        return findings

    unlimited = [t for t in tasks if _task_limit(t, conf) is None]
    if unlimited:
        findings.append(
            Finding(
                FRAMEWORK,
                "no_time_limit",
                f"{len(unlimited)} task(s) have no time limit and can run forever: "
                f"{_names(unlimited)}. Set task_time_limit / task_soft_time_limit in the app "
                "configuration, or time_limit= / soft_time_limit= on the task.",
            )
        )

    broker = str(conf.get("broker_url") or "")
    scheme = broker.split("://", 1)[0].lower() if "://" in broker else ""
    if scheme in _VISIBILITY_BROKERS:
        options = conf.get("broker_transport_options") or {}
        visibility = number(options.get("visibility_timeout")) or _DEFAULT_VISIBILITY_TIMEOUT
        too_long = [
            t for t in tasks if (limit := _task_limit(t, conf)) is not None and limit > visibility
        ]
        if too_long:
            findings.append(
                Finding(
                    FRAMEWORK,
                    "time_limit_exceeds_visibility_timeout",
                    f"task(s) {_names(too_long)} may run longer than the broker's visibility "
                    f"timeout ({visibility:g}s): their unacknowledged message is delivered again "
                    "while they run, so the task runs twice. Raise "
                    "broker_transport_options['visibility_timeout'] above the longest time limit, "
                    "or lower the time limit.",
                )
            )

    inverted = [t for t in tasks if _soft_above_hard(t, conf)]
    if inverted:
        findings.append(
            Finding(
                FRAMEWORK,
                "soft_time_limit_above_time_limit",
                f"task(s) {_names(inverted)} have a soft time limit above their hard one (often "
                "an app-wide task_soft_time_limit over a task's time_limit): the prefork pool arms "
                "the hard limit only when the soft one fires, so they run until the soft limit. "
                "Keep soft_time_limit below time_limit.",
            )
        )

    late_unlimited = [t for t in tasks if _acks_late(t, conf) and _task_limit(t, conf) is None]
    if late_unlimited:
        findings.append(
            Finding(
                FRAMEWORK,
                "late_ack_without_time_limit",
                f"task(s) {_names(late_unlimited)} acknowledge late (acks_late) but have no time "
                "limit: a hung run holds its message forever (on Redis or SQS it is delivered "
                "again to another worker after the visibility timeout). Give them a time limit.",
            )
        )

    late_dropped = [
        t for t in tasks if _acks_late(t, conf) and not _rejects_on_worker_lost(t, conf)
    ]
    if late_dropped:
        findings.append(
            Finding(
                FRAMEWORK,
                "late_ack_without_reject_on_worker_lost",
                f"task(s) {_names(late_dropped)} acknowledge late (acks_late) without "
                "task_reject_on_worker_lost: when the pool child running one dies (OOM, kill) "
                "and its worker lives on, the message is acknowledged as failed "
                "(WorkerLostError) and never redelivered, the very loss acks_late is meant to "
                "prevent (and otel-jobs monitor leaves acks_late tasks to the broker, it does "
                "not requeue them). Set task_reject_on_worker_lost=True, and make the task "
                "idempotent.",
            )
        )

    no_path = [
        t
        for t in tasks
        if not getattr(t, "autoretry_for", None)
        and not _calls_retry(t)
        and not _has_dead_letter(app, _queue_name(app, t))
    ]
    if no_path:
        findings.append(
            Finding(
                FRAMEWORK,
                "no_retry_or_dead_letter",
                f"task(s) {_names(no_path)} neither retry (autoretry_for=, self.retry()) nor go "
                "to a queue with a dead-letter exchange (x-dead-letter-exchange): a failed or "
                "lost run is simply gone. Add autoretry_for=(...) with retry_backoff, or a "
                "dead-letter queue.",
            )
        )

    queues = {_queue_name(app, t) for t in tasks}
    if len(tasks) > 1 and len(queues) == 1:
        findings.append(
            Finding(
                FRAMEWORK,
                "single_queue",
                f"all {len(tasks)} tasks go to one queue ({next(iter(queues))}): a slow or stuck "
                "task delays every other one. Route slow or bulk tasks to their own queue "
                "(task_routes, or queue= on the task) and run workers per queue.",
            )
        )
    return findings
