"""Where the Dramatiq, arq and Huey runs' leases live: their broker's own Redis.

Called as each run starts (:mod:`otel_jobs.core.lease`): a dict store, the pool read later on
the lease thread. Celery and RQ have modules of their own (:mod:`.celery.leases`,
:mod:`.rq_leases`), as their runs also carry what a requeue needs. Dramatiq and arq hand a run
lost with its worker out again by themselves, and Huey keeps no copy of a task once taken: the
lease only lets ``otel-jobs monitor`` count those runs (and write what they reached for the next
attempt's ``previous_attempt``). A broker that is not a Redis needs ``OTEL_JOBS_LEASE_URL``.
"""

from __future__ import annotations

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


def huey_started(agent: Agent, run: Run, huey: Any) -> None:
    lease = agent.lease
    if lease.enabled:
        storage = getattr(huey, "storage", None)
        lease.track(run, lambda: getattr(storage, "pool", None))
