"""Enqueue a few jobs for the example worker: ``python enqueue.py``."""

from __future__ import annotations

import asyncio
import os

from arq import create_pool
from arq.connections import RedisSettings


async def main() -> None:
    redis = await create_pool(
        RedisSettings.from_dsn(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    )
    queue = os.environ.get("ARQ_QUEUE", "arq:queue")
    try:
        for pages in (3, 5, 8):
            await redis.enqueue_job("send_report", pages, _queue_name=queue)
        await redis.enqueue_job("wait_for_approval", "req-42", _queue_name=queue)
    finally:
        await redis.aclose()
    print("enqueued 3 send_report jobs and 1 wait_for_approval job")


if __name__ == "__main__":
    asyncio.run(main())
