"""Dramatiq: the broker's queues, their delay queues and dead-letter queues, on Redis or RabbitMQ.

``--dramatiq-broker app.broker:broker`` (or a module that sets the global broker) gives the
broker, and the queues its actors declared unless ``--queues`` names them.

**Redis** (``dramatiq:`` namespace, see Dramatiq's ``dispatch.lua``):

* ``dramatiq:<q>``: the list of waiting message ids, oldest first (``RPUSH``, ``LPOP``);
* ``dramatiq:<q>.msgs``: the hash of every message of the queue not yet acknowledged: waiting,
  prefetched by a worker, or running; so ``reserved`` = its size minus the waiting list's;
* ``dramatiq:<q>.DQ.msgs``: the same for the delay queue: every delayed message (``scheduled``),
  whether still listed or already held by a worker until its ETA;
* ``dramatiq:<q>.XQ``: the sorted set of dead-lettered messages (``dead``).

One transaction reads the four sizes and the head id of every queue; a second the head
messages, whose ``message_timestamp`` (publish time, ms), or the ``otel_jobs_due`` option that
otel-jobs' middleware stamps on a delayed message as it becomes due, is the oldest waiting age.

**RabbitMQ.** A passive ``queue.declare`` of ``<q>``, ``<q>.DQ`` and ``<q>.XQ`` returns their
ready messages: ``waiting``, ``scheduled`` (delayed messages not yet prefetched by a worker, which
holds the others unacknowledged until they are due) and ``dead``. No oldest age on RabbitMQ:
AMQP 0-9-1 cannot look at a message without taking it off the queue.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import dramatiq
from dramatiq.common import dq_name, xq_name

from .base import Collector, ConnectionCollector, QueueReading, RedisCollector, due_time

try:
    from . import _redis
except ImportError:  # Dramatiq on RabbitMQ, without redis-py: only the RabbitMQ collector
    _redis = None  # type: ignore[assignment]

DUE_OPTION = "otel_jobs_due"  # the option otel_jobs.integrations.dramatiq stamps


def message_due(data: Any) -> float | None:
    """The due time of an encoded Dramatiq message (its publish time, or when it became due)."""
    try:
        message = dramatiq.Message.decode(data)
    except Exception:  # Dramatiq raises DecodeError, but a custom encoder may raise anything
        return None
    published = message.message_timestamp
    due = message.options.get(DUE_OPTION)
    return due_time(
        published / 1000.0 if isinstance(published, (int, float)) else None,
        due / 1000.0 if isinstance(due, (int, float)) and not isinstance(due, bool) else None,
    )


def collector_for_broker(
    broker: Any, *, queues: Sequence[str] = (), timeout: float = 5.0, max_queues: int = 1000
) -> Collector:
    """The collector for a Redis or RabbitMQ broker (``ValueError`` for another kind)."""
    chosen = list(queues) or sorted(broker.get_declared_queues())
    try:
        from dramatiq.brokers.redis import RedisBroker
    except ImportError:  # dramatiq without its redis extra
        RedisBroker = ()  # type: ignore[assignment,misc]
    try:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker
    except ImportError:  # dramatiq without its rabbitmq extra
        RabbitmqBroker = ()  # type: ignore[assignment,misc]
    if isinstance(broker, RedisBroker):
        return DramatiqRedisCollector(broker, chosen, timeout=timeout, max_queues=max_queues)
    if isinstance(broker, RabbitmqBroker):
        return DramatiqRabbitmqCollector(broker, chosen, timeout=timeout, max_queues=max_queues)
    raise ValueError(f"a RedisBroker or a RabbitmqBroker (this one is a {type(broker).__name__})")


class DramatiqRedisCollector(RedisCollector):
    framework = "dramatiq"
    states = ("waiting", "scheduled", "reserved", "dead")

    def __init__(
        self, broker: Any, queues: Sequence[str], *, timeout: float = 5.0, max_queues: int = 1000
    ) -> None:
        client = _redis.from_pool(broker.client.connection_pool, timeout)
        super().__init__(client, "--dramatiq-broker", max_queues)
        self.namespace = broker.namespace
        self.queues = self.capped(queues)

    def poll(self) -> list[QueueReading]:
        ns = self.namespace
        commands: list[tuple[Any, ...]] = []
        for q in self.queues:
            commands += [
                ("llen", f"{ns}:{q}"),
                ("lindex", f"{ns}:{q}", 0),
                ("hlen", f"{ns}:{q}.msgs"),
                ("hlen", f"{ns}:{dq_name(q)}.msgs"),
                ("zcard", f"{ns}:{xq_name(q)}"),
            ]
        values = _redis.read(self.client, commands)
        rows = [values[i : i + 5] for i in range(0, len(values), 5)]
        heads = [(q, row[1]) for q, row in zip(self.queues, rows, strict=True) if row[0] and row[1]]
        data = _redis.read(self.client, [("hget", f"{ns}:{q}.msgs", mid) for q, mid in heads])
        dues = {q: message_due(d) if d else None for (q, _), d in zip(heads, data, strict=True)}
        return [
            QueueReading(
                q,
                {
                    "waiting": int(waiting),
                    "scheduled": int(delayed),
                    "reserved": max(0, int(messages) - int(waiting)),
                    "dead": int(dead),
                },
                dues.get(q),
            )
            for q, (waiting, _, messages, delayed, dead) in zip(self.queues, rows, strict=True)
        ]


class DramatiqRabbitmqCollector(ConnectionCollector):
    framework = "dramatiq"
    states = ("waiting", "scheduled", "dead")

    def __init__(
        self, broker: Any, queues: Sequence[str], *, timeout: float = 5.0, max_queues: int = 1000
    ) -> None:
        import pika

        self._pika = pika
        given = broker.parameters if isinstance(broker.parameters, list) else [broker.parameters]
        self.parameters = []
        for params in given:
            params = copy.deepcopy(params)
            params.socket_timeout = timeout
            params.stack_timeout = timeout
            params.blocked_connection_timeout = timeout
            params.connection_attempts = 1
            params.retry_delay = 0
            params.heartbeat = 0
            self.parameters.append(params)
        first = self.parameters[0]
        vhost = "%2F" if first.virtual_host == "/" else first.virtual_host
        super().__init__(
            f"amqp://{first.host}:{first.port}/{vhost}", "--dramatiq-broker", max_queues
        )
        self.queues = self.capped(queues)
        self._connection: Any = None
        self._channel: Any = None
        self._errors = (
            pika.exceptions.AMQPConnectionError,
            pika.exceptions.StreamLostError,
            OSError,
        )

    def _open(self) -> Any:
        if self._connection is None or not self._connection.is_open:
            self._channel = None
            self._connection = self._pika.BlockingConnection(self.parameters)
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
        return self._channel

    def _count(self, name: str) -> int:
        channel = self._open()
        try:
            return int(channel.queue_declare(queue=name, passive=True).method.message_count)
        except self._pika.exceptions.ChannelClosedByBroker:
            return 0  # 404: no such queue (the broker closed the channel; reopened next call)

    def poll(self) -> list[QueueReading]:
        with self._reading():
            return [
                QueueReading(
                    q,
                    {
                        "waiting": self._count(q),
                        "scheduled": self._count(dq_name(q)),
                        "dead": self._count(xq_name(q)),
                    },
                )
                for q in self.queues
            ]

    def _drop(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.close()
            except Exception:
                pass

    def abort(self) -> None:
        # pika is not thread-safe: ask the connection's own thread to close it.
        connection = self._connection
        if connection is not None:
            try:
                connection.add_callback_threadsafe(connection.close)
            except Exception:
                pass

    def close(self) -> None:
        self._drop()
