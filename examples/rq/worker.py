"""The worker of the example: instrument() first, then RQ's Worker.work().

``otel_jobs.instrument()`` runs here, in the worker process, before the worker forks any work
horse: every horse inherits it, and this process serves /metrics for all of them.
"""

from __future__ import annotations

import logging
import os

from redis import Redis
from rq import Queue, Worker

import otel_jobs

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
# A run that has not heartbeated for this long is stalled (fetch_invoice never does).
STUCK_AFTER = float(os.environ.get("STUCK_AFTER", "10"))

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    otel_jobs.instrument(jobs={"tasks.fetch_invoice": {"heartbeat_timeout": STUCK_AFTER}})
    print("metrics on", otel_jobs.metrics_url(), flush=True)
    connection = Redis.from_url(REDIS_URL, socket_timeout=30, socket_connect_timeout=10)
    queues = [Queue(name, connection=connection) for name in ("reports", "billing")]
    # with_scheduler: the scheduler puts retries with an interval back in their queue
    Worker(queues, connection=connection).work(with_scheduler=True)
