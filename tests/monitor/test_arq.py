"""The monitor on arq: real ``arq`` workers on a real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from otel_jobs.monitor.arq import ArqCollector

from .support import Polled, age_grows, ages, assert_depths, depth, poll_until, read_alike, snapshot

arq = pytest.importorskip("arq")

from arq.connections import RedisSettings, create_pool  # noqa: E402

pytestmark = pytest.mark.broker

REDIS_DB = 4
QUEUE = "mon:arq"

APP = textwrap.dedent(
    """
    import asyncio
    import os

    from arq.connections import RedisSettings


    async def ok(ctx, i):
        return i


    async def sleep(ctx, seconds):
        await asyncio.sleep(seconds)


    class WorkerSettings:
        functions = [ok, sleep]
        redis_settings = RedisSettings.from_dsn(os.environ["MON_BROKER"])
        queue_name = os.environ["MON_QUEUE"]
        poll_delay = 0.1
        job_timeout = 3600
        max_jobs = 20
    """
)


def enqueue(url: str, *jobs: tuple[Any, ...], queue: str = QUEUE, **options: Any) -> None:
    async def go() -> None:
        pool = await create_pool(RedisSettings.from_dsn(url))
        for function, *args in jobs:
            await pool.enqueue_job(function, *args, _queue_name=queue, **options)
        await pool.aclose()

    asyncio.run(go())


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(url: str, *extra: str) -> subprocess.Popen[bytes]:
        (tmp_path / "mon_arq_app.py").write_text(APP)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(MON_BROKER=url, MON_QUEUE=QUEUE, PYTHONPATH=str(tmp_path))
        with open(tmp_path / "arq-worker.log", "ab") as out:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "arq", *extra, "mon_arq_app.WorkerSettings"],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    cwd=tmp_path,
                    start_new_session=True,
                )  # fmt: skip
            )
        return procs[-1]

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_a_backlog_nobody_drains_then_a_worker_drains_it(
    redis_url: str, worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    enqueue(redis_url, *[("ok", i) for i in range(6)])
    before = snapshot(redis_url)
    with Polled([ArqCollector(redis_url, queues=[QUEUE])]) as m:
        s = m.poll()
        assert_depths(s, "arq", QUEUE, waiting=6, scheduled=0, started=0)
        age_grows(m, "arq", QUEUE, s)
        assert snapshot(redis_url) == before, "the monitor changed something in Redis"

        proc = worker(redis_url, "--burst")
        assert proc.wait(timeout=120) == 0, (tmp_path / "arq-worker.log").read_text()
        drained = m.poll()
        assert depth(drained, "arq", QUEUE, "waiting") == 0
        assert ages(drained, "arq", QUEUE) == []


def test_deferred_and_running_jobs_are_counted_in_their_state(
    redis_url: str, worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    enqueue(redis_url, ("ok", 1), _defer_by=3600)
    enqueue(redis_url, ("sleep", 600))
    with Polled([ArqCollector(redis_url, queues=[QUEUE])]) as m:
        s = m.poll()
        assert depth(s, "arq", QUEUE, "scheduled") == 1
        assert depth(s, "arq", QUEUE, "waiting") == 1
        worker(redis_url)
        s = poll_until(m, "the sleep job to be started", "arq", QUEUE, started=1)
        # The running job is still in arq's sorted set, but it is not waiting any more.
        assert depth(s, "arq", QUEUE, "waiting") == 0
        assert depth(s, "arq", QUEUE, "scheduled") == 1
        assert ages(s, "arq", QUEUE) == []


def test_more_running_jobs_than_the_first_probe_are_all_started(
    redis_url: str, worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    from otel_jobs.monitor.arq import PROBES

    running = PROBES[0] + 4  # the worker runs 20 at once: past the first probe of 16
    enqueue(redis_url, *[("sleep", 600)] * running)
    enqueue(redis_url, *[("ok", i) for i in range(3)])  # younger: they wait for a free slot
    with Polled([ArqCollector(redis_url, queues=[QUEUE])]) as m:
        worker(redis_url)
        s = poll_until(m, f"{running} jobs started", "arq", QUEUE, started=running)
        assert depth(s, "arq", QUEUE, "waiting") == 3
        # The oldest waiting job is the first "ok", not one of the running sleeps.
        ((_, outcome),) = m.monitor.outcomes()
        import redis

        client = redis.Redis.from_url(redis_url)
        scores = [score for _, score in client.zrange(QUEUE, 0, -1, withscores=True)]
        client.close()
        assert outcome.readings[0].oldest_due == sorted(scores)[running] / 1000.0


def test_two_monitors_read_the_same_figures_and_the_default_queue(redis_url: str) -> None:
    enqueue(redis_url, ("ok", 1), ("ok", 2), queue="arq:queue")
    readings = read_alike([ArqCollector(redis_url)], [ArqCollector(redis_url)])
    assert readings[0].queue == "arq:queue"
    assert readings[0].depths == {"waiting": 2, "scheduled": 0, "started": 0}
