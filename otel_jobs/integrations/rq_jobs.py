"""What the RQ integration reads of an RQ job and worker: the run's name, queue, attempt, time
limit and queue wait, and whether the worker forks its horses (:mod:`otel_jobs.integrations.rq`,
:mod:`.rq_watch`)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from . import rq_audit

#: The job name of a run whose job data cannot be deserialized (RQ fails such a job).
UNREADABLE = "<unreadable>"


def job_name(job: Any) -> str:
    """``job.func_name``, or :data:`UNREADABLE` when RQ cannot deserialize the job's data."""
    try:
        name = job.func_name
    except Exception:  # rq.exceptions.DeserializationError, or whatever a serializer raises
        return UNREADABLE
    return str(name) if name else UNREADABLE


def queue_of(job: Any, queue: Any) -> str:
    """The queue the job was enqueued on (``job.origin``), else the one it was taken from."""
    return job.origin or getattr(queue, "name", None) or "default"


def attempt(job: Any) -> int:
    """1 + the retries RQ counted (a job that returned ``Retry``)."""
    return (getattr(job, "number_of_retries", None) or 0) + 1


def is_spawn_worker(worker: Any) -> bool:
    """Whether ``worker`` starts each horse as a new interpreter (RQ's ``SpawnWorker``)."""
    try:
        from rq.worker import SpawnWorker
    except ImportError:
        return False
    return isinstance(worker, SpawnWorker)


def time_limit(job: Any, worker: Any) -> float | None:
    """The time limit RQ enforces on the job (as in ``perform_job``); None for none."""
    timeout = job.timeout or getattr(worker.queue_class, "DEFAULT_TIMEOUT", None)
    if timeout is None or rq_audit.no_time_limit(timeout):
        return None
    return float(timeout)


def unix_time(moment: datetime | None) -> float | None:
    """A time RQ stored (naive: UTC) as Unix time."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # RQ stores UTC
    return moment.timestamp()
