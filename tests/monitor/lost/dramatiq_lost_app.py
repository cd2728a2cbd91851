"""The Dramatiq app of the lost-run tests (see :mod:`lost_apps`), run by otel-jobs' launcher:
on Redis, or on RabbitMQ when ``LOST_BROKER`` is an ``amqp://`` URL."""

from __future__ import annotations

import os

import dramatiq

from . import lost_apps

URL = os.environ.get("LOST_BROKER", "redis://127.0.0.1:6379/0")
broker: dramatiq.Broker
if URL.startswith("amqp://"):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker

    broker = RabbitmqBroker(url=URL)
else:
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(
        url=URL,
        # A dead worker's messages are handed out again once its heartbeat is this old (ms), at
        # a maintenance, which runs at this many commands in a million (1000000: every fetch).
        heartbeat_timeout=int(os.environ.get("LOST_DRAMATIQ_HEARTBEAT_TIMEOUT", "60000")),
        maintenance_chance=int(os.environ.get("LOST_DRAMATIQ_MAINTENANCE_CHANCE", "1000")),
    )
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=lost_apps.QUEUE, actor_name="lost_page", max_retries=0)
def page(name: str) -> None:
    lost_apps.page_body(name)


@dramatiq.actor(queue_name=lost_apps.QUEUE, actor_name="lost_poison", max_retries=0)
def poison(name: str) -> None:
    lost_apps.poison_body(name)
