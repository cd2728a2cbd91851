"""The Huey app of the lost-run tests (see :mod:`lost_apps`), instrumented in its module."""

from __future__ import annotations

import os

from huey import RedisHuey

import otel_jobs

from . import lost_apps

huey = RedisHuey(lost_apps.QUEUE, url=os.environ.get("LOST_BROKER", "redis://127.0.0.1:6379/0"))
if os.environ.get("LOST_WORKER") == "1":
    otel_jobs.instrument(
        prometheus_port=int(os.environ.get("LOST_PORT", "0")), frameworks=["huey"], outbound=[]
    )


@huey.task(name="lost_retried_page", retries=2)
def retried_page(name: str) -> None:
    run = otel_jobs.current_run()
    if run is not None:  # each attempt: its id and attempt number, for the requeue's test
        with open(lost_apps.DIR / f"{name}.runs", "a") as out:
            out.write(f"{run.job_id} {run.attempt}\n")
    lost_apps.page_body(name)


lost_apps.declare(huey.task, __name__, page="lost_page", poison="lost_poison", quick="lost_quick")
