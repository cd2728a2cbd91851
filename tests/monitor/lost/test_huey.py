"""Huey process consumers killed with their whole process group, on a real Redis, requeued.

Huey keeps no copy of a task once a consumer took it: the lease entry carries its message.

* ``--requeue-lost``: the run is counted lost once, at the first poll after its lease expired,
  with one span (``otel_jobs.lost.action`` ``requeued``); its message is back on the queue with
  the same id, arguments and retries, and a second consumer runs it once, as the same attempt,
  reading ``previous_attempt`` (progress 0.4, page 7, the lost worker's pid) and counting one
  ``otel_jobs_runs_redelivered_total``.
* A task that kills its consumer every time: requeued ``--max-lost`` (2) times, then not again:
  its result is Huey's error saying it was lost (``result.get()`` raises ``TaskException``);
  lost 3 times in all, run 3 times.
"""

from __future__ import annotations

import functools
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_jobs.monitor.lost import with_lost_runs
from otel_jobs.monitor.settings import MonitorSettings

from ..support import Polled
from . import support as steps
from .support import Worker, listed, python, wait_for, wait_lost

pytestmark = pytest.mark.broker

REDIS_DB = 15
APP = "tests.monitor.lost.huey_lost_app"


class Setup:
    def __init__(self, url: str, tmp: Path) -> None:
        from huey import RedisHuey

        self.url, self.dir = url, tmp
        self.queue = f"lost-{uuid.uuid4().hex[:8]}"
        self.producer = RedisHuey(self.queue, url=url)
        self.workers: list[Worker] = []
        self.tasks: dict[str, Any] = {}
        # Huey names a task after its module: the consumer's module, for the consumer to find
        # it; the producer declares the same retries as the consumer's task.
        for name, retries in (("lost_retried_page", 2), ("lost_poison", 0), ("lost_quick", 0)):

            def stub(arg: str) -> None: ...

            stub.__module__ = APP
            self.tasks[name] = self.producer.task(name=name, retries=retries)(stub)

    def name(self, task: str) -> str:
        return f"{APP}.{task}"

    def worker(self) -> Worker:
        consumer = str(Path(sys.executable).parent / "huey_consumer")
        worker = Worker(
            [python(), consumer, f"{APP}.huey", "-k", "process", "-w", "1", "-d", "0.1",
             "--no-periodic"],
            self.dir / f"worker-{len(self.workers)}.log",
            LOST_BROKER=self.url, LOST_QUEUE=self.queue, LOST_DIR=str(self.dir),
            OTEL_JOBS_LEASE_TTL="2",
        )  # fmt: skip
        self.workers.append(worker)
        worker.wait_serving()
        return worker

    def monitor(self, **settings: Any) -> Polled:
        from otel_jobs.monitor.huey import HueyCollector

        given = MonitorSettings(**settings)
        return Polled([with_lost_runs(HueyCollector(self.producer), given, self.producer)])

    def waiting(self) -> list[Any]:
        """The messages on the queue, as Huey reads them back."""
        return [self.producer.deserialize_task(m) for m in self.producer.storage.enqueued_items()]

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.producer.storage.conn.close()


@pytest.fixture
def setup(redis_url: str, tmp_path: Path) -> Iterator[Setup]:
    found = Setup(redis_url, tmp_path)
    yield found
    found.close()


lost, requeued = steps.counters("huey")


