"""RQ on Redis: each queue's list and its registries, read in two pipelined round trips.

Where RQ keeps what (key names from RQ's own classes, so ``RQ_KEY_PREFIX`` is honoured):

* ``rq:queues``: the set of queue keys (discovery, when ``--queues`` names none);
* ``rq:queue:<name>``: the list of waiting job ids, oldest first (``RPUSH`` to enqueue, ``LPOP``
  to dequeue), so ``LINDEX 0`` is the oldest;
* ``rq:job:<id>``: the job hash, whose ``enqueued_at`` (UTC, ISO 8601) is when RQ put it on the
  queue (for a scheduled job or a retry, when it was moved there): the oldest waiting age;
* ``rq:scheduled:<name>`` (score: due time), ``rq:wip:<name>`` (started; score: when the run's
  lease expires), ``rq:deferred:<name>`` (waiting on dependencies), ``rq:failed:<name>``
  (score: when the entry expires): sorted sets, counted with ``ZCARD``, or ``ZCOUNT`` from now
  for the two whose expired entries RQ itself no longer counts.

Round trip 1 reads the queue set, round trip 2 every count and head id; round trip 3 the head
jobs' ``enqueued_at`` (a job hash is found only through its id).
"""

from __future__ import annotations

import datetime
import time

from rq.job import Job
from rq.queue import Queue
from rq.registry import (
    DeferredJobRegistry,
    FailedJobRegistry,
    ScheduledJobRegistry,
    StartedJobRegistry,
)

from . import _redis
from .base import QueueReading, RedisUrlCollector


def parse_enqueued_at(value: bytes | str | None) -> float | None:
    """RQ's ``enqueued_at`` (``2024-05-01T12:00:00.123456Z``, UTC) as a Unix time."""
    if not value:
        return None
    text = _redis.text(value).strip().rstrip("Z")
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


class RQCollector(RedisUrlCollector):
    framework = "rq"
    states = ("waiting", "scheduled", "started", "deferred", "failed")
    url_flag = "--rq-redis-url"

    def queue_names(self) -> list[str]:
        if self.queues:
            return list(self.queues)
        (keys,) = _redis.read(self.client, [("smembers", Queue.redis_queues_keys)])
        prefix = Queue.redis_queue_namespace_prefix
        return self.capped(
            [k[len(prefix) :] for k in map(_redis.text, keys) if k.startswith(prefix)]
        )

    def poll(self) -> list[QueueReading]:
        names = self.queue_names()
        now = time.time()
        commands: list[tuple[object, ...]] = []
        for name in names:
            commands += [
                ("llen", Queue.redis_queue_namespace_prefix + name),
                ("lindex", Queue.redis_queue_namespace_prefix + name, 0),
                ("zcard", ScheduledJobRegistry.key_template.format(name)),
                ("zcount", StartedJobRegistry.key_template.format(name), now, "+inf"),
                ("zcard", DeferredJobRegistry.key_template.format(name)),
                ("zcount", FailedJobRegistry.key_template.format(name), now, "+inf"),
            ]
        values = _redis.read(self.client, commands)
        rows = [values[i : i + 6] for i in range(0, len(values), 6)]
        heads = [_redis.text(row[1]) if row[0] and row[1] else None for row in rows]
        wanted = [h for h in heads if h]
        stamps = _redis.read(self.client, [("hget", Job.key_for(h), "enqueued_at") for h in wanted])
        enqueued = dict(zip(wanted, stamps, strict=True))
        readings = []
        for name, row, head in zip(names, rows, heads, strict=True):
            waiting, _, scheduled, started, deferred, failed = row
            readings.append(
                QueueReading(
                    name,
                    {
                        "waiting": int(waiting),
                        "scheduled": int(scheduled),
                        "started": int(started),
                        "deferred": int(deferred),
                        "failed": int(failed),
                    },
                    parse_enqueued_at(enqueued.get(head)) if head else None,
                )
            )
        return readings
