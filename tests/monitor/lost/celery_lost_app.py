"""The Celery app of the lost-run tests (see :mod:`lost_apps`): prefork, early acknowledgement."""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals

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


@signals.task_prerun.connect
def _note_redelivered(task: Any = None, args: Any = None, **_: Any) -> None:
    """A message Celery itself hands out again (kombu restores the messages a worker holds
    unacknowledged when it stops: ``delivery_info["redelivered"]``) is noted in
    ``<name>.redelivered`` with the run's arguments: what the no-false-positives test allows to
    finish twice, since the monitor did not requeue it."""
    delivery = getattr(getattr(task, "request", None), "delivery_info", None) or {}
    if delivery.get("redelivered") and args:
        lost_apps.note(str(args[0]), "redelivered", " ".join(map(str, args[1:2])) or "x")


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
