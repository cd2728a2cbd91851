"""The arq worker of the lost-run tests (see :mod:`lost_apps`), instrumented in its module."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from arq.connections import RedisSettings

import otel_jobs

from . import lost_apps

if os.environ.get("LOST_WORKER") == "1":
    otel_jobs.instrument(
        prometheus_port=int(os.environ.get("LOST_PORT", "0")), frameworks=["arq"], outbound=[]
    )


async def lost_page(ctx: dict[str, Any], name: str) -> None:
    otel_jobs.heartbeat(progress=0.4, page=7)
    run = otel_jobs.current_run()
    previous = run.previous_attempt if run is not None else None
    if previous is None:
        (lost_apps.DIR / f"{name}.started").write_text(str(os.getpid()))
        await asyncio.sleep(3600)
        return
    (lost_apps.DIR / f"{name}.previous").write_text(
        json.dumps(
            {"progress": previous.progress, "details": dict(previous.details), "pid": previous.pid}
        )
    )
    with open(lost_apps.DIR / f"{name}.done", "a") as out:
        out.write("x\n")


async def lost_poison(ctx: dict[str, Any], name: str) -> None:
    lost_apps.poison_body(name)  # blocks the loop: it kills its worker anyway


class WorkerSettings:
    functions = [lost_page, lost_poison]
    queue_name = lost_apps.QUEUE
    redis_settings = RedisSettings.from_dsn(os.environ.get("LOST_BROKER", "redis://127.0.0.1/0"))
    # arq hands a job out again once its in-progress key (the timeout + 10 s) is gone.
    job_timeout = int(os.environ.get("LOST_ARQ_TIMEOUT", "600"))
    max_tries = int(os.environ.get("LOST_ARQ_MAX_TRIES", "5"))
