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


@app.task(name="lost.page")
def page(name: str) -> None:
    lost_apps.page_body(name)


@app.task(name="lost.poison")
def poison(name: str) -> None:
    lost_apps.poison_body(name)


@app.task(name="lost.quick")
def quick(name: str) -> None:
    lost_apps.quick_body(name)


@app.task(name="lost.sleepy")
def sleepy(name: str, line: str, seconds: float) -> None:
    lost_apps.sleepy_body(name, line, seconds)
