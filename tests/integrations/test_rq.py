"""RQ with real ``rq worker`` processes on the real Redis, read through the worker's real /metrics.

Each test starts its own worker (``rq worker -c tests.integrations.rq_settings``, which calls
``otel_jobs.instrument()`` at start-up) on Redis DB 11 with queue names of its own, so the
counts on its /metrics are exactly those of the jobs the test enqueued.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from rq import Queue, Retry
from rq.job import Job, JobStatus

from tests.support import Samples, free_port, require_redis, scrape

ROOT = Path(__file__).resolve().parents[2]
REDIS_URL = "redis://127.0.0.1:6379/11"
JOBS = "tests.integrations.rq_jobs"
WAIT = 90.0  # generous: the machine is shared and slow

pytestmark = pytest.mark.broker


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(0.2)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


@dataclass
class RQWorker:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def metrics(self) -> Samples:
        return scrape(self.url)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def finished(self, **labels: str) -> float:
        return self.metrics().total("otel_jobs_runs_finished_total", **labels)


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            found.append(int(entry))
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def redis_db() -> Iterator[Redis]:
    require_redis()
    connection = Redis.from_url(REDIS_URL, socket_timeout=10, socket_connect_timeout=10)
    yield connection
    connection.close()


@pytest.fixture
def queue_name() -> Callable[[str], str]:
    prefix = f"otj-rq-{uuid.uuid4().hex[:8]}"
    return lambda name: f"{prefix}-{name}"


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., RQWorker]]:
    """``start_worker(*queues, worker_class=..., jobs=..., url=..., instrument=True)``."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(
        *queues: str,
        worker_class: str = "rq.Worker",
        jobs: dict[str, Any] | None = None,
        url: str = REDIS_URL,
        instrument: bool = True,
        wait_ready: bool = True,
    ) -> RQWorker:
        port = free_port()
        env = {
            **os.environ,
            "OTEL_JOBS_PROMETHEUS_PORT": str(port),
            "OTEL_JOBS_FRAMEWORKS": "rq",
            "OTEL_JOBS_TEST_JOBS": json.dumps(jobs or {}),
            "OTEL_JOBS_TEST_NO_INSTRUMENT": "" if instrument else "1",
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        log = tmp_path / f"worker-{port}.log"
        command = [
            sys.executable, "-m", "rq.cli", "worker", "-c", "tests.integrations.rq_settings",
            "-u", url, "-w", worker_class, "--name", f"otj-{port}", *queues,
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        worker = RQWorker(proc, f"http://127.0.0.1:{port}/metrics", log)
        if wait_ready:
            wait_for(
                f"the worker to start (log: {log})",
                lambda: proc.poll() is None and "Listening on" in worker.output(),
            )
            if instrument:
                wait_for("its /metrics", worker.metrics)
        return worker

    yield start
    for proc in procs:
        for child in _children(proc.pid):  # work horses run in process groups of their own
            _kill(child)
        _kill(proc.pid)
        proc.wait(timeout=30)


def statuses(jobs: list[Job]) -> list[str]:
    return [job.get_status(refresh=True) for job in jobs]


def all_done(jobs: list[Job]) -> bool:
    return all(s in (JobStatus.FINISHED, JobStatus.FAILED) for s in statuses(jobs))


def test_outcomes_counts_and_queue_wait(redis_db, queue_name, start_worker) -> None:
    """Counts on /metrics equal the jobs enqueued; queue wait is measured from enqueued_at."""
    q = Queue(queue_name("main"), connection=redis_db)
    jobs = [q.enqueue(f"{JOBS}.ok", i, job_timeout=45) for i in range(6)]
    jobs += [q.enqueue(f"{JOBS}.boom") for _ in range(3)]
    launched = time.time()  # no job can start before the worker exists
    worker = start_worker(q.name)

    wait_for("9 finished runs", lambda: worker.finished(queue=q.name) == 9)
    wait_for("RQ to record every job's end", lambda: all_done(jobs))
    m = worker.metrics()
    ok = {"job_name": f"{JOBS}.ok", "queue": q.name}
    boom = {"job_name": f"{JOBS}.boom", "queue": q.name}
    assert m.value("otel_jobs_runs_started_total", **ok) == 6
    assert m.value("otel_jobs_runs_started_total", **boom) == 3
    assert m.value("otel_jobs_runs_finished_total", outcome="success", **ok) == 6
    assert m.value("otel_jobs_runs_finished_total", outcome="failure", **boom) == 3
    assert m.total("otel_jobs_runs_finished_total", queue=q.name) == 9
    assert m.value("otel_jobs_run_duration_seconds_count", outcome="success", **ok) == 6
    assert m.total("otel_jobs_runs_in_progress", queue=q.name) == 0
    assert m.find("otel_jobs_oldest_run_start_timestamp_seconds", queue=q.name) == []
    assert statuses(jobs) == [JobStatus.FINISHED] * 6 + [JobStatus.FAILED] * 3

    # queue wait: one observation per run, between the worker's launch and RQ's own start
    for job in jobs:
        job.refresh()
    lower = sum(launched - job.enqueued_at.timestamp() for job in jobs)
    upper = sum((job.started_at - job.enqueued_at).total_seconds() for job in jobs)
    assert m.total("otel_jobs_queue_wait_seconds_count", queue=q.name) == 9
    waited = m.total("otel_jobs_queue_wait_seconds_sum", queue=q.name)
    assert lower <= waited <= upper, (lower, waited, upper)


def test_retry(redis_db, queue_name, start_worker) -> None:
    """An exception with Retry attempts left, and a returned Retry, are outcome retry."""
    q = Queue(queue_name("retry"), connection=redis_db)
    failing = q.enqueue(f"{JOBS}.boom", retry=Retry(max=2))
    returning = q.enqueue(f"{JOBS}.retry_once")
    worker = start_worker(q.name)

    wait_for("5 finished runs", lambda: worker.finished(queue=q.name) == 5)
    wait_for("RQ to end both jobs", lambda: all_done([failing, returning]))
    m = worker.metrics()
    boom = {"job_name": f"{JOBS}.boom", "queue": q.name}
    once = {"job_name": f"{JOBS}.retry_once", "queue": q.name}
    assert m.value("otel_jobs_runs_started_total", **boom) == 3
    assert m.value("otel_jobs_runs_finished_total", outcome="retry", **boom) == 2
    assert m.value("otel_jobs_runs_finished_total", outcome="failure", **boom) == 1
    assert m.value("otel_jobs_runs_started_total", **once) == 2
    assert m.value("otel_jobs_runs_finished_total", outcome="retry", **once) == 1
    assert m.value("otel_jobs_runs_finished_total", outcome="success", **once) == 1
    assert m.total("otel_jobs_runs_finished_total", queue=q.name) == 5
    assert statuses([failing, returning]) == [JobStatus.FAILED, JobStatus.FINISHED]


def test_time_limit_is_outcome_timeout(redis_db, queue_name, start_worker) -> None:
    q = Queue(queue_name("limit"), connection=redis_db)
    job = q.enqueue(f"{JOBS}.sleepy", 60, job_timeout=1)
    worker = start_worker(q.name)

    labels = {"job_name": f"{JOBS}.sleepy", "queue": q.name}
    wait_for("the timeout", lambda: worker.finished(outcome="timeout", **labels) == 1)
    m = worker.metrics()
    assert m.value("otel_jobs_runs_started_total", **labels) == 1
    assert m.total("otel_jobs_runs_finished_total", **labels) == 1
    assert m.total("otel_jobs_runs_in_progress", **labels) == 0
    wait_for("RQ to fail the job", lambda: job.get_status(refresh=True) == JobStatus.FAILED)
    assert "JobTimeoutException" in (job.latest_result().exc_string or "")


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A TCP server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    yield server.getsockname()[1]
    server.close()


def _verdict_logged(log: str, job_id: str) -> bool:
    """The watchdog's WARNING names the run and says it is stuck or stalled."""
    return any(
        job_id in line and ("stall" in line.lower() or "stuck" in line.lower())
        for line in log.splitlines()
    )


def test_hung_run_is_stalled_and_a_killed_horse_is_a_failure(
    redis_db, queue_name, start_worker, blackhole, tmp_path
) -> None:
    """The watchdog in the horse gives its verdict on the worker's /metrics; SIGKILL on the
    horse is then recorded by the worker as one failure, and the in-flight gauges go."""
    q = Queue(queue_name("hang"), connection=redis_db)
    pid_file = tmp_path / "horse.pid"
    job = q.enqueue(f"{JOBS}.hang", str(pid_file), blackhole, job_timeout=600)
    name = f"{JOBS}.hang"
    worker = start_worker(q.name, jobs={name: {"heartbeat_timeout": 1}})
    labels = {"job_name": name, "queue": q.name}

    def stalled() -> Samples | None:
        m = worker.metrics()
        return m if m.total("otel_jobs_runs_stalled", **labels) == 1 else None

    m = wait_for("the stall verdict", stalled)
    assert m.value("otel_jobs_stalls_detected_total", reason="no_heartbeat", **labels) == 1
    assert m.value("otel_jobs_runs_in_progress", **labels) == 1
    assert m.value("otel_jobs_run_heartbeat_timeout_seconds", **labels) == 1
    assert m.value("otel_jobs_run_max_duration_seconds", **labels) == 600
    assert m.find("otel_jobs_oldest_run_start_timestamp_seconds", **labels) != []
    horse = int(pid_file.read_text())
    assert horse != worker.proc.pid
    wait_for("the verdict in the worker's log", lambda: _verdict_logged(worker.output(), job.id))

    os.kill(horse, signal.SIGKILL)
    wait_for("the lost horse's failure", lambda: worker.finished(**labels) == 1)
    wait_for("RQ to fail the job", lambda: job.get_status(refresh=True) == JobStatus.FAILED)
    m = worker.metrics()
    assert m.value("otel_jobs_runs_finished_total", outcome="failure", **labels) == 1
    assert m.value("otel_jobs_runs_started_total", **labels) == 1
    assert m.value("otel_jobs_run_duration_seconds_count", outcome="failure", **labels) == 1
    assert m.total("otel_jobs_runs_in_progress", **labels) == 0
    assert m.total("otel_jobs_runs_stalled", **labels) == 0
    assert m.find("otel_jobs_stalest_heartbeat_timestamp_seconds", **labels) == []
    assert m.value("otel_jobs_stalls_detected_total", reason="no_heartbeat", **labels) == 1

    # the worker goes on: the next job runs in a new horse and is counted once
    q.enqueue(f"{JOBS}.ok", 1)
    ok = {"job_name": f"{JOBS}.ok", "queue": q.name}
    wait_for("the next job", lambda: worker.finished(outcome="success", **ok) == 1)
    assert worker.finished(**labels) == 1


def test_simple_worker(redis_db, queue_name, start_worker) -> None:
    """SimpleWorker runs jobs in the worker process itself: same runs and outcomes."""
    q = Queue(queue_name("simple"), connection=redis_db)
    jobs = [
        q.enqueue(f"{JOBS}.ok", 2),
        q.enqueue(f"{JOBS}.boom"),
        q.enqueue(f"{JOBS}.sleepy", 60, job_timeout=1),
    ]
    worker = start_worker(q.name, worker_class="rq.SimpleWorker")

    wait_for("3 finished runs", lambda: worker.finished(queue=q.name) == 3)
    wait_for("RQ to end the jobs", lambda: all_done(jobs))
    m = worker.metrics()
    assert m.total("otel_jobs_runs_started_total", queue=q.name) == 3
    assert m.value("otel_jobs_runs_finished_total", job_name=f"{JOBS}.ok", outcome="success") == 1
    assert m.value("otel_jobs_runs_finished_total", job_name=f"{JOBS}.boom", outcome="failure") == 1
    assert (
        m.value("otel_jobs_runs_finished_total", job_name=f"{JOBS}.sleepy", outcome="timeout") == 1
    )
    assert m.total("otel_jobs_queue_wait_seconds_count", queue=q.name) == 3
    # the max duration in force: the job's timeout, else RQ's default of 180 s
    assert m.value("otel_jobs_run_max_duration_seconds", job_name=f"{JOBS}.sleepy") == 1
    assert m.value("otel_jobs_run_max_duration_seconds", job_name=f"{JOBS}.ok") == 180


def test_instrument_inside_a_job_warns(redis_db, queue_name, start_worker) -> None:
    """instrument() in the wrong place (inside the job, in the horse) says so in the log."""
    q = Queue(queue_name("wrong"), connection=redis_db)
    job = q.enqueue(f"{JOBS}.instrument_inside")
    worker = start_worker(q.name, instrument=False)
    wait_for("the job", lambda: job.get_status(refresh=True) == JobStatus.FINISHED)
    assert job.return_value() is True
    wait_for(
        "the warning", lambda: "instrument() was called inside a running RQ job" in worker.output()
    )
