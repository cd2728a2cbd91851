"""Dramatiq: a run is lost when its lease expired; its broker always hands it out again.

Dramatiq acknowledges a message after its actor ran: a worker's death leaves it unacknowledged,
and the broker redelivers it (RabbitMQ when the connection closes; the Redis broker once the
worker's heartbeat is older than its ``heartbeat_timeout``, 60 s, at the next maintenance of
any worker). So lost runs are counted, never requeued, and a job that kills its worker every
time is not stopped here, nor by Dramatiq's ``Retries`` (it counts only runs that raised: the
message comes back as it was, for ever); ``AgeLimit`` (``max_age``) bounds it.

Finished after all: on Redis, a message acknowledged is gone from ``<ns>:<queue>.msgs`` (under
the broker's own ``redis_message_id``, which the lease entry carries); a run whose message is no
longer there ended before its worker died. On RabbitMQ nothing can tell.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import _redis
from .detector import Detector, LostRun


class DramatiqDetector(Detector):
    framework = "dramatiq"
    redelivers = True

    def __init__(self, client: Any, broker: Any = None, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.namespace = getattr(broker, "namespace", None) if _is_redis(broker) else None

    def unfinished(self, runs: Sequence[LostRun]) -> list[bool]:
        if self.namespace is None:
            return [True] * len(runs)
        found = _redis.read(
            self.client,
            [
                (
                    "hexists",
                    f"{self.namespace}:{r.queue}.msgs",
                    str(r.entry.get("redis_message_id") or r.job_id or ""),
                )
                for r in runs
            ],
        )
        return [bool(f) for f in found]


def _is_redis(broker: Any) -> bool:
    try:
        from dramatiq.brokers.redis import RedisBroker
    except ImportError:
        return False
    return isinstance(broker, RedisBroker)
