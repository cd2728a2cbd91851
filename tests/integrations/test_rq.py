"""RQ with real ``rq worker`` processes on the real Redis, read through the worker's real /metrics.

Each test starts its own worker (``rq worker -c tests.integrations.rq_settings``, which calls
``otel_jobs.instrument()`` at start-up) on Redis DB 9 with queue names of its own, so the
counts on its /metrics are exactly those of the jobs the test enqueued.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from rq import Queue, Retry
from rq.job import JobStatus

from tests.integrations.rq_support import (
    JOBS,
    REDIS_URL,
    RQWorker,
    all_done,
    launch_workers,
    statuses,
)
from tests.integrations.workers import WAIT, wait_for
from tests.otlp_receiver import OtlpReceiver
from tests.support import Samples
from tests.support.servers import SilentServer

pytestmark = pytest.mark.broker


@pytest.fixture
def queue_name() -> Callable[[str], str]:
    prefix = f"otj-rq-{uuid.uuid4().hex[:8]}"
    return lambda name: f"{prefix}-{name}"


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., RQWorker]]:
    with launch_workers(tmp_path) as start:
        yield start


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
    with SilentServer() as server:
        yield server.port


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


def test_stopped_job_is_cancelled(redis_db, queue_name, start_worker, blackhole, tmp_path) -> None:
    """rq's stop-job command kills the horse; the worker records the run as cancelled."""
    from rq.command import send_stop_job_command

    q = Queue(queue_name("stop"), connection=redis_db)
    pid_file = tmp_path / "horse.pid"
    job = q.enqueue(f"{JOBS}.hang", str(pid_file), blackhole, job_timeout=600)
    worker = start_worker(q.name)
    labels = {"job_name": f"{JOBS}.hang", "queue": q.name}
    wait_for("the run", lambda: worker.metrics().total("otel_jobs_runs_in_progress", **labels) == 1)

    send_stop_job_command(redis_db, job.id)
    wait_for("the cancelled run", lambda: worker.finished(outcome="cancelled", **labels) == 1)
    wait_for("RQ to stop the job", lambda: job.get_status(refresh=True) == JobStatus.STOPPED)
    m = worker.metrics()
    assert m.total("otel_jobs_runs_finished_total", **labels) == 1
    assert m.value("otel_jobs_runs_started_total", **labels) == 1
    assert m.total("otel_jobs_runs_in_progress", **labels) == 0


def test_spans_leave_the_work_horse(redis_db, queue_name, start_worker) -> None:
    """Each horse exits with os._exit right after its job: its span is exported before that."""
    with OtlpReceiver() as receiver:
        q = Queue(queue_name("otlp"), connection=redis_db)
        jobs = [q.enqueue(f"{JOBS}.ok", 1), q.enqueue(f"{JOBS}.boom")]
        worker = start_worker(
            q.name,
            env_extra={
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{receiver.endpoint}/v1/traces",
                "OTEL_BSP_SCHEDULE_DELAY": "60000",  # only an explicit flush gets them out in time
            },
        )
        wait_for("2 finished runs", lambda: worker.finished(queue=q.name) == 2)
        wait_for("RQ to end the jobs", lambda: all_done(jobs))
        spans = wait_for("2 spans", lambda: len(receiver.spans()) == 2 and receiver.spans())
        by_id = {span.attributes["job.id"]: span for span in spans}
        assert by_id[jobs[0].id].name == f"{JOBS}.ok"
        assert by_id[jobs[0].id].attributes["job.outcome"] == "success"
        assert by_id[jobs[1].id].attributes["job.outcome"] == "failure"
        assert {span.attributes["job.framework"] for span in spans} == {"rq"}


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


def test_instrument_in_a_custom_worker_class_module(redis_db, queue_name, start_worker) -> None:
    """`rq worker -w module.Worker`: the module's instrument() runs in the worker at start-up."""
    q = Queue(queue_name("custom"), connection=redis_db)
    jobs = [q.enqueue(f"{JOBS}.ok", 1), q.enqueue(f"{JOBS}.boom")]
    worker = start_worker(
        q.name, worker_class="tests.integrations.rq_worker_class.Worker", instrument=False
    )
    wait_for("2 finished runs", lambda: worker.finished(queue=q.name) == 2)
    wait_for("RQ to end the jobs", lambda: all_done(jobs))
    m = worker.metrics()
    assert m.total("otel_jobs_runs_started_total", queue=q.name) == 2
    assert m.value("otel_jobs_runs_finished_total", job_name=f"{JOBS}.boom", outcome="failure") == 1


