"""Helpers of the integration tests: what a framework's test queue leaves on its broker.

The worker processes and the polling live in :mod:`tests.support` (``processes``, ``waiting``)
and are importable from here too, as the integration tests always imported them.

* ``purge_dramatiq`` / ``purge_huey`` delete what a test queue left on its broker.
"""

from __future__ import annotations

import re

from tests.support.processes import GroupWorker, kill_group, start, stop, worker_env
from tests.support.waiting import WAIT, wait_for

__all__ = [
    "WAIT",
    "GroupWorker",
    "delete_keys",
    "kill_group",
    "purge_dramatiq",
    "purge_huey",
    "start",
    "stop",
    "wait_for",
    "worker_env",
]


def delete_keys(redis_url: str, *patterns: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    keys = [key for pattern in patterns for key in client.scan_iter(pattern)]
    if keys:
        client.delete(*keys)
    client.close()


def purge_dramatiq(broker_url: str, queue: str) -> None:
    """Delete a Dramatiq queue (and its delay and dead-letter queues) on Redis or RabbitMQ."""
    if broker_url.startswith("redis"):
        # dramatiq:<queue>* and the per worker, per queue acks
        delete_keys(broker_url, f"dramatiq:{queue}*", f"dramatiq:__acks__.*.{queue}*")
        return
    import pika

    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
        channel.queue_delete(name)
    connection.close()


def purge_huey(redis_url: str, name: str) -> None:
    """Delete the keys of the Huey instance ``name`` on Redis."""
    clean = re.sub("[^A-Za-z0-9_]", "", name)  # the name RedisStorage uses in its keys
    delete_keys(redis_url, f"huey.*.{clean}")
