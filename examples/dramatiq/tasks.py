"""Dramatiq actors watched by otel-jobs: one healthy, one that gets stuck.

The worker is started through ``run_worker.py`` (see README.md), which calls
``otel_jobs.instrument()`` in Dramatiq's parent process before it forks the worker processes.
"""

from __future__ import annotations

import os
import time

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

import otel_jobs

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("DRAMATIQ_QUEUE", "reports")

broker = RedisBroker(url=REDIS_URL)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def send_report(pages: int) -> None:
    """Healthy: renders its pages and heartbeats after each one."""
    for page in range(pages):
        time.sleep(0.1)  # stands for rendering one page
        otel_jobs.heartbeat(progress=(page + 1) / pages, last_page=page)


@dramatiq.actor(queue_name=QUEUE, max_retries=0, time_limit=30_000)
def wait_for_approval(request_id: str) -> None:
    """Stuck: waits on a Redis list nobody writes to, with no timeout (BLPOP 0 blocks forever).

    Its 30 s time limit does not help: Dramatiq interrupts an actor with an exception that a
    thread blocked in a socket read never sees. otel-jobs shows it stalled, and where.
    """
    client = redis.Redis.from_url(REDIS_URL)  # no socket_timeout: the call can hang forever
    client.blpop([f"approvals:{request_id}"], timeout=0)
