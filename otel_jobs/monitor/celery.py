"""Celery: the app's broker and queues, on Redis (kombu's Redis transport) or RabbitMQ.

``--celery-app proj.celery:app`` (anything ``celery -A`` accepts) gives the broker URL, its
transport options and the queues (``task_queues`` and the default queue), unless ``--queues``
names them.

**Redis.** kombu keeps a queue as a list named after it (``LPUSH`` to publish, ``BRPOP`` to
consume: the oldest message is at index -1), one list per priority step (``<queue>\\x06\\x163``
for priority 3, ...), and the messages delivered to workers but not yet acknowledged in the
hash ``unacked`` (delivery tag -> ``[message, exchange, routing key]``). One transaction reads
every list's length and last element, and the size of ``unacked``:

* ``waiting``: the lists' lengths summed;
* ``reserved``: delivered to a worker and not yet acknowledged (prefetched or running);
  ``scheduled``: among those, tasks whose ETA/countdown is still ahead (a Celery worker holds
  them unacknowledged until they are due). Counted per queue by reading the hash in a second
  round trip when it holds at most :data:`UNACKED_READ_LIMIT` messages; above that, the total
  is reported once, as ``reserved`` with ``queue="__unattributed__"`` (reading it all would
  cost one message per scheduled task at every poll).
* oldest waiting age: from the head message's ``otel_jobs_published_at`` header, the publish
  time otel-jobs stamps in every instrumented publisher, or its ETA when it has one. A message
  published without otel-jobs and with no ETA carries no time: no age series.

**RabbitMQ.** A passive ``queue.declare`` per queue returns its ready messages: ``waiting``.
Messages delivered to workers (prefetched, running, and ETA tasks, held unacknowledged) are not
in that count, and AMQP 0-9-1 has no way to look at a message without taking it off the queue:
no oldest age on RabbitMQ.
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Sequence
from typing import Any

import redis
from kombu.transport.redis import PRIORITY_STEPS
from kombu.transport.redis import Channel as RedisChannel

from . import _redis
from .base import Collector, ConnectionCollector, QueueReading, RedisCollector, due_time

PUBLISHED_HEADER = "otel_jobs_published_at"  # the header otel_jobs.integrations.celery stamps
UNACKED_READ_LIMIT = 1000
UNATTRIBUTED = "__unattributed__"


def parse_eta(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment.timestamp()


def message_due(raw: Any) -> float | None:
    """The due time of a kombu Redis message (JSON envelope): publish stamp or ETA."""
    try:
        message = json.loads(raw) if isinstance(raw, (bytes, str)) else raw
        headers = message.get("headers") or {}
    except (ValueError, AttributeError, TypeError):
        return None
    published = headers.get(PUBLISHED_HEADER)
    if isinstance(published, bool) or not isinstance(published, (int, float)):
        published = None
    return due_time(published, parse_eta(headers.get("eta")))


def app_queues(app: Any) -> tuple[list[str], dict[tuple[str, str], str]]:
    """The app's queue names, and (exchange, routing key) -> queue for attributing deliveries."""
    names, routes = [], {}
    for name, queue in app.amqp.queues.items():
        names.append(name)
        exchange = getattr(getattr(queue, "exchange", None), "name", "") or ""
        routes[(exchange, queue.routing_key or name)] = name
    return names, routes


def collector_for_app(
    app: Any, *, queues: Sequence[str] = (), timeout: float = 5.0, max_queues: int = 1000
) -> Collector:
    """The collector for the app's transport (``ValueError`` for one that is not supported)."""
    conn = app.connection_for_read()
    driver = conn.transport.driver_type
    names, routes = app_queues(app)
    chosen = list(queues) or names
    if driver == "redis":
        return CeleryRedisCollector(conn, chosen, routes, timeout=timeout, max_queues=max_queues)
    if driver == "amqp":
        return CeleryAMQPCollector(app, chosen, timeout=timeout, max_queues=max_queues)
    raise ValueError(f"a Redis or RabbitMQ broker (this app's transport is {driver!r})")


