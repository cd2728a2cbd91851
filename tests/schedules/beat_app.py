"""The Celery app of the beat tests: two beat entries and their tasks, as a project writes them.

``OJ_METRICS_PORT`` set: the module instruments at import, as the docs say (``celery beat`` and
``celery worker`` both import it). ``OJ_FAIL_FLAG``: while that file exists, ``refresh`` fails.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.schedules import crontab

import otel_jobs

BROKER = os.environ.get("OJ_BEAT_BROKER", "redis://127.0.0.1:6379/6")

app = Celery("beat_app", broker=BROKER)
app.conf.update(
    beat_schedule={
        "refresh-every-2s": {"task": "beat_app.refresh", "schedule": 2.0},
        "nightly-report": {"task": "beat_app.nightly", "schedule": crontab(hour=3, minute=30)},
    },
    timezone="UTC",
    beat_max_loop_interval=1,
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("OJ_BEAT_QUEUE", "beat"),
    worker_hijack_root_logger=False,
)

if os.environ.get("OJ_METRICS_PORT"):
    otel_jobs.instrument(prometheus_port=int(os.environ["OJ_METRICS_PORT"]), watchdog_interval=0.5)


@app.task(name="beat_app.refresh")
def refresh() -> str:
    flag = os.environ.get("OJ_FAIL_FLAG")
    if flag and os.path.exists(flag):
        raise RuntimeError("refresh failed (the flag file exists)")
    return "refreshed"


@app.task(name="beat_app.nightly")
def nightly() -> str:
    return "done"
