"""arq on the real Redis: a real ``arq`` worker process, instrumented, scraped on its /metrics.

The worker runs in a subprocess started with arq's own command line; its settings module (written
below into a temporary directory) calls ``otel_jobs.instrument()`` at import, as users do. One
worker serves the whole module; each test uses job names of its own, so counts stay exact.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import otel_jobs
from tests.integrations.hooks import assert_untouched_by
from tests.integrations.workers import start, stop, wait_for, worker_env
from tests.support import Samples, free_port, require_redis, scrape

pytestmark = pytest.mark.broker

REDIS_DB = 14

WORKER_APP = textwrap.dedent(
    """
    import asyncio
    import os
    import time

    from arq import Retry
    from arq.connections import RedisSettings
    from arq.worker import func

    import otel_jobs

    otel_jobs.instrument(
        prometheus_port=int(os.environ["TEST_METRICS_PORT"]),
        watchdog_interval=0.2,
        jobs={
            "hang": {"heartbeat_timeout": 1},
            "stuck": {"heartbeat_timeout": 1, "on_stall": "cancel"},
        },
    )


    async def ok(ctx, x):
        return x


    async def fail(ctx):
        raise ValueError("boom")


    async def flaky(ctx):
        if ctx["job_try"] == 1:
            raise Retry(defer=0.1)
        return "second try"


    async def always_retry(ctx):
        raise Retry(defer=0.05)


    async def hang(ctx, flag):
        # Never heartbeats: stuck until the test creates the flag file.
        while not os.path.exists(flag):
            await asyncio.sleep(0.05)


    async def slow(ctx):
        await asyncio.sleep(300)


    async def stuck(ctx):
        await asyncio.Event().wait()  # nothing ever sets it: only a cancellation ends this


    async def stamp(ctx):
        return time.time(), ctx["score"]


    class WorkerSettings:
        functions = [ok, fail, flaky, hang, func(slow, timeout=2), stamp,
                     func(stuck, max_tries=1), func(always_retry, max_tries=2)]
        redis_settings = RedisSettings(host="127.0.0.1", port=6379, database=%(db)d)
        queue_name = os.environ["TEST_QUEUE"]
        job_timeout = 45
        poll_delay = 0.05
        max_jobs = 20
        keep_result = 300
    """
)


class ArqWorker:
    def __init__(self, queue: str, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.queue = queue
        self.url = url
        self.proc = proc
        self.log = log

    def enqueue(self, function: str, *args: Any, **options: Any) -> str:
        async def go() -> str:
            from arq import create_pool
            from arq.connections import RedisSettings

            pool = await create_pool(RedisSettings(host="127.0.0.1", port=6379, database=REDIS_DB))
            try:
                job = await pool.enqueue_job(function, *args, _queue_name=self.queue, **options)
                assert job is not None
                return str(job.job_id)
            finally:
                await pool.aclose()

        return asyncio.run(go())

    def result(self, job_id: str, timeout: float = 60.0) -> Any:
        async def go() -> Any:
            from arq import create_pool
            from arq.connections import RedisSettings
            from arq.jobs import Job

            pool = await create_pool(RedisSettings(host="127.0.0.1", port=6379, database=REDIS_DB))
            try:
                return await Job(job_id, pool, _queue_name=self.queue).result(
                    timeout=timeout, poll_delay=0.1
                )
            finally:
                await pool.aclose()

        return asyncio.run(go())

    def scrape(self) -> Samples:
        return scrape(self.url)

    def ran_once(self, job: str, outcome: str, what: str) -> Samples:
        """Enqueue ``job``, wait until it ends with ``outcome``: it started once and ended once."""
        self.enqueue(job)
        wait_for(what, lambda: self.finished(job, outcome) == 1)
        s = self.scrape()
        assert s.value("otel_jobs_runs_started_total", job_name=job, queue=self.queue) == 1
        assert s.total("otel_jobs_runs_finished_total", job_name=job, queue=self.queue) == 1
        return s

    def finished(self, job: str, outcome: str) -> float:
        return self.scrape().total(
            "otel_jobs_runs_finished_total", job_name=job, queue=self.queue, outcome=outcome
        )


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArqWorker]:
    require_redis()
    directory = tmp_path_factory.mktemp("arq_app")
    (directory / "arq_test_app.py").write_text(WORKER_APP % {"db": REDIS_DB})
    port = free_port()
    queue = f"otel-jobs-test-arq-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        PYTHONPATH=os.pathsep.join([str(directory), str(Path(__file__).parents[2])]),
        TEST_METRICS_PORT=str(port),
        TEST_QUEUE=queue,
    )
    log = directory / "worker.log"
    proc = start([sys.executable, "-m", "arq", "arq_test_app.WorkerSettings"], log, env, directory)
    url = f"http://127.0.0.1:{port}/metrics"
    running = ArqWorker(queue, url, proc, log)
    try:
        wait_for("the worker's /metrics", lambda: proc.poll() is None and running.scrape())
        yield running
    finally:
        stop(proc, timeout=30)
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
        client.delete(queue)
        client.close()


def test_success_failure_retry_counted_exactly(worker: ArqWorker) -> None:
    for i in range(5):
        worker.enqueue("ok", i)
    for _ in range(2):
        worker.enqueue("fail")
    flaky = worker.enqueue("flaky")
    worker.enqueue("always_retry")
    assert worker.result(flaky) == "second try"
    wait_for("5 ok runs", lambda: worker.finished("ok", "success") == 5)
    wait_for("2 failed runs", lambda: worker.finished("fail", "failure") == 2)

    s = worker.scrape()
    q = worker.queue
    assert s.value("otel_jobs_runs_started_total", job_name="ok", queue=q) == 5
    assert s.value("otel_jobs_runs_started_total", job_name="fail", queue=q) == 2
    assert s.value("otel_jobs_runs_started_total", job_name="flaky", queue=q) == 2
    assert s.total("otel_jobs_runs_finished_total", job_name="ok", queue=q) == 5
    assert s.total("otel_jobs_runs_finished_total", job_name="fail", queue=q) == 2
    flaky_outcomes = {
        o: s.value("otel_jobs_runs_finished_total", job_name="flaky", queue=q, outcome=o)
        for o in ("success", "failure", "retry", "timeout")
    }
    assert flaky_outcomes == {"success": 1.0, "failure": 0.0, "retry": 1.0, "timeout": 0.0}
    # Retry and cancelled series appear at their outcome's first run (docs/metrics.md): no run
    # was cancelled, and ok never retried.
    assert (
        s.find("otel_jobs_runs_finished_total", job_name="flaky", queue=q, outcome="cancelled")
        == []
    )
    assert (
        s.find("otel_jobs_runs_finished_total", job_name="ok", queue=q, outcome="cancelled") == []
    )
    assert s.find("otel_jobs_runs_finished_total", job_name="ok", queue=q, outcome="retry") == []
    assert (
        s.value("otel_jobs_run_duration_seconds_count", job_name="fail", queue=q, outcome="failure")
        == 2
    )
    # Every run waited in the queue first: one queue-wait observation per run started.
    assert s.value("otel_jobs_queue_wait_seconds_count", job_name="ok", queue=q) == 5
    assert s.value("otel_jobs_queue_wait_seconds_count", job_name="flaky", queue=q) == 2
    # Without a timeout of its own, a function's max duration is the worker's job_timeout.
    assert s.value("otel_jobs_run_max_duration_seconds", job_name="ok", queue=q) == 45
    assert s.value("otel_jobs_runs_in_progress", job_name="ok", queue=q) == 0


def test_hung_run_gets_a_stalled_verdict_then_recovers(worker: ArqWorker, tmp_path: Path) -> None:
    flag = tmp_path / "release"
    job_id = worker.enqueue("hang", str(flag))
    q = worker.queue

    def stalled() -> Samples | None:
        s = worker.scrape()
        verdicts = s.total("otel_jobs_runs_stalled", job_name="hang", queue=q)
        return s if verdicts == 1 else None

    s = wait_for("the stalled verdict on /metrics", stalled)
    assert s.value("otel_jobs_runs_in_progress", job_name="hang", queue=q) == 1
    assert (
        s.value("otel_jobs_stalls_detected_total", job_name="hang", queue=q, reason="no_heartbeat")
        == 1
    )
    states = {
        sample.labels["state"]
        for sample in s.samples
        if sample.name == "otel_jobs_runs_stalled"
        and sample.labels.get("job_name") == "hang"
        and sample.value == 1
    }
    assert len(states) == 1 and states <= {"blocked", "spinning", "unknown"}
    assert s.value("otel_jobs_run_heartbeat_timeout_seconds", job_name="hang", queue=q) == 1
    assert (
        len(s.find("otel_jobs_stalest_heartbeat_timestamp_seconds", job_name="hang", queue=q)) == 1
    )

    # The watchdog's diagnosis reads the job's coroutine stack from its task: the stuck line.
    assert wait_for(
        "the stall warning in the worker's log",
        lambda: any(
            "stalled" in line and "arq_test_app.py:" in line and "in hang" in line
            for line in worker.log.read_text().splitlines()
        ),
    )

    flag.write_text("go")
    worker.result(job_id)
    s = wait_for(
        "the hung run to finish",
        lambda: worker.finished("hang", "success") == 1 and worker.scrape(),
    )
    assert s.total("otel_jobs_runs_stalled", job_name="hang", queue=q) == 0
    assert s.value("otel_jobs_runs_in_progress", job_name="hang", queue=q) == 0
    # No run in flight: the timestamp gauges have no series, so no alert can fire on them.
    assert s.find("otel_jobs_stalest_heartbeat_timestamp_seconds", job_name="hang", queue=q) == []


def test_job_timeout_is_the_max_duration_and_ends_in_timeout(worker: ArqWorker) -> None:
    s = worker.ran_once("slow", "timeout", "the slow run to time out")
    q = worker.queue
    assert s.value("otel_jobs_run_max_duration_seconds", job_name="slow", queue=q) == 2
    # arq cancelled it at its 2 s deadline, counted from just before the run began (the task
    # starts one loop step after arq's timer): far from an early end, yet not exactly 2 s.
    assert (
        s.value("otel_jobs_run_duration_seconds_sum", job_name="slow", queue=q, outcome="timeout")
        > 1.0
    )
    assert s.value("otel_jobs_runs_in_progress", job_name="slow", queue=q) == 0


def test_watchdog_cancel_of_a_stuck_job_is_a_timeout(worker: ArqWorker) -> None:
    """on_stall=cancel: the watchdog cancels the job's task; arq does not run it again here
    (max_tries=1), so exactly one run, with outcome timeout."""
    s = worker.ran_once("stuck", "timeout", "the cancelled run")
    q = worker.queue
    assert (
        s.value("otel_jobs_stalls_detected_total", job_name="stuck", queue=q, reason="no_heartbeat")
        == 1
    )
    assert s.value("otel_jobs_runs_in_progress", job_name="stuck", queue=q) == 0


def test_queue_wait_of_a_deferred_job_is_measured_from_its_due_time(worker: ArqWorker) -> None:
    defer = 2.0
    job_id = worker.enqueue("stamp", _defer_by=defer)
    body_started, score_ms = worker.result(job_id)
    due = score_ms / 1000.0
    q = worker.queue
    s = wait_for(
        "the stamp run",
        lambda: worker.finished("stamp", "success") == 1 and worker.scrape(),
    )
    assert s.value("otel_jobs_queue_wait_seconds_count", job_name="stamp", queue=q) == 1
    wait = s.value("otel_jobs_queue_wait_seconds_sum", job_name="stamp", queue=q)
    # The run starts just before the job's body; measured from the enqueue time instead of the
    # due time it would exceed this by the whole deferral.
    assert 0 <= wait <= body_started - due + 0.001


def test_job_runs_as_the_current_run_of_its_own_task_and_uninstrument_restores(
    span_exporter: Any,
) -> None:
    """In process: a real Worker in burst mode on the real Redis, instrumented from its
    ``on_startup`` hook (after the worker was created), then uninstrumented."""
    require_redis()
    from arq import create_pool
    from arq.connections import RedisSettings
    from arq.worker import Worker, func

    original_run_job = Worker.run_job

    async def startup(ctx: dict[str, Any]) -> None:
        otel_jobs.instrument(watchdog=False, prometheus=False, frameworks=["arq"])

    async def where(ctx: dict[str, Any]) -> tuple[str, bool, int, str]:
        run = otel_jobs.current_run()
        assert run is not None
        return run.name, run.task is asyncio.current_task(), run.attempt, run.framework

    settings = RedisSettings(host="127.0.0.1", port=6379, database=REDIS_DB)
    queue = f"otel-jobs-test-arq-inproc-{uuid.uuid4().hex[:8]}"
    functions = [func(where, name="where")]

    async def go() -> tuple[Any, Worker]:
        pool = await create_pool(settings)
        worker = Worker(
            functions, queue_name=queue, redis_pool=pool, burst=True,
            handle_signals=False, poll_delay=0.05, on_startup=startup,
        )  # fmt: skip
        try:
            job = await pool.enqueue_job("where", _queue_name=queue)
            assert job is not None
            await worker.main()
            return await job.result(timeout=30), worker
        finally:
            await worker.close()

    try:
        result, worker = asyncio.run(go())
        assert Worker.run_job is not original_run_job
        assert result == ("where", True, 1, "arq")
        (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "where"]
        assert span.attributes["job.framework"] == "arq"
        assert span.attributes["job.queue"] == queue
        assert span.attributes["job.outcome"] == "success"
        assert worker.functions["where"] is not functions[0]  # a wrapped copy; the user's is intact
    finally:
        otel_jobs.uninstrument()
    assert Worker.run_job is original_run_job
    assert worker.functions["where"] is functions[0]
    # Instrumenting again hooks again, and once only.
    otel_jobs.instrument(watchdog=False, prometheus=False, frameworks=["arq"])
    assert Worker.run_job is not original_run_job
    assert Worker.run_job.__wrapped__ is original_run_job  # type: ignore[attr-defined]
    otel_jobs.uninstrument()
    assert Worker.run_job is original_run_job


def test_not_hooked_when_frameworks_leave_it_out() -> None:
    from arq.worker import Worker

    assert_untouched_by(Worker, "run_job", ["apscheduler"])
