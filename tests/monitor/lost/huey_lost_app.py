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


@huey.task(name="lost_page")
def page(name: str) -> None:
    lost_apps.page_body(name)
