"""The same worker started by RQ's command: ``rq worker -c settings --with-scheduler reports billing``.

RQ imports this module when the worker starts, before it forks any work horse.
"""

import os

import otel_jobs

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

otel_jobs.instrument(
    jobs={"tasks.fetch_invoice": {"heartbeat_timeout": float(os.environ.get("STUCK_AFTER", "10"))}}
)