def test_killed_with_its_consumer_requeued_and_finished_once_as_the_same_attempt(
    setup: Setup, span_exporter: InMemorySpanExporter
) -> None:
    name = setup.name("lost_retried_page")
    worker = setup.worker()
    job_id = str(setup.tasks["lost_retried_page"]("p1").id)
    wait_for("the run started", lambda: (setup.dir / "p1.started").exists(), log=worker.log)
    wait_for("the run in its lease", lambda: listed(setup.url, job_id))
    pid = int((setup.dir / "p1.started").read_text())
    worker.kill()
    assert setup.waiting() == []  # Huey took the message: only the lease has it now

    with setup.monitor(requeue_lost=True) as monitor:
        wait_lost(monitor.poll, setup.url, job_id, lambda s: lost(s, name, setup.queue))
        assert requeued(monitor.scrape(), name, setup.queue) == 1
        spans = [s for s in span_exporter.get_finished_spans() if s.name == f"{name} lost"]
        assert len(spans) == 1
        attrs = spans[0].attributes or {}
        assert attrs["otel_jobs.lost.action"] == "requeued"
        assert attrs["job.id"] == job_id and attrs["otel_jobs.worker.pid"] == pid
        (back,) = setup.waiting()
        assert (back.id, back.args, back.kwargs, back.retries) == (job_id, ("p1",), {}, 2)

        second = setup.worker()
        steps.finished_once_more(second, setup.dir, "p1", name, setup.queue, outcome="success")
        previous = steps.previous_of(setup.dir, "p1")
        assert previous == {"progress": 0.4, "details": {"page": 7}, "lost": 1, "pid": pid}
        # The same id and attempt number (Huey's retries kept) both times.
        assert (setup.dir / "p1.runs").read_text().splitlines() == [f"{job_id} 1"] * 2
        quick = functools.partial(setup.tasks["lost_quick"], "q1")
        samples = steps.quiet_after(second, setup.dir, quick, monitor.poll)
        assert lost(samples, name, setup.queue) == 1
        assert samples.total("otel_jobs_runs_lost_total") == 1
        assert samples.total("otel_jobs_runs_requeued_total") == 1
    assert (setup.dir / "p1.done").read_text() == "x\n"
    assert setup.waiting() == []


def test_a_task_that_kills_its_consumer_every_time_is_requeued_max_lost_times_then_failed(
    setup: Setup,
) -> None:
    from huey.exceptions import TaskException

    name = setup.name("lost_poison")
    attempts = setup.dir / "poison1.attempts"
    with setup.monitor(requeue_lost=True, max_lost=2) as monitor:
        result = setup.tasks["lost_poison"]("poison1")
        steps.killed_each_time(
            3, setup.worker, attempts, lambda: lost(monitor.poll(), name, setup.queue), "task"
        )
        assert requeued(monitor.poll(), name, setup.queue) == 2
        assert setup.waiting() == []
        with pytest.raises(TaskException, match="lost with its worker 3 times"):
            result.get()
        last = setup.worker()
        setup.tasks["lost_quick"]("after-poison")
        wait_for("a later task", lambda: (setup.dir / "after-poison.done").exists(), log=last.log)
        assert len(attempts.read_text().splitlines()) == 3
        assert lost(monitor.poll(), name, setup.queue) == 3


def test_no_requeue_without_the_monitors_huey_instance(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A run of another Huey instance on the same Redis is counted, never put on this one's
    queue (its message belongs to the other's)."""
    setup = Setup(redis_url, tmp_path)
    try:
        worker = setup.worker()
        job_id = str(setup.tasks["lost_retried_page"]("p1").id)
        wait_for("the run in its lease", lambda: listed(setup.url, job_id), log=worker.log)
        worker.kill()
        from huey import RedisHuey

        from otel_jobs.monitor.huey import HueyCollector

        other = RedisHuey(f"other-{setup.queue}", url=redis_url)
        given = MonitorSettings(requeue_lost=True)
        name = setup.name("lost_retried_page")
        with Polled([with_lost_runs(HueyCollector(other), given, other)]) as monitor:
            wait_lost(monitor.poll, redis_url, job_id, lambda s: lost(s, name, setup.queue))
            assert requeued(monitor.scrape(), name, setup.queue) == 0
        assert "is not a task of the Huey instance" in caplog.text
        assert setup.waiting() == [] and list(other.storage.enqueued_items()) == []
        other.storage.conn.close()
    finally:
        setup.close()