def test_spawn_worker_is_said_to_be_unsupported(redis_db, queue_name, start_worker) -> None:
    """SpawnWorker's horses are new interpreters: a WARNING says so, and nothing is miscounted."""
    import rq.worker

    if not hasattr(rq.worker, "SpawnWorker"):
        pytest.skip("this RQ has no SpawnWorker")
    q = Queue(queue_name("spawn"), connection=redis_db)
    job = q.enqueue(f"{JOBS}.ok", 1)
    worker = start_worker(q.name, worker_class="rq.worker.SpawnWorker")
    wait_for("the job", lambda: job.get_status(refresh=True) == JobStatus.FINISHED)
    wait_for(
        "the warning", lambda: "cannot follow: its job runs are not recorded" in worker.output()
    )
    assert worker.metrics().total("otel_jobs_runs_finished_total", queue=q.name) == 0


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


# --- in this process: spans and the patches themselves ------------------------------------

HOOKS = (
    "perform_job",
    "handle_exception",
    "handle_job_retry",
    "handle_job_failure",
    "handle_work_horse_killed",
    "bootstrap",
    "monitor_work_horse",
)


def _patched() -> list[tuple[type, str]]:
    """Each hook with the RQ class that defines it (BaseWorker or Worker, by RQ version)."""
    from rq.worker import Worker

    found = []
    for name in HOOKS:
        owner = next((c for c in Worker.__mro__ if name in vars(c)), None)
        if owner is not None:
            found.append((owner, name))
    return found


def test_instrument_twice_then_uninstrument_restores_rq(instrumented) -> None:
    import otel_jobs
    from otel_jobs.integrations import rq as rq_integration

    patched = _patched()
    assert len(patched) >= 6
    originals = {(c, a): vars(c)[a] for c, a in patched}
    agent = instrumented(frameworks=["rq"])
    otel_jobs.instrument(frameworks=["rq"])  # a second call changes nothing
    for c, a in patched:
        assert vars(c)[a] is not originals[(c, a)], (c, a)
        assert getattr(vars(c)[a], "__otel_jobs_wrapped__", False)
    again = rq_integration.Integration(agent)
    again.install()  # refuses to wrap twice
    for c, a in patched:
        assert vars(c)[a].__wrapped__ is originals[(c, a)], (c, a)
    again.uninstall()
    otel_jobs.uninstrument()
    for c, a in patched:
        assert vars(c)[a] is originals[(c, a)], (c, a)


def test_spans_of_a_simple_worker(
    instrumented, span_exporter, redis_db, queue_name, keep_signal_handlers
) -> None:
    from opentelemetry.trace import SpanKind, StatusCode
    from rq import SimpleWorker

    instrumented(frameworks=["rq"])
    q = Queue(queue_name("spans"), connection=redis_db)
    good = q.enqueue(f"{JOBS}.ok", 3)
    bad = q.enqueue(f"{JOBS}.boom")
    SimpleWorker([q], connection=redis_db).work(burst=True)

    spans = {
        s.attributes["job.id"]: s
        for s in span_exporter.get_finished_spans()
        if s.attributes and s.attributes.get("job.framework") == "rq"
    }
    assert set(spans) == {good.id, bad.id}
    ok_span, boom_span = spans[good.id], spans[bad.id]
    assert ok_span.name == f"{JOBS}.ok"
    assert ok_span.kind == SpanKind.CONSUMER
    assert dict(ok_span.attributes) == {
        "job.name": f"{JOBS}.ok",
        "job.id": good.id,
        "job.queue": q.name,
        "job.attempt": 1,
        "job.framework": "rq",
        "job.outcome": "success",
    }
    assert ok_span.status.status_code == StatusCode.UNSET
    assert boom_span.attributes["job.outcome"] == "failure"
    assert boom_span.status.status_code == StatusCode.ERROR
    assert [e.attributes["exception.type"] for e in boom_span.events] == ["ValueError"]


