"""The Dramatiq app of the lost-run tests (see :mod:`lost_apps`), run by otel-jobs' launcher."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from . import lost_apps

broker = RedisBroker(
    url=os.environ.get("LOST_BROKER", "redis://127.0.0.1:6379/0"),
    # A dead worker's messages are handed out again once its heartbeat is this old (ms), at a
    # maintenance, which runs at this many commands in a million (1000000: every fetch).
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
