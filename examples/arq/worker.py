"""An arq worker instrumented by otel-jobs: one healthy job and one that gets stuck.

Run it with arq's own command (see README.md): ``arq worker.WorkerSettings``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq.connections import RedisSettings
from arq.worker import func

import otel_jobs

# Once, where the worker process starts: the arq command imports this module first.
otel_jobs.instrument(
    # The stuck job below never heartbeats: call it stalled after 5 s instead of the default 600.
    jobs={"wait_for_approval": {"heartbeat_timeout": 5}},
)


async def send_report(ctx: dict[str, Any], pages: int) -> int:
    """Healthy: renders its pages and heartbeats after each one."""
    for page in range(pages):
        await asyncio.sleep(0.1)  # stands for rendering one page
        otel_jobs.heartbeat(progress=(page + 1) / pages, last_page=page)
    return pages


async def wait_for_approval(ctx: dict[str, Any], request_id: str) -> str:
    """Stuck: waits on a Redis list nobody writes to, with no timeout (BLPOP 0 blocks forever).

    arq cancels it when its ``timeout`` (30 s) expires; before that, otel-jobs shows it stalled.
    """
    _key, value = await ctx["redis"].blpop(f"approvals:{request_id}", timeout=0)
    return str(value)


class WorkerSettings:
    functions = [send_report, func(wait_for_approval, timeout=30)]
    redis_settings = RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    queue_name = os.environ.get("ARQ_QUEUE", "arq:queue")
    job_timeout = 120  # every other job: its max duration on /metrics
