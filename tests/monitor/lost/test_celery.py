"""Celery prefork workers killed with their whole process group, on Redis and on RabbitMQ.

* Redis broker (the leases in the broker's Redis), early acknowledgement: the run is counted
  lost once, at the first poll after its lease expired, with one span; ``--requeue-lost``
  publishes it again (same id, arguments, retries) and a second worker finishes it once, its
  ``previous_attempt`` showing ``progress=0.4, page=7``; ``otel_jobs_runs_redelivered_total``
  on that worker.
* A task that kills its worker every time: requeued ``--max-lost`` (2) times, then not again,
  its result ``FAILURE`` (``WorkerLostError``) in the result backend; lost 3 times in all.
* RabbitMQ broker with ``OTEL_JOBS_LEASE_URL``: the same with early acknowledgement; with
  ``acks_late`` RabbitMQ redelivers the message itself: counted lost, never requeued, run once.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_jobs.monitor.celery import collector_for_app
from otel_jobs.monitor.lost import with_lost_runs
from otel_jobs.monitor.settings import MonitorSettings
from tests.support import require_rabbitmq

from ..support import Polled
from . import support as steps
from .support import Worker, listed, python, wait_for, wait_lost

pytestmark = pytest.mark.broker

REDIS_DB = 10
RABBITMQ = "amqp://guest:guest@127.0.0.1:5672//"


lost, requeued = steps.counters("celery")


class Setup:
    def __init__(self, broker: str, lease_url: str, results: str, tmp: Path, queue: str) -> None:
        self.broker, self.lease_url, self.results, self.dir = broker, lease_url, results, tmp
        self.queue = queue
        self.app = Celery("lost-test", broker=broker, backend=results or None, set_as_current=False)
        self.app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=True)
        self.workers: list[Worker] = []

    def worker(self, **env: str) -> Worker:
        name = f"lost-{uuid.uuid4().hex[:6]}@%h"
        worker = Worker(
            [python(), "-m", "celery", "-A", "tests.monitor.lost.celery_lost_app:app", "worker",
             "-Q", self.queue, "-c", "1", "--pool", "prefork", "-n", name, "--loglevel", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            self.dir / f"worker-{len(self.workers)}.log",
            LOST_BROKER=self.broker, LOST_QUEUE=self.queue, LOST_DIR=str(self.dir),
            LOST_RESULTS=self.results, OTEL_JOBS_LEASE_TTL="2",
            **({"OTEL_JOBS_LEASE_URL": self.lease_url} if self.lease_url != self.broker else {}),
            **env,
        )  # fmt: skip
        self.workers.append(worker)
        worker.wait_serving()
        return worker

    def monitor(self, **settings: Any) -> Polled:
        collector = collector_for_app(self.app)
        given = MonitorSettings(
            celery_app="lost", poll_timeout=5.0,
            lease_url=self.lease_url if self.lease_url != self.broker else None, **settings,
        )  # fmt: skip
        return Polled([with_lost_runs(collector, given, self.app)])

    def send(self, task: str, name: str) -> str:
        task_id = f"{task}-{name}"
        self.app.send_task(task, args=[name], task_id=task_id, queue=self.queue)
        return task_id

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()


@pytest.fixture
def redis_setup(redis_url: str, tmp_path: Path) -> Iterator[Setup]:
    setup = Setup(redis_url, redis_url, redis_url, tmp_path, f"lost-{uuid.uuid4().hex[:8]}")
    yield setup
    setup.close()


def kill_while_running(setup: Setup, task: str, name: str, **worker_env: str) -> tuple[str, int]:
    worker = setup.worker(**worker_env)
    task_id = setup.send(task, name)
    wait_for("the run started", lambda: (setup.dir / f"{name}.started").exists(), log=worker.log)
    wait_for("the run in its lease", lambda: listed(setup.lease_url, task_id))
    pid = int((setup.dir / f"{name}.started").read_text())
    worker.kill()
    return task_id, pid


def test_killed_with_its_worker_counted_once_then_requeued_and_finished_once(
    redis_setup: Setup, span_exporter: InMemorySpanExporter
) -> None:
    setup = redis_setup
    task_id, pid = kill_while_running(setup, "lost.page", "p1")
    with setup.monitor(requeue_lost=True) as monitor:
        wait_lost(
            monitor.poll, setup.lease_url, task_id, lambda s: lost(s, "lost.page", setup.queue)
        )
        samples = monitor.scrape()
        assert requeued(samples, "lost.page", setup.queue) == 1
        spans = [s for s in span_exporter.get_finished_spans() if s.name == "lost.page lost"]
        assert len(spans) == 1
        attrs = spans[0].attributes or {}
        assert attrs["job.id"] == task_id and attrs["otel_jobs.worker.pid"] == pid
        assert attrs["otel_jobs.lost.action"] == "requeued"

        second = setup.worker()
        steps.finished_once_more(second, setup.dir, "p1", "lost.page", setup.queue)
        previous = steps.previous_of(setup.dir, "p1")
        assert previous == {"progress": 0.4, "details": {"page": 7}, "lost": 1, "pid": pid}
        # More polls, a quick job through the same worker: nothing counted or run again.
        quick = functools.partial(setup.send, "lost.quick", "q1")
        samples = steps.quiet_after(second, setup.dir, quick, monitor.poll)
        assert lost(samples, "lost.page", setup.queue) == 1
        assert requeued(samples, "lost.page", setup.queue) == 1
        assert samples.total("otel_jobs_runs_lost_total") == 1
    assert (setup.dir / "p1.done").read_text() == "x\n"  # the side effect, once


def test_a_task_that_kills_its_worker_every_time_is_requeued_max_lost_times_then_failed(
    redis_setup: Setup,
) -> None:
    setup = redis_setup
    attempts = setup.dir / "poison1.attempts"
    with setup.monitor(requeue_lost=True, max_lost=2) as monitor:
        task_id = setup.send("lost.poison", "poison1")
        steps.killed_each_time(
            3, setup.worker, attempts, lambda: lost(monitor.poll(), "lost.poison", setup.queue),
            "task",
        )  # fmt: skip
        samples = monitor.poll()
        assert requeued(samples, "lost.poison", setup.queue) == 2
        assert setup.app.AsyncResult(task_id).state == "FAILURE"
        assert "WorkerLostError" in repr(setup.app.AsyncResult(task_id).result)
        # Not requeued a third time: a new worker runs nothing.
        last = setup.worker()
        setup.send("lost.quick", "after-poison")
        wait_for("a later job", lambda: (setup.dir / "after-poison.done").exists(), log=last.log)
        assert len(attempts.read_text().splitlines()) == 3
        assert lost(monitor.poll(), "lost.poison", setup.queue) == 3


@pytest.fixture
def rabbit_setup(redis_url: str, tmp_path: Path, rabbit_queue: str) -> Iterator[Setup]:
    require_rabbitmq()
    setup = Setup(RABBITMQ, redis_url, "", tmp_path, rabbit_queue)
    yield setup
    setup.close()


def test_on_rabbitmq_with_a_lease_url_requeued_and_finished_once(rabbit_setup: Setup) -> None:
    setup = rabbit_setup
    task_id, pid = kill_while_running(setup, "lost.page", "r1")
    with setup.monitor(requeue_lost=True) as monitor:
        wait_lost(
            monitor.poll, setup.lease_url, task_id, lambda s: lost(s, "lost.page", setup.queue)
        )
        assert requeued(monitor.scrape(), "lost.page", setup.queue) == 1
        second = setup.worker()
        wait_for("the requeued run done", lambda: (setup.dir / "r1.done").exists(), log=second.log)
        assert json.loads((setup.dir / "r1.previous").read_text())["details"] == {"page": 7}
        samples = monitor.poll()
        assert lost(samples, "lost.page", setup.queue) == 1
    assert (setup.dir / "r1.done").read_text() == "x\n"


def test_on_rabbitmq_an_acks_late_task_is_redelivered_by_the_broker_counted_never_requeued(
    rabbit_setup: Setup,
) -> None:
    setup = rabbit_setup
    task_id, pid = kill_while_running(setup, "lost.page", "late1", LOST_ACKS_LATE="1")
    with setup.monitor(requeue_lost=True) as monitor:
        wait_lost(
            monitor.poll, setup.lease_url, task_id, lambda s: lost(s, "lost.page", setup.queue)
        )
        assert requeued(monitor.scrape(), "lost.page", setup.queue) == 0
        second = setup.worker(LOST_ACKS_LATE="1")
        steps.finished_once_more(second, setup.dir, "late1", "lost.page", setup.queue)
        previous = steps.previous_of(setup.dir, "late1")
        assert previous["progress"] == 0.4 and previous["pid"] == pid  # read from Redis
        assert requeued(monitor.poll(), "lost.page", setup.queue) == 0
    assert (setup.dir / "late1.done").read_text() == "x\n"
