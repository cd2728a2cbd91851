"""The Dramatiq app of the lost-run tests (see :mod:`lost_apps`), run by otel-jobs' launcher."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from . import lost_apps

broker = RedisBroker(url=os.environ.get("LOST_BROKER", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=lost_apps.QUEUE, actor_name="lost_page", max_retries=0)
def page(name: str) -> None:
    lost_apps.page_body(name)