class CeleryRedisCollector(RedisCollector):
    framework = "celery"
    states = ("waiting", "scheduled", "reserved")

    def __init__(
        self,
        conn: Any,
        queues: Sequence[str],
        routes: dict[tuple[str, str], str],
        *,
        timeout: float = 5.0,
        max_queues: int = 1000,
    ) -> None:
        vhost = str(conn.virtual_host or "0").strip("/") or "0"
        kwargs: dict[str, Any] = {
            "host": conn.hostname or "localhost",
            "port": conn.port or 6379,
            "db": int(vhost),
            "username": conn.userid or None,
            "password": conn.password or None,
            **_redis.bounded(timeout),
        }
        if conn.ssl:
            kwargs["ssl"] = True
            if isinstance(conn.ssl, dict):
                kwargs.update(conn.ssl)
        super().__init__(redis.Redis(**kwargs), "--celery-app", max_queues)
        options = conn.transport_options or {}
        self.prefix = options.get("global_keyprefix", "")
        self.steps = list(options.get("priority_steps", PRIORITY_STEPS))
        self.sep = options.get("sep", RedisChannel.sep)
        self.unacked_key = self.prefix + options.get("unacked_key", RedisChannel.unacked_key)
        self.queues = self.capped(queues)
        self.routes = routes

    def keys(self, queue: str) -> list[str]:
        """The lists of one queue, one per priority step (kombu's ``_q_for_pri``)."""
        return [
            self.prefix + (f"{queue}{self.sep}{step}" if step else queue)
            for step in sorted(set(self.steps))
        ]

    def poll(self) -> list[QueueReading]:
        commands: list[tuple[Any, ...]] = [("hlen", self.unacked_key)]
        for queue in self.queues:
            for key in self.keys(queue):
                commands += [("llen", key), ("lindex", key, -1)]
        values = _redis.read(self.client, commands)
        unacked = int(values[0])
        per_queue = 2 * len(self.keys(""))
        reserved, scheduled = dict.fromkeys(self.queues, 0), dict.fromkeys(self.queues, 0)
        extra: list[QueueReading] = []
        if 0 < unacked <= UNACKED_READ_LIMIT:
            (entries,) = _redis.read(self.client, [("hvals", self.unacked_key)])
            now = time.time()
            for entry in entries:
                target, due = self._delivery(entry)
                if target is not None and target in reserved:
                    if due is not None and due > now:
                        scheduled[target] += 1
                    else:
                        reserved[target] += 1
        elif unacked:
            extra.append(QueueReading(UNATTRIBUTED, {"reserved": unacked}))
        readings = []
        for i, queue in enumerate(self.queues):
            row = values[1 + i * per_queue : 1 + (i + 1) * per_queue]
            lengths, heads = row[0::2], row[1::2]
            dues = [message_due(head) for head in heads if head is not None]
            known = [d for d in dues if d is not None]
            readings.append(
                QueueReading(
                    queue,
                    {
                        "waiting": sum(int(n) for n in lengths),
                        "scheduled": scheduled[queue],
                        "reserved": reserved[queue],
                    },
                    min(known) if known else None,
                )
            )
        return readings + extra

    def _delivery(self, entry: Any) -> tuple[str | None, float | None]:
        try:
            message, exchange, routing_key = json.loads(entry)
        except (ValueError, TypeError):
            return None, None
        queue = self.routes.get((exchange or "", routing_key or ""))
        if queue is None and routing_key in self.queues:
            queue = routing_key
        headers = message.get("headers") if isinstance(message, dict) else None
        return queue, parse_eta((headers or {}).get("eta"))


class CeleryAMQPCollector(ConnectionCollector):
    framework = "celery"
    states = ("waiting",)

    def __init__(
        self, app: Any, queues: Sequence[str], *, timeout: float = 5.0, max_queues: int = 1000
    ) -> None:
        self.conn = app.connection_for_read(
            connect_timeout=timeout,
            heartbeat=0,
            transport_options={"read_timeout": timeout, "write_timeout": timeout},
        )
        super().__init__(_redis.strip_credentials(self.conn.as_uri()), "--celery-app", max_queues)
        self.queues = self.capped(queues)
        self._errors = tuple(self.conn.connection_errors) + (OSError,)
        self._channel_errors = tuple(self.conn.channel_errors)
        self._channel: Any = None

    def _open(self) -> Any:
        if self._channel is None:
            self.conn.ensure_connection(max_retries=0, reraise_as_library_errors=False)
            self._channel = self.conn.channel()
        return self._channel

    def poll(self) -> list[QueueReading]:
        readings = []
        with self._reading():
            for queue in self.queues:
                channel = self._open()
                try:
                    _, count, _ = channel.queue_declare(queue=queue, passive=True)
                except self._channel_errors:
                    # 404: no such queue, nothing waits in it. The broker closed the channel.
                    count = 0
                    self._channel = None
                readings.append(QueueReading(queue, {"waiting": int(count)}))
        return readings

    def _drop(self) -> None:
        self._channel = None
        try:
            self.conn.collect()  # forget the connection without talking to the broker
        except Exception:
            pass

    def abort(self) -> None:
        self._drop()

    def close(self) -> None:
        self._channel = None
        try:
            self.conn.release()
        except Exception:
            pass
