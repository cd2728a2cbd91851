"""Huey on Redis: one queue per Huey instance, and its schedule.

``--huey app.tasks:huey`` (or ``app.tasks.huey``, as ``huey_consumer`` takes it) gives the
instance; its queue label is the instance's name. ``RedisHuey`` keeps:

* ``huey.redis.<name>``: the list of waiting messages (``LPUSH``, ``BRPOP``: the oldest is at
  index -1); ``PriorityRedisHuey`` keeps a sorted set instead (counted, no head read);
* ``huey.schedule.<name>``: the sorted set of delayed messages (``scheduled``), by due time.

Huey's messages carry no publish time, so the oldest waiting age is known only for a message
with a due time (``schedule(delay=...)``/``eta=``, a retry with ``retry_delay``), read from the
head message with the instance's own serializer; for any other head, no age series. Huey keeps
no record of running or failed tasks in Redis.
"""

from __future__ import annotations

import datetime
from typing import Any

from . import _redis
from .base import QueueReading, RedisCollector


class HueyCollector(RedisCollector):
    framework = "huey"
    states = ("waiting", "scheduled")

    def __init__(self, huey: Any, *, timeout: float = 5.0) -> None:
        storage = huey.storage
        if not hasattr(storage, "queue_key") or not hasattr(storage, "pool"):
            raise ValueError(f"a Redis storage (this Huey uses {type(storage).__name__})")
        self.huey = huey
        super().__init__(_redis.from_pool(storage.pool, timeout), "--huey", 1)
        self.queue = huey.name
        self.queues = (huey.name,)
        self.queue_key = storage.queue_key
        self.schedule_key = storage.schedule_key
        self.sorted = bool(getattr(storage, "priority", False))

    def poll(self) -> list[QueueReading]:
        if self.sorted:
            waiting, scheduled = _redis.read(
                self.client, [("zcard", self.queue_key), ("zcard", self.schedule_key)]
            )
            head = None
        else:
            waiting, head, scheduled = _redis.read(
                self.client,
                [
                    ("llen", self.queue_key),
                    ("lindex", self.queue_key, -1),
                    ("zcard", self.schedule_key),
                ],
            )
        return [
            QueueReading(
                self.queue,
                {"waiting": int(waiting), "scheduled": int(scheduled)},
                self.message_due(head) if waiting and head else None,
            )
        ]

    def message_due(self, data: bytes) -> float | None:
        try:
            message = self.huey.serializer.deserialize(data)
        except Exception:  # pickled arguments whose classes cannot be imported here, ...
            return None
        eta = getattr(message, "eta", None)
        if not isinstance(eta, datetime.datetime):
            return None
        if eta.tzinfo is None and getattr(self.huey, "utc", True):
            eta = eta.replace(tzinfo=datetime.timezone.utc)
        return eta.timestamp()
