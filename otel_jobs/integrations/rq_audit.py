"""The RQ configuration audit: known queue mistakes found in Redis, at a worker's start and by
``otel-jobs doctor --rq-redis-url URL`` (:func:`audit`).

When the worker starts, and with ``otel-jobs doctor --rq-redis-url URL`` (:func:`audit`), the
queues and the jobs waiting, scheduled or running in Redis are checked for known mistakes; each
finding is logged once (WARNING) and set in ``otel_jobs_config_finding{framework="rq", finding}``.
The worker reads the queues of its own queue class (``--queue-class``, a ``Queue`` subclass with
a key prefix of its own) and the doctor those of ``rq.Queue``; the keys of other queue classes
in the shared ``rq:queues`` set are skipped, not an error:

* ``no_time_limit``: jobs enqueued with ``job_timeout=-1`` (or a queue ``default_timeout=-1``):
  RQ never stops them, so a hung call holds the worker for good;
* ``no_retry_or_dead_letter``: jobs without a ``Retry`` whose failures are forgotten within a
  day (``failure_ttl``), or a worker started with ``--disable-default-exception-handler`` and no
  handler of its own: a failed job leaves no trace to requeue;
* ``single_queue``: one queue for everything: one slow or stuck kind of job delays all others.

The broker-side checks of other frameworks (a time limit beyond a visibility timeout, late
acknowledgement) do not apply to RQ: a job is moved to the ``StartedJobRegistry`` when it starts
and to the ``FailedJobRegistry`` when its worker is lost; it is never run twice by redelivery.
Read-only: nothing is dequeued, cleaned up or changed; at most :data:`AUDIT_SAMPLE` jobs of a
queue or registry are read.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from .base import Finding

FRAMEWORK = "rq"
#: Jobs sampled per queue and registry by the audit (the audit only reads).
AUDIT_SAMPLE = 200
#: Failures kept for less than this (``failure_ttl``, seconds) count as forgotten.
MIN_FAILURE_TTL = 86400


def audit(redis_url: str) -> list[Finding]:
    """Check the RQ queues and jobs stored in the Redis at ``redis_url`` for known mistakes.

    >>> for finding in audit("redis://127.0.0.1:6379/0"):
    ...     print(finding.finding, finding.message)

    Read-only: nothing is dequeued, cleaned up or changed. See the module docstring for the
    findings. Raises ``redis.exceptions.ConnectionError`` when Redis cannot be reached.
    """
    from redis import Redis

    connection = Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        return audit_connection(connection)
    finally:
        connection.close()


def audit_connection(connection: Any, worker: Any = None) -> list[Finding]:
    from rq.job import Job
    from rq.queue import Queue

    # The worker's own classes: a Queue subclass keeps its queues under a key prefix of its own
    # (and a Job subclass its jobs), in the same rq:queues set as every other class's.
    queue_class = getattr(worker, "queue_class", None) or Queue
    job_class = getattr(worker, "job_class", None) or Job
    queues: dict[str, Any] = {
        q.name: q
        for q in _registered_queues(
            connection, queue_class, job_class, getattr(worker, "serializer", None)
        )
    }
    if worker is not None:
        for q in worker.queues:
            queues.setdefault(q.name, q)

    job_ids: list[str] = []
    for q in queues.values():
        job_ids.extend(q.get_job_ids(0, AUDIT_SAMPLE))
        for registry in (q.scheduled_job_registry, q.started_job_registry, q.deferred_job_registry):
            job_ids.extend(_registry_ids(registry))
    fields = ("timeout", "retries_left", "failure_ttl", "description")
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(job_class.key_for(job_id), fields)
        rows = pipe.execute() if job_ids else []

    no_limit: list[str] = []
    forgotten: list[str] = []
    for job_id, row in zip(job_ids, rows, strict=True):
        timeout, retries_left, failure_ttl, description = (_text(v) for v in row)
        label = description or job_id
        if timeout is not None and no_time_limit(timeout):
            no_limit.append(label)
        if not _int(retries_left) and failure_ttl is not None:
            ttl = _int(failure_ttl)
            if ttl is not None and 0 <= ttl < MIN_FAILURE_TTL:
                forgotten.append(f"{label} (failure_ttl={ttl})")

    findings: list[Finding] = []
    if no_limit:
        findings.append(no_time_limit_finding(no_limit))
    dead_letter_off = (
        worker is not None
        and getattr(worker, "disable_default_exception_handler", False)
        and not getattr(worker, "_exc_handlers", None)
    )
    if forgotten or dead_letter_off:
        reasons = []
        if forgotten:
            reasons.append(
                f"{len(forgotten)} job(s) without a Retry keep their failure for less than a day "
                f"({_examples(forgotten)})"
            )
        if dead_letter_off:
            reasons.append(
                "this worker runs with --disable-default-exception-handler and no exception "
                "handler of its own, so failed jobs are not kept in the FailedJobRegistry"
            )
        findings.append(
            Finding(
                FRAMEWORK,
                "no_retry_or_dead_letter",
                "no retry or dead-letter path: "
                + "; ".join(reasons)
                + ". A failed job leaves no trace to requeue. Fix: enqueue with "
                "retry=Retry(max=3, interval=[10, 60, 300]) and keep failures "
                "(failure_ttl of days, the default is a year) so they can be requeued from the "
                "FailedJobRegistry.",
            )
        )
    if len(queues) == 1:
        (only,) = queues
        findings.append(
            Finding(
                FRAMEWORK,
                "single_queue",
                f"a single queue ({only!r}) for everything: one slow or stuck kind of job delays "
                "every other. Fix: give long and short jobs their own queues (enqueue to "
                "Queue('slow'), Queue('fast')) and their own workers (`rq worker fast`).",
            )
        )
    return findings


def no_time_limit_finding(examples: list[str]) -> Finding:
    return Finding(
        FRAMEWORK,
        "no_time_limit",
        f"no execution time limit: job(s) enqueued with job_timeout=-1 ({_examples(examples)}). "
        "RQ never stops them, so a call that hangs holds the worker for good. Fix: give every "
        "job a timeout (Queue(default_timeout=600), or enqueue(..., job_timeout=60)) longer "
        "than its slowest normal run.",
    )


# --- helpers ----------------------------------------------------------------------------


def _registered_queues(
    connection: Any, queue_class: Any, job_class: Any, serializer: Any
) -> list[Any]:
    """The queues of ``queue_class`` in its ``rq:queues`` set (RQ's ``Queue.all``), skipping
    the keys of other queue classes, which ``Queue.all`` refuses with a ValueError."""
    found = []
    for key in connection.smembers(queue_class.redis_queues_keys):
        text = _text(key)
        if not text or not text.startswith(queue_class.redis_queue_namespace_prefix):
            continue
        found.append(
            queue_class.from_queue_key(
                text, connection=connection, job_class=job_class, serializer=serializer
            )
        )
    return found


def _registry_ids(registry: Any) -> list[str]:
    """Job ids of a registry, without the clean-up that ``get_job_ids`` does by default."""
    try:
        ids: list[str] = registry.get_job_ids(0, AUDIT_SAMPLE - 1, cleanup=False)
        return ids
    except TypeError:  # RQ before 2.0 always cleans up: read the sorted set itself
        return [
            _text(i) or "" for i in registry.connection.zrange(registry.key, 0, AUDIT_SAMPLE - 1)
        ]


def no_time_limit(timeout: Any) -> bool:
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        return False
    return value < 0 or math.isinf(value)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _examples(items: Iterable[str], limit: int = 3) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
