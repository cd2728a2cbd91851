"""The Celery app of the example: ``celery -A proj worker`` imports this module first.

``otel_jobs.instrument()`` is called here, in the app module, so it runs in the worker's main
process before the prefork pool forks its children: that process serves ``/metrics`` for all of
them, and each child runs its own watchdog.
"""

import os

from celery import Celery

import otel_jobs

otel_jobs.instrument(
    # The stuck task never heartbeats: call it stalled after 5 s instead of the default 10 min.
    jobs={"example.fetch_partner_report": {"heartbeat_timeout": 5}},
)

app = Celery(
    "example",
    broker=os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0"),
    include=["tasks"],
)
app.conf.update(
    task_queues={"default": {}, "partners": {}},
    task_default_queue="default",
    task_routes={"example.fetch_partner_report": {"queue": "partners"}},
    # Every task gets a hard time limit, below Redis's visibility timeout (1 h by default).
    task_time_limit=60,
    # The broker's own Redis connections get timeouts too (otel-jobs flags calls without one).
    broker_transport_options={"socket_timeout": 30, "socket_connect_timeout": 10},
    task_ignore_result=True,
    broker_connection_retry_on_startup=True,
)
