"""arq ``cron_jobs``: the schedule gauges match what a real arq worker on the real Redis holds.

The worker runs in this process (its own event loop in a thread) so that its cron jobs'
``next_run`` can be compared with the gauges. Redis DB 3 is this module's own, emptied before
and after.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from arq.connections import RedisSettings
from arq.cron import cron
from arq.worker import Worker

from tests.support import agent_metrics, emptied_redis_db

from .conftest import wait_for
from .support import INTERVAL, NEXT, SENT

pytestmark = pytest.mark.broker

REDIS_DB = 3
NAME = "cron:tick"


@pytest.fixture
def clean_db() -> Iterator[None]:
    with emptied_redis_db(f"redis://127.0.0.1:6379/{REDIS_DB}"):
        yield


class InProcessWorker:
    """A real arq worker with one cron job every 2 s, on its own event loop thread."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, float]] = []  # (enqueue time, start) of each run
        self.ending: list[float] = []  # each run's last line
        self.ended: list[float] = []  # arq's after_job_end hook, once the run is over
        self.loop = asyncio.new_event_loop()
        self._created = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self._created.wait(30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)  # arq's Worker takes the loop of the thread creating it

        async def tick(ctx: dict[str, Any]) -> None:
            self.runs.append((ctx["enqueue_time"].timestamp(), time.time()))
            self.ending.append(time.time())

        async def after_job_end(ctx: dict[str, Any]) -> None:
            self.ended.append(time.time())

        self.worker = Worker(
            functions=[],
            cron_jobs=[cron(tick, name=NAME, second=set(range(0, 60, 2)), unique=True)],
            redis_settings=RedisSettings(host="127.0.0.1", port=6379, database=REDIS_DB),
            queue_name=f"schedules-{uuid.uuid4().hex[:8]}",
            poll_delay=0.1,
            handle_signals=False,
            after_job_end=after_job_end,
        )
        self._created.set()
        try:
            self.loop.run_until_complete(self.worker.main())
        except asyncio.CancelledError:
            pass

    def stop(self) -> None:
        async def close() -> None:
            await self.worker.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(30)
        self.thread.join(30)


def test_next_run_last_sent_and_interval_match_the_worker(
    instrumented: Callable[..., Any], clean_db: None
) -> None:
    instrumented(frameworks=["arq"])
    worker = InProcessWorker()
    try:
        cron_job = worker.worker.cron_jobs[0]
        wait_for("arq to plan its cron job", lambda: cron_job.next_run is not None)
        for _ in range(50):  # a scrape taken while arq's next_run did not move
            before = cron_job.next_run
            m = agent_metrics()
            if cron_job.next_run == before:
                break
        assert before is not None
        assert m.value(NEXT, job_name=NAME, schedule=NAME) == before.timestamp()
        assert m.value(INTERVAL, job_name=NAME, schedule=NAME) == 2

        wait_for("two runs", lambda: len(worker.runs) >= 2, timeout=60)
        for _ in range(50):
            count = len(worker.runs)
            m = agent_metrics()
            if len(worker.runs) == count and cron_job.next_run is not None:
                break
        enqueued, started = worker.runs[count - 1]
        sent = m.value(SENT, job_name=NAME, schedule=NAME)
        # Recorded once run_cron's enqueue returned (arq keeps the enqueue time in whole ms),
        # before the worker could start the job.
        assert enqueued - 0.001 <= sent
        assert sent <= started or sent < cron_job.next_run.timestamp()
        assert m.value(NEXT, job_name=NAME, schedule=NAME) > sent
        # Each run of the cron job carries its gap as expected_every.
        assert m.value("otel_jobs_run_expected_every_seconds", job_name=NAME) == 2
        # The last success is the end of the run: after its last line, before arq's hook.
        for _ in range(50):
            done = len(worker.ended)
            m = agent_metrics()
            if len(worker.ended) == done == len(worker.ending):
                break
        last = m.value("otel_jobs_last_success_timestamp_seconds", job_name=NAME)
        assert worker.ending[done - 1] <= last <= worker.ended[done - 1]
    finally:
        worker.stop()
