"""RQ's work horse: what it leaves to its worker, and what it does not do (integrations/rq_horse).

A real ``rq.Worker`` (this process is the worker, as in ``test_rq.py``'s lost-horse test) forks
a real work horse per job on the real Redis (DB 9, queue names of the test's own). The horse
emits its run's span; the worker counts the run from what the horse left in the memory they
share. A short run leaves no metrics snapshot; a run that lives through a watchdog tick counts
its start in its own snapshot; a horse killed before its first tick has its start kept with the
dead children's counts. Counts are read on the worker's merged metrics (what ``/metrics``
serves) and on its own registry.
"""

from __future__ import annotations

import os
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis import Redis
from rq import Queue, Worker

from tests.integrations.rq_support import JOBS
from tests.integrations.workers import WAIT, wait_for

pytestmark = pytest.mark.broker


@pytest.fixture
def queue(redis_db: Redis) -> Iterator[Queue]:
    q = Queue(f"otj-rqh-{uuid.uuid4().hex[:8]}", connection=redis_db)
    yield q
    q.delete(delete_jobs=True)


def _merged(agent: Any) -> Callable[..., float]:
    """The value of a sample on the worker's merged metrics (0 when absent)."""
    families = agent.share.merged(agent.telemetry.registry)

    def value(sample: str, **labels: str) -> float:
        for family in families.values():
            for (name, found), number in family["samples"].items():
                if name == sample and dict(found).items() >= labels.items():
                    return float(number)
        return 0.0

    return value


def _snapshots(agent: Any) -> list[str]:
    return [name for name in agent.share.names() if name.endswith(".json")]


def test_short_runs_leave_no_snapshot_and_are_counted_by_the_worker(
    instrumented: Callable[..., Any], redis_db: Redis, queue: Queue, keep_signal_handlers: None
) -> None:
    agent = instrumented(frameworks=["rq"], outbound=[])
    for i in range(3):
        queue.enqueue(f"{JOBS}.ok", i)
    queue.enqueue(f"{JOBS}.boom")
    Worker([queue], connection=redis_db).work(burst=True)

    assert _snapshots(agent) == []  # no horse wrote one (their runs ended before a tick)
    registry = agent.telemetry.registry
    ok = {"job_name": f"{JOBS}.ok", "queue": queue.name}
    boom = {"job_name": f"{JOBS}.boom", "queue": queue.name}
    assert registry.get_sample_value("otel_jobs_runs_started_total", ok) == 3
    assert (
        registry.get_sample_value("otel_jobs_runs_finished_total", {**ok, "outcome": "success"})
        == 3
    )
    assert registry.get_sample_value("otel_jobs_runs_started_total", boom) == 1
    assert (
        registry.get_sample_value("otel_jobs_runs_finished_total", {**boom, "outcome": "failure"})
        == 1
    )
    assert registry.get_sample_value("otel_jobs_queue_wait_seconds_count", ok) == 3
    assert registry.get_sample_value("otel_jobs_run_duration_seconds_count",
                                     {**ok, "outcome": "success"}) == 3  # fmt: skip
    value = _merged(agent)
    assert value("otel_jobs_runs_started_total", **ok) == 3  # counted once, not in the horses
    assert value("otel_jobs_runs_in_progress", **ok) == 0


def test_a_run_through_a_tick_counts_its_start_in_its_snapshot_then_the_worker_its_end(
    instrumented: Callable[..., Any], redis_db: Redis, queue: Queue, keep_signal_handlers: None
) -> None:
    agent = instrumented(frameworks=["rq"], outbound=[], watchdog_interval=0.2)
    queue.enqueue(f"{JOBS}.sleepy", 1.0)
    labels = {"job_name": f"{JOBS}.sleepy", "queue": queue.name}
    # Worker.work() installs signal handlers, so it runs in this (main) thread; a thread watches.
    seen: dict[str, float] = {}

    def watch() -> None:
        def in_flight() -> bool:
            value = _merged(agent)
            if value("otel_jobs_runs_in_progress", **labels) == 1:
                seen["started"] = value("otel_jobs_runs_started_total", **labels)
                return True
            return False

        wait_for("the run in flight on the worker's metrics", in_flight)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    Worker([queue], connection=redis_db).work(burst=True)
    watcher.join(timeout=WAIT)
    assert seen == {"started": 1}  # the horse's first tick: its start, in its snapshot
    registry = agent.telemetry.registry
    assert registry.get_sample_value("otel_jobs_runs_started_total", labels) == 0  # not here
    assert (
        registry.get_sample_value("otel_jobs_runs_finished_total", {**labels, "outcome": "success"})
        == 1
    )
    value = _merged(agent)
    assert value("otel_jobs_runs_started_total", **labels) == 1  # once
    assert value("otel_jobs_runs_finished_total", outcome="success", **labels) == 1
    assert value("otel_jobs_queue_wait_seconds_count", **labels) == 1
    assert value("otel_jobs_runs_in_progress", **labels) == 0


def test_a_horse_killed_before_its_first_tick_has_its_start_counted_once(
    instrumented: Callable[..., Any],
    redis_db: Redis,
    queue: Queue,
    keep_signal_handlers: None,
    tmp_path: Any,
) -> None:
    import socket

    agent = instrumented(frameworks=["rq"], outbound=[], watchdog=False)  # no tick at all
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    pid_file = tmp_path / "horse.pid"
    queue.enqueue(f"{JOBS}.hang", str(pid_file), server.getsockname()[1], job_timeout=600)

    def kill_the_horse() -> None:
        wait_for("the horse", lambda: pid_file.exists() and pid_file.read_text())
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_the_horse, daemon=True)
    killer.start()
    try:
        Worker([queue], connection=redis_db).work(burst=True)
    finally:
        killer.join(timeout=WAIT)
        server.close()
    labels = {"job_name": f"{JOBS}.hang", "queue": queue.name}
    value = _merged(agent)
    assert value("otel_jobs_runs_started_total", **labels) == 1
    assert value("otel_jobs_runs_finished_total", outcome="failure", **labels) == 1
    assert value("otel_jobs_queue_wait_seconds_count", **labels) == 1
    assert value("otel_jobs_runs_in_progress", **labels) == 0
