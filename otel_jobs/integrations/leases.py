"""Where the Dramatiq, arq and Huey runs' leases live: their broker's own Redis.

Called as each run starts (:mod:`otel_jobs.core.lease`): a dict store, the pool read later on
the lease thread. Celery and RQ have modules of their own (:mod:`.celery.leases`,
:mod:`.rq_leases`), as their runs also carry what a requeue needs. Dramatiq and arq hand a run
lost with its worker out again by themselves: the lease only lets ``otel-jobs monitor`` count
those runs (and write what they reached for the next attempt's ``previous_attempt``). Huey keeps
no copy of a task once taken: its entry carries the task's message as Huey serializes it (its
retries as they were when the run started), which ``otel-jobs monitor --requeue-lost`` puts back
on the queue as it is. A broker that is not a Redis needs ``OTEL_JOBS_LEASE_URL``.
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..core.agent import Agent
    from ..core.run import Run


def dramatiq_started(agent: Agent, run: Run, broker: Any, message: Any) -> None:
    lease = agent.lease
    if lease.enabled:
        client = getattr(broker, "client", None)  # a RedisBroker's; none for RabbitMQ
        options = message.options
        # The Redis broker keeps a message under an id of its own: whether it was acknowledged
        # (the run finished after all) is read there.
        lease.track(
            run,
            lambda: getattr(client, "connection_pool", None),
            lambda: {"redis_message_id": options.get("redis_message_id")},
        )


def arq_started(agent: Agent, run: Run, worker: Any) -> None:
    lease = agent.lease
    if lease.enabled:
        lease.track(run, lambda: getattr(getattr(worker, "pool", None), "connection_pool", None))


def huey_started(agent: Agent, run: Run, huey: Any, task: Any = None) -> None:
    lease = agent.lease
    if lease.enabled:
        storage = getattr(huey, "storage", None)
        extra: Callable[[], Mapping[str, Any]] | None = None
        if task is not None:
            retries = task.retries  # Huey counts them down once a run failed: as it started
            extra = lambda: {"requeue": _huey_message(huey, task, retries)}  # noqa: E731
        lease.track(run, lambda: getattr(storage, "pool", None), extra)


def _huey_message(huey: Any, task: Any, retries: Any) -> dict[str, Any]:
    """The task's message as Huey would enqueue it, base64 of its serialized bytes (on the lease
    thread, once per run; the running task is not touched: Huey's ``create_message`` takes an
    injected ``task`` keyword out of the kwargs it is given)."""
    shallow = copy.copy(task)
    shallow.kwargs = dict(task.kwargs) if task.kwargs is not None else None
    message = huey._registry.create_message(shallow)._replace(retries=retries)
    data = huey.serializer.serialize(message)
    return {
        "message": base64.b64encode(data).decode("ascii"),
        "priority": task.priority,
        "huey": huey.name,
    }
