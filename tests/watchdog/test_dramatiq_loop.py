"""Dramatiq's async actors: their event loop runs in a thread of its own, not the run's.

A real in-process Dramatiq worker (its worker threads, its AsyncIO middleware's event-loop
thread) on the real Redis (database 12, the Dramatiq tests'; only this test's queue is
purged). The worker thread that takes a message waits while the actor's coroutine runs on the
event-loop thread: a coroutine holding that loop is found on the loop's thread. Nothing is
timed: the actor holds the loop until the test releases it.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.integrations.workers import purge_dramatiq
from tests.support import require_redis
from tests.watchdog.support import here, run_named, wait_for

dramatiq = pytest.importorskip("dramatiq")

pytestmark = pytest.mark.broker

REDIS_URL = "redis://127.0.0.1:6379/12"


def test_an_async_actor_holding_the_event_loop_thread_is_named_with_its_line(
    instrumented: Callable[..., Any],
) -> None:
    require_redis()
    from dramatiq.brokers.redis import RedisBroker
    from dramatiq.middleware.asyncio import AsyncIO

    agent = instrumented(frameworks=["dramatiq"], watchdog_interval=0.1, loop_blocked_timeout=0.5)
    broker = RedisBroker(url=REDIS_URL)
    broker.add_middleware(AsyncIO())
    queue = f"otel-jobs-test-loop-{uuid.uuid4().hex[:10]}"
    release, done = threading.Event(), threading.Event()
    lines: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=0, actor_name="loop_waiting")
    async def loop_waiting() -> None:
        while not done.is_set():
            await asyncio.sleep(0.02)

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=0, actor_name="loop_holding")
    async def loop_holding() -> None:
        await asyncio.sleep(0)
        lines.append(here() + 1)
        release.wait()  # synchronous, on the event-loop thread: every async actor waits
        while not done.is_set():
            await asyncio.sleep(0.02)

    worker = dramatiq.Worker(broker, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        loop_waiting.send()
        waiting = run_named(agent, "loop_waiting")
        loop_holding.send()
        holding = run_named(agent, "loop_holding")
        wait_for("the loop_blocked verdict", lambda: holding.verdict == "loop_blocked")
        diagnosis = holding.diagnosis
        # The run's own thread is Dramatiq's worker thread; the loop's is another one.
        assert diagnosis.loop["thread"] != threading._active[holding.thread_id].name  # type: ignore[attr-defined]
        assert diagnosis.thread == diagnosis.loop["thread"]
        assert diagnosis.where.function.endswith("loop_holding")
        assert diagnosis.where.lineno == lines[0]
        assert [r["job_id"] for r in diagnosis.loop["held_up"]] == [waiting.job_id]
        assert waiting.verdict is None
        release.set()
        wait_for("the verdict to clear", lambda: holding.verdict is None)
    finally:
        release.set()
        done.set()
        worker.join()
        worker.stop()
        broker.close()
        purge_dramatiq(REDIS_URL, queue)
