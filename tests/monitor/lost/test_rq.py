"""RQ workers killed with their whole process group (worker and work horse), and SimpleWorker.

A forking worker's horse is in a session of its own (RQ calls ``os.setsid``): "the whole
worker" is the worker's group and the horse's. The run is counted lost once, at the first poll after its lease expired, with one span (RQ's
own registries would say so only after ``job_monitoring_interval + 60`` s and its next
clean-up); ``--requeue-lost`` puts the job back (same id, arguments, retries) and a second
worker finishes it once, reading ``previous_attempt``; a job that kills its worker every time is
requeued ``--max-lost`` times, then moved to the ``FailedJobRegistry``.
"""

from __future__ import annotations

import functools
import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry, StartedJobRegistry

from otel_jobs.monitor.lost import with_lost_runs
from otel_jobs.monitor.rq import RQCollector
from otel_jobs.monitor.settings import MonitorSettings

from ..support import Polled
from . import support as steps
from .support import Worker, listed, python, wait_for, wait_lost

pytestmark = pytest.mark.broker

REDIS_DB = 9
JOBS = "tests.monitor.lost.lost_apps"


lost, requeued = steps.counters("rq")


class Setup:
    def __init__(self, url: str, tmp: Path) -> None:
        self.url, self.dir = url, tmp
        self.queue_name = f"lost-{uuid.uuid4().hex[:8]}"
        self.connection = Redis.from_url(url)
        self.queue = Queue(self.queue_name, connection=self.connection)
        self.workers: list[Worker] = []

    def worker(self, kind: str = "Worker") -> Worker:
        worker = Worker(
            [python(), "-m", "tests.monitor.lost.rq_lost_worker"],
            self.dir / f"worker-{len(self.workers)}.log",
            LOST_BROKER=self.url, LOST_QUEUE=self.queue_name, LOST_DIR=str(self.dir),
            LOST_WORKER_CLASS=kind, OTEL_JOBS_LEASE_TTL="2",
            LOST_KILL_PARENT_GROUP="1" if kind == "Worker" else "0",
        )  # fmt: skip
        self.workers.append(worker)
        worker.wait_serving()
        return worker

    def monitor(self, **settings: object) -> Polled:
        collector = RQCollector(self.url, queues=[self.queue_name])
        given = MonitorSettings(rq_redis_url=self.url, **settings)  # type: ignore[arg-type]
        return Polled([with_lost_runs(collector, given)])

    def send(self, function: str, name: str) -> str:
        job_id = f"{function}-{name}"
        self.queue.enqueue(f"{JOBS}.{function}_body", name, job_id=job_id, job_timeout=600)
        return job_id

    def close(self) -> None:
        for worker in self.workers:
            worker.kill()
        self.connection.close()


def kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def setup(redis_url: str, tmp_path: Path) -> Iterator[Setup]:
    found = Setup(redis_url, tmp_path)
    yield found
    found.close()


@pytest.mark.parametrize("kind", ["Worker", "SimpleWorker"])
def test_killed_with_its_worker_counted_once_then_requeued_and_finished_once(
    setup: Setup, kind: str, span_exporter: InMemorySpanExporter
) -> None:
    worker = setup.worker(kind)
    job_id = setup.send("page", "p1")
    wait_for("the run started", lambda: (setup.dir / "p1.started").exists(), log=worker.log)
    wait_for("the run in its lease", lambda: listed(setup.url, job_id))
    pid = int((setup.dir / "p1.started").read_text())
    worker.kill()
    if kind == "Worker":  # RQ puts its horse in a session of its own (os.setsid)
        kill_group(pid)
    name = f"{JOBS}.page_body"
    with setup.monitor(requeue_lost=True) as monitor:
        wait_lost(monitor.poll, setup.url, job_id, lambda s: lost(s, name, setup.queue_name))
        assert requeued(monitor.scrape(), name, setup.queue_name) == 1
        spans = [s for s in span_exporter.get_finished_spans() if s.name == f"{name} lost"]
        assert len(spans) == 1 and (spans[0].attributes or {})["otel_jobs.worker.pid"] == pid
        job = Job.fetch(job_id, connection=setup.connection)
        assert job.get_status() == "queued"
        assert job_id not in StartedJobRegistry(setup.queue_name, connection=setup.connection)

        second = setup.worker(kind)
        steps.finished_once_more(second, setup.dir, "p1", name, setup.queue_name, outcome="success")
        previous = steps.previous_of(setup.dir, "p1")
        assert previous == {"progress": 0.4, "details": {"page": 7}, "lost": 1, "pid": pid}
        quick = functools.partial(setup.send, "quick", "q1")
        samples = steps.quiet_after(second, setup.dir, quick, monitor.poll)
        assert lost(samples, name, setup.queue_name) == 1
        assert samples.total("otel_jobs_runs_lost_total") == 1
    assert (setup.dir / "p1.done").read_text() == "x\n"
    assert Job.fetch(job_id, connection=setup.connection).get_status() == "finished"


def test_a_job_that_kills_its_worker_every_time_is_requeued_max_lost_times_then_failed(
    setup: Setup,
) -> None:
    name = f"{JOBS}.poison_body"
    attempts = setup.dir / "poison1.attempts"
    with setup.monitor(requeue_lost=True, max_lost=2) as monitor:
        job_id = setup.send("poison", "poison1")
        steps.killed_each_time(
            3, setup.worker, attempts, lambda: lost(monitor.poll(), name, setup.queue_name), "job"
        )
        assert requeued(monitor.poll(), name, setup.queue_name) == 2
        job = Job.fetch(job_id, connection=setup.connection)
        assert job.get_status() == "failed"
        assert job_id in FailedJobRegistry(setup.queue_name, connection=setup.connection)
        last = setup.worker()
        setup.send("quick", "after-poison")
        wait_for("a later job", lambda: (setup.dir / "after-poison.done").exists(), log=last.log)
        assert len(attempts.read_text().splitlines()) == 3
        assert lost(monitor.poll(), name, setup.queue_name) == 3
