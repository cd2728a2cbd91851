"""What a lease and an attempt record hold in Redis, and the bounded Redis client that writes and
reads them: shared by the worker side (:mod:`otel_jobs.core.lease`) and ``otel-jobs monitor``
(:mod:`otel_jobs.monitor.lost`). The keys and fields are described in the lease module's
docstring; nothing here does I/O except through :func:`redis_client`'s client, whose calls time
out and are never retried.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

    from .run import Run

KEY_LEASES = "otel_jobs:leases"
KEY_LEASE = "otel_jobs:lease:"
KEY_ATTEMPT = "otel_jobs:attempt:"
#: The message header (Celery), job meta key (RQ) or message option a requeued job carries its
#: previous attempt in (the attempt record's JSON): its run reads it without a round trip.
REQUEUE_MARK = "otel_jobs_previous_attempt"
WORKER_FIELD = "worker"
RUN_FIELD = "run:"
#: How long a lease's content is kept after its last renewal (a monitor down for a day still
#: finds what a dead worker had in flight); also how long the monitor keeps an attempt record.
KEEP_SECONDS = 86400
#: The most JSON a run's checkpoint details may take in the lease (and the lost span, the log
#: record and ``previous_attempt``); beyond it the details are left out, the progress kept.
MAX_CHECKPOINT_BYTES = 2048
#: The most JSON an integration's requeue data (a Celery message) may take; beyond it the run
#: is still watched, but a monitor cannot put it back.
MAX_REQUEUE_BYTES = 65536
#: Socket timeouts of the lease's Redis client (seconds), and the most a release waits at exit.
SOCKET_TIMEOUT = 1.0
RELEASE_TIMEOUT = 0.5

#: Frameworks whose broker hands a lost run out again with nothing on the message to say so, and
#: the attempt number such a run has relative to the lost one (Dramatiq: the same; arq and RQ's
#: own retry of an abandoned job: one more; Huey: the same, its message requeued by the monitor
#: as it was, with no header to carry a mark). Their runs are checked against the monitor's
#: attempt record as they are first written to the lease (in the same round trip).
REDELIVERY_CHECK = {"dramatiq": 0, "arq": 1, "rq": 1, "huey": 0}


@dataclass(frozen=True)
class PreviousAttempt:
    """What the last lost attempt of this job reached, as its worker's lease last said.

    ``progress`` and ``details``: its last ``heartbeat(progress, **details)`` (``details`` is
    empty if it gave none, or if they were over :data:`MAX_CHECKPOINT_BYTES`); ``at``: when that
    checkpoint was written to the lease (Unix time); ``host``, ``pid``: the worker process it
    ran in; ``lost``: how many times this job was lost so far; ``expired_at``: when that
    worker's lease expired (Unix time, the Redis server's clock).
    """

    progress: float | None
    details: Mapping[str, Any] = field(default_factory=dict)
    at: float | None = None
    host: str = ""
    pid: int = 0
    lost: int = 1
    expired_at: float | None = None
    #: The attempt number of the lost run (a requeued run keeps it: the same number is the
    #: requeued run itself, a higher one a later retry).
    attempt: int | None = None

    @property
    def worker(self) -> str:
        """``host:pid`` of the worker process the attempt was lost with."""
        return f"{self.host}:{self.pid}"

    @classmethod
    def from_json(cls, text: str | bytes) -> PreviousAttempt | None:
        """Read an attempt record (``None`` for anything that is not one)."""
        try:
            data = json.loads(text)
            progress = data.get("progress")
            details = data.get("details") or {}
            return cls(
                progress=float(progress) if isinstance(progress, (int, float)) else None,
                details=dict(details) if isinstance(details, dict) else {},
                at=json_number(data.get("at")),
                host=str(data.get("host") or ""),
                pid=int(data.get("pid") or 0),
                lost=int(data.get("lost") or 1),
                expired_at=json_number(data.get("expired_at")),
                attempt=int(data["attempt"]) if isinstance(data.get("attempt"), int) else None,
            )
        except (ValueError, TypeError, AttributeError):
            return None


def json_number(value: Any) -> float | None:
    """A number read from a lease entry or an attempt record (JSON) as a float; None for
    anything else (a bool included)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def checkpoint(run: Run) -> dict[str, Any]:
    """The run's checkpoint as the lease writes it: progress, details (bounded), when."""
    from .run import wall_time_of

    entry: dict[str, Any] = {
        "progress": run.progress,
        "at": round(wall_time_of(run.last_beat, time.monotonic(), time.time()), 3),
    }
    details = run.details
    if details:
        text = json.dumps(details, default=repr, separators=(",", ":"))
        if len(text.encode("utf-8", "replace")) <= MAX_CHECKPOINT_BYTES:
            entry["details"] = json.loads(text)
        else:
            entry["details_left_out"] = len(text)
    return entry


def run_entry(run: Run, host: str, pid: int, extra: Mapping[str, Any]) -> str:
    """A run's field in its worker's lease (JSON): who, what, since when, its checkpoint and the
    integration's ``extra`` (:func:`bounded_extra`)."""
    entry: dict[str, Any] = {
        "framework": run.framework,
        "job_id": run.job_id,
        "name": run.name,
        "queue": run.queue,
        "attempt": run.attempt,
        "started": round(run.start_wall, 3),
        "host": host,
        "pid": pid,
        "checkpoint": checkpoint(run),
        **extra,
    }
    return json.dumps(entry, default=repr, separators=(",", ":"))


def bounded_extra(extra: dict[str, Any]) -> dict[str, Any]:
    """An integration's extra fields with requeue data over :data:`MAX_REQUEUE_BYTES` left out
    (the run is still watched; a monitor cannot put it back)."""
    requeue = extra.get("requeue")
    if requeue is not None:
        size = len(json.dumps(requeue, default=repr))
        if size > MAX_REQUEUE_BYTES:
            extra["requeue"] = None
            extra["requeue_left_out"] = size
    return extra


def redis_client(source: Any, timeout: float = SOCKET_TIMEOUT) -> redis.Redis:
    """A client for ``source`` (a URL, or a pool to copy the address and credentials of) whose
    every call gives up after ``timeout`` seconds and is never retried."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    bounded: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry_on_timeout": False,
        "retry": Retry(NoBackoff(), 0),
        "health_check_interval": 0,
    }
    if isinstance(source, str):
        return redis.Redis.from_url(source, **bounded)
    kwargs = dict(getattr(source, "connection_kwargs", {}) or {})
    for key in ("retry", "retry_on_timeout", "socket_timeout", "socket_connect_timeout"):
        kwargs.pop(key, None)
    kwargs.update(bounded)
    kind = getattr(source, "connection_class", redis.Connection)
    if kind.__module__.startswith("redis.asyncio"):  # arq's pool: the same address, in sync
        kind = getattr(redis, kind.__name__, redis.Connection)
    pool = redis.ConnectionPool(connection_class=kind, **kwargs)
    return redis.Redis(connection_pool=pool)


def describe(source: Any) -> str:
    """Where ``source`` points, without credentials (for the log)."""
    if isinstance(source, str):
        from urllib.parse import urlsplit

        parts = urlsplit(source)
        return f"{parts.scheme}://{parts.hostname or ''}{':' if parts.port else ''}{parts.port or ''}{parts.path}"
    kw = getattr(source, "connection_kwargs", {}) or {}
    if kw.get("path"):
        return f"unix://{kw['path']}?db={kw.get('db', 0)}"
    return f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
