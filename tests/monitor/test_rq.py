"""The monitor on RQ: a real Redis, real ``rq worker`` processes, the real ``/metrics``."""

from __future__ import annotations

import datetime
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_jobs.monitor.rq import RQCollector, parse_enqueued_at

from .support import Polled, age_grows, ages, depth, poll_until, read_alike, snapshot

rq = pytest.importorskip("rq")
import redis  # noqa: E402

pytestmark = pytest.mark.broker

REDIS_DB = 1
QUEUE = "mon-rq"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def worker(url: str, log: Path, *queues: str, burst: bool = True) -> subprocess.Popen[bytes]:
    """``rq worker`` (SimpleWorker: the job runs in the worker process itself)."""
    args = [sys.executable, "-m", "rq.cli", "worker", "-u", url, "-w", "rq.worker.SimpleWorker"]
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*args, *(["--burst"] if burst else []), *queues],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def test_a_backlog_nobody_drains_then_a_worker_drains_it(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    queue = rq.Queue(QUEUE, connection=client)
    for _ in range(7):
        queue.enqueue("os.getpid")
    before = snapshot(redis_url)
    with Polled([RQCollector(redis_url)]) as m:
        first = m.poll()
        assert depth(first, "rq", QUEUE, "waiting") == 7
        for state in ("scheduled", "started", "deferred", "failed"):
            assert depth(first, "rq", QUEUE, state) == 0
        # Nobody drains the queue: its oldest job only gets older.
        older = age_grows(m, "rq", QUEUE, first)
        assert older
        assert snapshot(redis_url) == before, "the monitor changed something in Redis"

        proc = worker(redis_url, tmp_path / "worker.log", QUEUE)
        assert proc.wait(timeout=120) == 0, (tmp_path / "worker.log").read_text()
        drained = m.poll()
        assert depth(drained, "rq", QUEUE, "waiting") == 0
        assert ages(drained, "rq", QUEUE) == []
        up = drained.value("otel_jobs_monitor_broker_up", framework="rq")
        assert up == 1


def test_scheduled_deferred_failed_and_started_jobs_are_counted_in_their_state(
    redis_url: str, client: redis.Redis, tmp_path: Path
) -> None:
    queue = rq.Queue(QUEUE, connection=client)
    queue.enqueue("json.loads", "{not json")  # fails
    proc = worker(redis_url, tmp_path / "burst.log", QUEUE)
    assert proc.wait(timeout=120) == 0
    queue.enqueue_in(datetime.timedelta(hours=1), "os.getpid")
    parent = rq.Queue("mon-rq-elsewhere", connection=client).enqueue("os.getpid")
    queue.enqueue("os.getpid", depends_on=parent)  # deferred until its parent has run
    with Polled([RQCollector(redis_url, queues=[QUEUE])]) as m:
        s = m.poll()
        assert depth(s, "rq", QUEUE, "failed") == 1
        assert depth(s, "rq", QUEUE, "scheduled") == 1
        assert depth(s, "rq", QUEUE, "deferred") == 1
        assert depth(s, "rq", QUEUE, "waiting") == 0
        assert depth(s, "rq", QUEUE, "started") == 0
        # A queue not asked for is not read.
        assert s.find("otel_jobs_queue_depth", queue="mon-rq-elsewhere") == []

        queue.enqueue("time.sleep", 600, job_timeout=900)
        running = worker(redis_url, tmp_path / "running.log", QUEUE, burst=False)
        try:
            s = poll_until(m, "the job to be started", "rq", QUEUE, started=1)
            assert depth(s, "rq", QUEUE, "waiting") == 0
        finally:
            os.killpg(running.pid, signal.SIGKILL)
            running.wait(timeout=30)


def test_two_monitors_read_the_same_figures(redis_url: str, client: redis.Redis) -> None:
    queue = rq.Queue(QUEUE, connection=client)
    for _ in range(3):
        queue.enqueue("os.getpid")
    queue.enqueue_in(datetime.timedelta(hours=1), "os.getpid")
    # Both up, with the same depths and the head's enqueue time, exactly.
    read_alike([RQCollector(redis_url)], [RQCollector(redis_url)])


def test_discovered_queues_are_capped_and_the_cap_is_logged_once(
    redis_url: str, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    for name in ("c", "a", "b"):
        rq.Queue(name, connection=client).enqueue("os.getpid")
    with (
        caplog.at_level(logging.WARNING, "otel_jobs.monitor"),
        Polled([RQCollector(redis_url, max_queues=2)]) as m,
    ):
        for _ in range(3):
            s = m.poll()
    assert {x.labels["queue"] for x in s.samples if x.name == "otel_jobs_queue_depth"} == {"a", "b"}
    capped = [r for r in caplog.records if "--max-queues" in r.getMessage()]
    assert len(capped) == 1 and "left out: c" in capped[0].getMessage()


def test_enqueued_at_is_read_as_rq_writes_it() -> None:
    moment = datetime.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=datetime.timezone.utc)
    written = rq.utils.utcformat(moment)
    assert parse_enqueued_at(written.encode()) == moment.timestamp()
    assert parse_enqueued_at(b"not a time") is None
    assert parse_enqueued_at(None) is None
