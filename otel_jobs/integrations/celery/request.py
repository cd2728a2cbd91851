"""Reading one execution's request and message: queue, due time, time limits, trace context.

Pure functions of Celery's objects; nothing here records anything. ``native_limit`` is on every
run's start, hence its cache.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

FRAMEWORK = "celery"
#: Message header stamped by the publisher: its ``time.time()`` at publish.
PUBLISHED_HEADER = "otel_jobs_published_at"


def queue_of(delivery_info: Any) -> str | None:
    """The queue a message was delivered from (its routing key, else its queue)."""
    if isinstance(delivery_info, dict):
        return delivery_info.get("routing_key") or delivery_info.get("queue") or None
    return None


def number(value: Any) -> float | None:
    """``value`` as a positive finite number; None otherwise."""
    try:
        found = float(value)
    except (TypeError, ValueError):
        return None
    return found if found > 0 and not math.isinf(found) else None


def _unix_time(eta: Any) -> float | None:
    if eta is None:
        return None
    if isinstance(eta, (int, float)):
        return float(eta)
    if isinstance(eta, str):
        try:
            eta = _dt.datetime.fromisoformat(eta)
        except ValueError:
            return None
    if isinstance(eta, _dt.datetime):
        if eta.tzinfo is None:  # Celery sends aware ETAs; a naive one is taken as UTC
            eta = eta.replace(tzinfo=_dt.timezone.utc)
        return eta.timestamp()
    return None


def due_time(request: Any) -> float | None:
    """When the message became due: its ETA if later than its publish time, else the publish time."""
    published = number(getattr(request, PUBLISHED_HEADER, None))
    if published is None:
        return None
    eta = _unix_time(getattr(request, "eta", None))
    return max(published, eta) if eta is not None else published


_native_limits: dict[tuple[str, Any, Any], float | None] = {}


def native_limit(task: Any, timelimit: Any) -> float | None:
    """The smaller of the hard and soft time limits in force for one execution (per call, task,
    app); None: no limit. Cached per task and per-call limits: reading the app's configuration
    costs more than the rest of a run's start."""
    hard, soft = (
        tuple(timelimit or (None, None)) if isinstance(timelimit, (list, tuple)) else (None, None)
    )
    key = (task.name, hard, soft)
    try:
        return _native_limits[key]
    except KeyError:
        pass
    conf = task.app.conf
    candidates = (
        hard or getattr(task, "time_limit", None) or conf.get("task_time_limit"),
        soft or getattr(task, "soft_time_limit", None) or conf.get("task_soft_time_limit"),
    )
    limits = [n for n in (number(c) for c in candidates) if n is not None]
    found = min(limits) if limits else None
    if len(_native_limits) < 10_000:  # per-call limits are few; never grow without bound
        _native_limits[key] = found
    return found


def hard_limit(task: Any, timelimit: Any) -> float | None:
    """The hard time limit in force for one execution (per call, task, app); None: none."""
    hard = timelimit[0] if isinstance(timelimit, (list, tuple)) and timelimit else None
    if task is None:
        return number(hard)
    return number(hard or getattr(task, "time_limit", None) or task.app.conf.get("task_time_limit"))


class _RequestGetter:
    """Reads propagation headers from a task's request (headers become request attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


#: For ``propagate.extract(request, getter=getter)``.
getter = _RequestGetter()


def outcome_of(exc: BaseException | None) -> str:
    """The run outcome for the exception a task ended with (None: success)."""
    from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded

    if exc is None:
        return "success"
    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):
        return "timeout"
    if isinstance(exc, Retry):
        return "retry"
    if isinstance(exc, Reject):
        return "retry" if exc.requeue else "cancelled"
    from ...core.run import classify

    return classify(exc)
