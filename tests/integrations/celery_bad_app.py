"""A Celery app with every queue configuration mistake the audit knows (and nothing else wrong).

* ``no_time_limit`` and ``late_ack_without_time_limit``: ``bad.forever`` acknowledges late and
  has no time limit;
* ``late_ack_without_reject_on_worker_lost``: the app acknowledges late (``task_acks_late``)
  and leaves ``task_reject_on_worker_lost`` off;
* ``time_limit_exceeds_visibility_timeout``: ``bad.long`` may run 2 h on Redis, whose visibility
  timeout is 1 h;
* ``no_retry_or_dead_letter``: no task retries, and the queue has no dead-letter exchange;
* ``single_queue``: every task goes to the default queue;
* ``soft_time_limit_above_time_limit``: ``bad.inverted`` has a soft limit above its hard one.

With ``OJ_CELERY_WORKER=1`` the module instruments the worker (``OJ_CELERY_PORT``).
"""

from __future__ import annotations

import os

from celery import Celery

import otel_jobs

if os.environ.get("OJ_CELERY_WORKER") == "1":
    otel_jobs.instrument(
        prometheus_port=int(os.environ["OJ_CELERY_PORT"]), frameworks=["celery"], outbound=[]
    )

app = Celery(
    "bad",
    broker=os.environ.get("OJ_CELERY_BROKER", "redis://127.0.0.1:6379/11"),
    set_as_current=False,
)
app.conf.update(
    task_acks_late=True,
    task_default_queue=os.environ.get("OJ_CELERY_PREFIX", "oj-bad") + "-all",
    worker_enable_remote_control=False,
    broker_connection_retry_on_startup=True,
)


@app.task(shared=False, name="bad.forever")
def forever() -> None:
    pass


@app.task(shared=False, name="bad.long", time_limit=7200, acks_late=False)
def long() -> None:
    pass


@app.task(shared=False, name="bad.inverted", time_limit=5, soft_time_limit=10)
def inverted() -> None:
    pass
