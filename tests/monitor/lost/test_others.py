"""Dramatiq, arq and Huey workers killed with their whole process group, on a real Redis.

Each: a run in flight (``heartbeat(progress=0.4, page=7)``) is counted lost once by the monitor,
at the first poll after its worker's lease expired, with one ``<job> lost`` span. Dramatiq and
arq hand such a run out again by themselves: it is counted, never requeued
(``otel_jobs.lost.action`` ``broker_redelivers``), and a second worker runs it once, reading
``previous_attempt`` and counting ``otel_jobs_runs_redelivered_total`` (Dramatiq with a 3 s
heartbeat timeout and maintenance at every fetch, arq with a 5 s job timeout, so that they hand
it out within seconds); Huey without ``--requeue-lost``: counted only (its requeue and poison
task: ``test_huey.py``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_jobs.monitor.base import Collector
from otel_jobs.monitor.lost import with_lost_runs
from otel_jobs.monitor.settings import MonitorSettings
from tests.support import Samples, require_rabbitmq

from ..support import Polled
from . import support as steps
from .support import listed, python, wait_for, wait_lost

pytestmark = pytest.mark.broker

REDIS_DB = 13
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672"


def run_and_kill(
    tmp: Path,
    url: str,
    command: list[str],
    send: Callable[[str], str],
    collector: Collector,
    owner: Any,
    framework: str,
    job_name: str,
    queue: str,
    spans: InMemorySpanExporter,
    requeue: bool = True,
    **env: str,
) -> tuple[str, int]:
    worker = steps.Workers(command, tmp, url, queue, False, **env)("worker.log")
    try:
        worker.wait_serving()
        job_id = send("p1")
        wait_for("the run started", lambda: (tmp / "p1.started").exists(), log=worker.log)
        wait_for("the run in its lease", lambda: listed(url, job_id))
        pid = int((tmp / "p1.started").read_text())
    finally:
        worker.kill()

    def lost(samples: Samples) -> float:
        return samples.total(
            "otel_jobs_runs_lost_total", framework=framework, job_name=job_name, queue=queue
        )

    settings = MonitorSettings(requeue_lost=requeue)
    with Polled([with_lost_runs(collector, settings, owner)]) as monitor:
        wait_lost(monitor.poll, url, job_id, lost)
        for _ in range(2):
            samples = monitor.poll()
        assert lost(samples) == 1
        assert samples.total("otel_jobs_runs_requeued_total") == 0
    found = [s for s in spans.get_finished_spans() if s.name == f"{job_name} lost"]
    assert len(found) == 1
    attrs = found[0].attributes or {}
    assert attrs["job.id"] == job_id and attrs["job.progress"] == 0.4
    assert attrs["otel_jobs.lost.action"] == (
        "counted" if framework == "huey" else "broker_redelivers"
    )
    return job_id, pid


def handed_out_again(
    tmp: Path, url: str, command: list[str], queue: str, job_name: str, pid: int, **env: str
) -> None:
    """A second worker runs the job its broker handed out again, once, knowing what the lost
    attempt reached."""
    worker = steps.Workers(command, tmp, url, queue, False, **env)("worker-2.log")
    try:
        worker.wait_serving()
        steps.finished_once_more(worker, tmp, "p1", job_name, queue)
        previous = steps.previous_of(tmp, "p1")
        assert previous["progress"] == 0.4 and previous["details"] == {"page": 7}
        assert previous["pid"] == pid
        assert (tmp / "p1.done").read_text() == "x\n"
    finally:
        worker.kill()


def test_dramatiq(redis_url: str, tmp_path: Path, span_exporter: InMemorySpanExporter) -> None:
    import dramatiq
    from dramatiq.brokers.redis import RedisBroker

    from otel_jobs.monitor.dramatiq import collector_for_broker

    queue = f"lost-{uuid.uuid4().hex[:8]}"
    broker = RedisBroker(url=redis_url)

    def send(name: str) -> str:
        message = dramatiq.Message(
            queue_name=queue, actor_name="lost_page", args=(name,), kwargs={}, options={}
        )
        broker.enqueue(message)
        return message.message_id

    command = [python(), "-m", "otel_jobs.integrations.dramatiq",
               "tests.monitor.lost.dramatiq_lost_app", "--processes", "1", "--threads", "1"]  # fmt: skip
    env = {
        "OTEL_JOBS_FRAMEWORKS": "dramatiq", "OTEL_JOBS_PROMETHEUS_PORT": "{port}",
        "LOST_DRAMATIQ_HEARTBEAT_TIMEOUT": "3000", "LOST_DRAMATIQ_MAINTENANCE_CHANCE": "1000000",
    }  # fmt: skip
    try:
        _, pid = run_and_kill(
            tmp_path, redis_url, command, send,
            collector_for_broker(broker, queues=[queue]), broker, "dramatiq", "lost_page", queue,
            span_exporter, **env,
        )  # fmt: skip
        handed_out_again(tmp_path, redis_url, command, queue, "lost_page", pid, **env)
    finally:
        broker.close()


def test_arq(redis_url: str, tmp_path: Path, span_exporter: InMemorySpanExporter) -> None:
    from arq import create_pool
    from arq.connections import RedisSettings

    from otel_jobs.monitor.arq import ArqCollector

    queue = f"lost-{uuid.uuid4().hex[:8]}"

    def send(name: str) -> str:
        async def enqueue() -> str:
            pool = await create_pool(RedisSettings.from_dsn(redis_url))
            job = await pool.enqueue_job("lost_page", name, _queue_name=queue)
            await pool.aclose()
            assert job is not None
            return job.job_id

        return asyncio.run(enqueue())

    command = [python(), "-m", "arq", "tests.monitor.lost.arq_lost_app.WorkerSettings"]
    _, pid = run_and_kill(
        tmp_path, redis_url, command, send, ArqCollector(redis_url, queues=[queue]), None,
        "arq", "lost_page", queue, span_exporter, LOST_ARQ_TIMEOUT="5",
    )  # fmt: skip
    handed_out_again(tmp_path, redis_url, command, queue, "lost_page", pid, LOST_ARQ_TIMEOUT="5")


def test_huey(redis_url: str, tmp_path: Path, span_exporter: InMemorySpanExporter) -> None:
    from huey import RedisHuey

    from otel_jobs.monitor.huey import HueyCollector

    queue = f"lost-{uuid.uuid4().hex[:8]}"
    producer = RedisHuey(queue, url=redis_url)

    def page_stub(name: str) -> None: ...

    # Huey names a task after its module: the consumer's module, for the consumer to find it.
    page_stub.__module__ = "tests.monitor.lost.huey_lost_app"
    page = producer.task(name="lost_page")(page_stub)

    def send(name: str) -> str:
        return str(page(name).id)

    consumer = str(Path(sys.executable).parent / "huey_consumer")
    command = [python(), consumer, "tests.monitor.lost.huey_lost_app.huey", "-k", "process",
               "-w", "1", "-d", "0.1", "--no-periodic"]  # fmt: skip
    run_and_kill(
        tmp_path, redis_url, command, send, HueyCollector(producer), producer,
        "huey", "tests.monitor.lost.huey_lost_app.lost_page", queue, span_exporter,
        requeue=False,
    )  # fmt: skip
    assert os.environ.get("LOST_WORKER") is None  # the producer side was never instrumented


def test_arq_a_job_that_kills_its_worker_every_time_is_stopped_by_max_tries(
    redis_url: str, tmp_path: Path, span_exporter: InMemorySpanExporter
) -> None:
    """arq hands a lost job out again by itself, one ``job_try`` higher each time: the monitor
    counts every loss and requeues none (``--max-lost`` does not apply), and arq's own
    ``max_tries`` (2 here) stops the poison job: run twice, then failed by arq without running
    ("max 2 retries exceeded")."""
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.jobs import Job

    from otel_jobs.monitor.arq import ArqCollector

    queue = f"lost-{uuid.uuid4().hex[:8]}"
    name = "lost_poison"
    attempts = tmp_path / "poison1.attempts"

    async def enqueue() -> str:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        job = await pool.enqueue_job(name, "poison1", _queue_name=queue)
        await pool.aclose()
        assert job is not None
        return job.job_id

    async def result_of(job_id: str) -> Any:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
        try:
            return await Job(job_id, pool, _queue_name=queue).result_info()
        finally:
            await pool.aclose()

    command = [python(), "-m", "arq", "tests.monitor.lost.arq_lost_app.WorkerSettings"]
    worker = steps.Workers(
        command, tmp_path, redis_url, queue, True, LOST_ARQ_TIMEOUT="5", LOST_ARQ_MAX_TRIES="2"
    )

    def lost(samples: Samples) -> float:
        return samples.total(
            "otel_jobs_runs_lost_total", framework="arq", job_name=name, queue=queue
        )

    settings = MonitorSettings(requeue_lost=True, max_lost=1)
    collector = ArqCollector(redis_url, queues=[queue])
    try:
        with Polled([with_lost_runs(collector, settings)]) as monitor:
            job_id = asyncio.run(enqueue())
            steps.killed_each_time(2, worker, attempts, lambda: lost(monitor.poll()), "job")
            last = worker()
            result = wait_for(
                "arq to fail the job", lambda: asyncio.run(result_of(job_id)), log=last.log
            )
            assert result.success is False and "max 2 retries exceeded" in str(result.result)
            assert len(attempts.read_text().splitlines()) == 2
            samples = monitor.poll()
            assert lost(samples) == 2
            assert samples.total("otel_jobs_runs_requeued_total") == 0
    finally:
        worker.kill()
    spans = [s for s in span_exporter.get_finished_spans() if s.name == f"{name} lost"]
    assert [(s.attributes or {})["otel_jobs.lost.action"] for s in spans] == [
        "broker_redelivers"
    ] * 2
    assert [(s.attributes or {})["job.attempt"] for s in spans] == [1, 2]


@pytest.mark.parametrize("kind", ["redis", "rabbitmq"])
def test_dramatiq_a_message_that_kills_its_worker_every_time_is_lost_max_lost_plus_one_times_then_dead_lettered(
    kind: str, redis_url: str, tmp_path: Path, span_exporter: InMemorySpanExporter
) -> None:
    """Dramatiq hands a dead worker's unacknowledged message out again as it was, and its
    ``Retries`` counts only runs that raised (``max_retries=0`` here). With ``--requeue-lost``
    the monitor writes each loss, with ``--max-lost`` (1), into the message (Redis broker) or
    in Redis for the worker to read when RabbitMQ says it redelivered the message; the worker
    that is handed it once more than that fails it into the dead-letter queue without running
    it: run and lost twice, then dead-lettered, counted by that worker."""
    import dramatiq

    from otel_jobs.monitor.dramatiq import collector_for_broker

    name = "lost_poison"
    attempts = tmp_path / "poison1.attempts"
    env = {"OTEL_JOBS_FRAMEWORKS": "dramatiq", "OTEL_JOBS_PROMETHEUS_PORT": "{port}"}
    broker: Any
    if kind == "redis":
        from dramatiq.brokers.redis import RedisBroker

        queue, url, broker = f"lost-{uuid.uuid4().hex[:8]}", redis_url, RedisBroker(url=redis_url)
        env.update(
            LOST_DRAMATIQ_HEARTBEAT_TIMEOUT="3000", LOST_DRAMATIQ_MAINTENANCE_CHANCE="1000000"
        )
    else:
        from dramatiq.brokers.rabbitmq import RabbitmqBroker

        require_rabbitmq()
        queue, url = f"lost-{uuid.uuid4().hex[:8]}", RABBITMQ_URL
        broker = RabbitmqBroker(url=url)
        env.update(OTEL_JOBS_LEASE_URL=redis_url)
    command = [python(), "-m", "otel_jobs.integrations.dramatiq",
               "tests.monitor.lost.dramatiq_lost_app", "--processes", "1", "--threads", "1"]  # fmt: skip
    worker = steps.Workers(command, tmp_path, url, queue, False, **env)

    def lost(samples: Samples) -> float:
        return samples.total(
            "otel_jobs_runs_lost_total", framework="dramatiq", job_name=name, queue=queue
        )

    def dead_lettered() -> bool:
        if kind == "redis":
            return broker.client.zscore(f"{broker.namespace}:{queue}.XQ", stored) is not None
        return bool(broker.get_queue_message_counts(queue)[2] == 1)

    message = dramatiq.Message(
        queue_name=queue, actor_name=name, args=("poison1",), kwargs={}, options={}
    )
    settings = MonitorSettings(
        requeue_lost=True, max_lost=1, lease_url=redis_url if kind == "rabbitmq" else None
    )
    collector = collector_for_broker(broker, queues=[queue])
    try:
        with Polled([with_lost_runs(collector, settings, broker)]) as monitor:
            stored = broker.enqueue(message).options.get("redis_message_id")  # the broker's id
            steps.killed_each_time(2, worker, attempts, lambda: lost(monitor.poll()), "message")
            last = worker()
            wait_for("the message in the dead-letter queue", dead_lettered, log=last.log)
            samples = last.wait_for(
                "the dead letter counted",
                lambda s: s.total("otel_jobs_runs_dead_lettered_total", job_name=name) >= 1,
            )
            assert (
                samples.value(
                    "otel_jobs_runs_finished_total", job_name=name, queue=queue, outcome="cancelled"
                )
                == 1
            )
            assert (
                samples.value("otel_jobs_runs_redelivered_total", job_name=name, queue=queue) == 1
            )
            assert (
                samples.value("otel_jobs_runs_dead_lettered_total", job_name=name, queue=queue) == 1
            )
            assert last.proc.poll() is None  # not run: its worker lives on
            assert len(attempts.read_text().splitlines()) == 2
            assert "lost with its worker 2 times" in last.tail()
            samples = monitor.poll()
            assert lost(samples) == 2
            assert samples.total("otel_jobs_runs_requeued_total") == 0
        if kind == "redis":
            assert broker.client.hlen(f"{broker.namespace}:{queue}.msgs") == 0
        else:
            assert broker.get_queue_message_counts(queue)[0] == 0
    finally:
        worker.kill()
        if kind == "rabbitmq":
            for suffix in ("", ".DQ", ".XQ"):
                broker.channel.queue_delete(queue + suffix)
        broker.close()
    spans = [s for s in span_exporter.get_finished_spans() if s.name == f"{name} lost"]
    assert [(s.attributes or {})["otel_jobs.lost.action"] for s in spans] == [
        "broker_redelivers",
        "dead_letter_on_redelivery",
    ]
    assert [(s.attributes or {})["job.attempt"] for s in spans] == [1, 1]
