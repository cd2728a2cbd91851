"""Dramatiq: a run is lost when its lease expired; its broker always hands it out again.

Dramatiq acknowledges a message after its actor ran: a worker's death leaves it unacknowledged,
and the broker redelivers it (RabbitMQ when the connection closes; the Redis broker once the
worker's heartbeat is older than its ``heartbeat_timeout``, 60 s, at the next maintenance of
any worker). So lost runs are counted, never requeued. Dramatiq's ``Retries`` counts only runs
that raised: a message that kills its worker every time would come back as it was, for ever.
With ``requeue`` (``--requeue-lost``), the next delivery is told how many times the job was lost
and ``max_lost`` (:meth:`DramatiqDetector.tell_next_delivery`), and the worker's middleware fails
a job lost more than ``max_lost`` times into Dramatiq's dead-letter queue without running it
(:mod:`otel_jobs.integrations.dramatiq_lost`):

* Redis broker: the attempt record (with ``max_lost``) is written into the message itself, in
  ``<ns>:<queue>.msgs``, as the option :data:`~otel_jobs.core.lease_records.REQUEUE_MARK`
  (decoded and encoded again with Dramatiq's encoder; replaced only if the message is still the
  one read, by one script): its next delivery reads it without a round trip. A delivery that
  was handed out before the monitor counted the loss (a ``heartbeat_timeout`` shorter than the
  lease TTL plus one poll) runs, and the count catches up at its own loss;
* RabbitMQ: a message cannot be changed in the broker, which hands it out again at once;
  the worker reads the attempt record (one ``GET``) for a message RabbitMQ marks as redelivered
  only, and so sees the losses the monitor counted by then.

Finished after all: on Redis, a message acknowledged is gone from ``<ns>:<queue>.msgs`` (under
the broker's own ``redis_message_id``, which the lease entry carries); a run whose message is no
longer there ended before its worker died. On RabbitMQ nothing can tell.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ...core.lease import REQUEUE_MARK
from .. import _redis
from .detector import Detector, LostRun, logger

# KEYS: the queue's messages. ARGV: the message's id, its data as read, its data marked.
_MARK = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


class DramatiqDetector(Detector):
    framework = "dramatiq"
    redelivers = True

    def __init__(self, client: Any, broker: Any = None, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.namespace = getattr(broker, "namespace", None) if _is_redis(broker) else None
        self.rabbitmq = _is_rabbitmq(broker)

    def unfinished(self, runs: Sequence[LostRun]) -> list[bool]:
        if self.namespace is None:
            return [True] * len(runs)
        found = _redis.read(
            self.client,
            [("hexists", f"{self.namespace}:{r.queue}.msgs", _message_key(r)) for r in runs],
        )
        return [bool(f) for f in found]

    def tell_next_delivery(self, run: LostRun, attempt: Mapping[str, Any]) -> bool:
        if self.namespace is None:
            return self.rabbitmq  # its worker reads the attempt record of a redelivered message
        import dramatiq

        key, field = f"{self.namespace}:{run.queue}.msgs", _message_key(run)
        try:
            raw: Any = self.client.hget(key, field)
            if raw is None:  # acknowledged meanwhile: nothing will hand it out again
                return False
            try:
                message = dramatiq.Message.decode(raw)
            except Exception as exc:  # another encoder than this process's Dramatiq's
                logger.warning(
                    "otel-jobs monitor: Dramatiq message %s of %s cannot be decoded here (%s: "
                    "%s): its next delivery is not told that it was lost %s times",
                    run.job_id,
                    run.name,
                    type(exc).__name__,
                    exc,
                    attempt.get("lost"),
                )
                return False
            marked: Any = message.copy(options={REQUEUE_MARK: json.dumps(dict(attempt))}).encode()
            return bool(self.client.eval(_MARK, 1, key, field, raw, marked))
        except _redis.ERRORS as exc:
            logger.warning(
                "otel-jobs monitor: Dramatiq message %s of %s not marked as lost (%s: %s)",
                run.job_id,
                run.name,
                type(exc).__name__,
                exc,
            )
            return False


def _message_key(run: LostRun) -> str:
    return str(run.entry.get("redis_message_id") or run.job_id or "")


def _is_redis(broker: Any) -> bool:
    try:
        from dramatiq.brokers.redis import RedisBroker
    except ImportError:
        return False
    return isinstance(broker, RedisBroker)


def _is_rabbitmq(broker: Any) -> bool:
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError:  # pika is not installed
        return False
    return isinstance(broker, RabbitmqBroker)