def test_span_of_a_horse_killed_mid_job(
    instrumented, span_exporter, redis_db, queue_name, blackhole, tmp_path, keep_signal_handlers
) -> None:
    """The worker (here, this process) records the lost horse's run: one span, outcome failure."""
    import threading

    from opentelemetry.trace import StatusCode
    from rq import Worker

    agent = instrumented(frameworks=["rq"], watchdog=False)
    q = Queue(queue_name("lost"), connection=redis_db)
    pid_file = tmp_path / "horse.pid"
    job = q.enqueue(f"{JOBS}.hang", str(pid_file), blackhole, job_timeout=600)

    def kill_the_horse() -> None:
        wait_for("the horse", lambda: pid_file.exists() and pid_file.read_text())
        os.kill(int(pid_file.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill_the_horse, daemon=True)
    killer.start()
    Worker([q], connection=redis_db).work(burst=True)
    killer.join(timeout=WAIT)

    spans = [
        s
        for s in span_exporter.get_finished_spans()
        if s.attributes and s.attributes.get("job.id") == job.id
    ]
    assert len(spans) == 1  # the horse's own span died with it
    (span,) = spans
    assert span.name == f"{JOBS}.hang"
    assert span.attributes["job.outcome"] == "failure"
    assert span.attributes["job.queue"] == q.name
    assert span.status.status_code == StatusCode.ERROR
    (event,) = span.events
    assert str(event.attributes["exception.type"]).endswith("WorkHorseLost")
    assert "signal 9" in event.attributes["exception.message"]
    assert job.get_status(refresh=True) == JobStatus.FAILED
    # the worker's own counters: the failure, not a start (the horse counted that)
    registry = agent.telemetry.registry
    labels = {"job_name": f"{JOBS}.hang", "queue": q.name}
    assert (
        registry.get_sample_value("otel_jobs_runs_finished_total", {**labels, "outcome": "failure"})
        == 1
    )
    assert registry.get_sample_value("otel_jobs_runs_started_total", labels) == 0


# --- found by running RQ's own test suite with otel-jobs enabled in every process ---------------


def test_a_job_whose_data_cannot_be_deserialized_is_a_failure(
    redis_db, queue_name, start_worker
) -> None:
    """RQ fails a job it cannot deserialize; its run is recorded as <unreadable>, failure."""
    q = Queue(queue_name("unreadable"), connection=redis_db)
    job = q.enqueue(f"{JOBS}.ok", 1)
    redis_db.hset(job.key, "data", b"\x00 neither zlib nor pickle")
    fine = q.enqueue(f"{JOBS}.ok", 2)
    worker = start_worker(q.name)

    wait_for("2 finished runs", lambda: worker.finished(queue=q.name) == 2)
    wait_for("RQ to end both jobs", lambda: all_done([job, fine]))
    assert statuses([job, fine]) == [JobStatus.FAILED, JobStatus.FINISHED]
    m = worker.metrics()
    unreadable = {"job_name": "<unreadable>", "queue": q.name}
    assert m.value("otel_jobs_runs_started_total", **unreadable) == 1
    assert m.value("otel_jobs_runs_finished_total", outcome="failure", **unreadable) == 1
    assert m.value("otel_jobs_runs_finished_total", job_name=f"{JOBS}.ok", outcome="success") == 1
    assert m.find("otel_jobs_internal_errors_total", component="integration.rq") in ([], [0.0])


KEY_PREFIX_PROCESS = """
import os, sys
import otel_jobs
from otel_jobs.core import agent, errors

otel_jobs.instrument(prometheus=False, frameworks=["rq"])
print("rq imported by instrument():", "rq" in sys.modules)
os.environ["RQ_KEY_PREFIX"] = sys.argv[1]  # set before the application imports rq
from redis import Redis
from rq import Queue, SimpleWorker
from rq.defaults import RQ_KEY_PREFIX

connection = Redis.from_url(sys.argv[2])
q = Queue(sys.argv[3], connection=connection)
q.enqueue("tests.integrations.rq_jobs.ok", 2)
SimpleWorker([q], connection=connection).work(burst=True)
registry = agent.current().telemetry.registry
labels = {"job_name": "tests.integrations.rq_jobs.ok", "queue": q.name, "outcome": "success"}
print("prefix:", RQ_KEY_PREFIX, q.key)
print("runs:", registry.get_sample_value("otel_jobs_runs_finished_total", labels))
print("internal errors:", errors.counts())
"""


def test_rq_key_prefix_set_after_instrument_is_honoured(redis_db, queue_name) -> None:
    """instrument() does not import RQ: it patches RQ when the application imports it."""
    import subprocess
    import sys

    from tests.integrations.rq_support import ROOT

    prefix = f"otj{uuid.uuid4().hex[:8]}"
    name = queue_name("prefix")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "RQ_"))}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", KEY_PREFIX_PROCESS, prefix, REDIS_URL, name],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=WAIT,
        )  # fmt: skip
    finally:
        keys = list(redis_db.scan_iter(match=f"{prefix}:*"))
        if keys:
            redis_db.delete(*keys)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "rq imported by instrument(): False" in lines
    assert f"prefix: {prefix} {prefix}:queue:{name}" in lines
    assert "runs: 1.0" in lines  # patched at RQ's import: the run is recorded
    assert "internal errors: {}" in lines
    assert keys  # the job's keys were written under the prefix
