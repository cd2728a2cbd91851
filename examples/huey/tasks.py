"""A Huey app: one healthy task, one that gets stuck.

Producers (``enqueue.py``, a web app) import this module too, so ``instrument()`` is not called
here but in ``worker.py``, which only the consumer imports.
"""

from __future__ import annotations

import os
import time

import redis
from huey import RedisHuey

import otel_jobs

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
APPROVAL_TIMEOUT = int(os.environ.get("APPROVAL_TIMEOUT", "30"))

huey = RedisHuey(os.environ.get("HUEY_NAME", "reports"), url=REDIS_URL)


@huey.task()
def send_report(pages: int) -> None:
    """Healthy: renders its pages and heartbeats after each one."""
    for page in range(pages):
        time.sleep(0.1)  # stands for rendering one page
        otel_jobs.heartbeat(progress=(page + 1) / pages, last_page=page)


@huey.task(timeout=APPROVAL_TIMEOUT)
def wait_for_approval(request_id: str) -> None:
    """Stuck: waits on a Redis list nobody writes to, with no timeout (BLPOP 0 blocks forever).

    With ``-k process`` Huey enforces the task's ``timeout`` with SIGALRM, which does interrupt
    the blocked read: the run ends with outcome ``timeout``.
    """
    client = redis.Redis.from_url(REDIS_URL)  # no socket_timeout: the call can hang forever
    client.blpop([f"approvals:{request_id}"], timeout=0)
