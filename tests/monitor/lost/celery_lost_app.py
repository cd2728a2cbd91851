"""The Celery app of the lost-run tests (see :mod:`lost_apps`): prefork, early acknowledgement."""

from __future__ import annotations

import os

from celery import Celery

import otel_jobs

from . import lost_apps

app = Celery(
    "lost",
    broker=os.environ.get("LOST_BROKER", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("LOST_RESULTS") or None,
    set_as_current=False,
)
app.conf.update(
    task_default_queue=lost_apps.QUEUE,
    worker_prefetch_multiplier=1,
    task_ignore_result=False,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_acks_late=os.environ.get("LOST_ACKS_LATE") == "1",
)

if os.environ.get("LOST_WORKER") == "1":
    otel_jobs.instrument(
        prometheus_port=int(os.environ.get("LOST_PORT", "0")),
        frameworks=["celery"],
        outbound=[],
    )


lost_apps.declare(
    app.task, __name__, page="lost.page", poison="lost.poison", quick="lost.quick",
    sleepy="lost.sleepy",
)  # fmt: skip
