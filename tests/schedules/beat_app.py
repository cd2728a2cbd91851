"""The Celery app of the beat tests: two beat entries and their tasks, as a project writes them.

``OJ_METRICS_PORT`` set: the module instruments at import, as the docs say (``celery beat`` and
``celery worker`` both import it). ``OJ_FAIL_FLAG``: while that file exists, ``refresh`` fails.
``OJ_TIMES``: ``refresh`` appends "ending <time>" on its last line, and a ``task_postrun`` receiver
(connected after otel-jobs', which finishes the run first) "ended <time>": the run's end lies
between the two. Its tasks are not shared: another test's Celery app in the same pytest process
must not find them (Celery adds shared tasks to every app).
"""

from __future__ import annotations

import os
import time

from celery import Celery, signals
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


def _note(what: str) -> None:
    path = os.environ.get("OJ_TIMES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{what} {time.time()!r}\n")


@app.task(name="beat_app.refresh", shared=False)
def refresh() -> str:
    flag = os.environ.get("OJ_FAIL_FLAG")
    if flag and os.path.exists(flag):
        raise RuntimeError("refresh failed (the flag file exists)")
    _note("ending")
    return "refreshed"


@signals.task_postrun.connect(weak=False)
def _after(sender: object = None, state: str | None = None, **_: object) -> None:
    if getattr(sender, "name", None) == "beat_app.refresh" and state == "SUCCESS":
        _note("ended")


@app.task(name="beat_app.nightly", shared=False)
def nightly() -> str:
    return "done"
