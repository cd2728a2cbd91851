"""Celery, proven with real ``celery worker`` processes (prefork, concurrency 2) on real brokers.

Each worker runs :mod:`tests.integrations.celery_app` (which calls ``instrument()`` in the app
module) in a subprocess of its own session, on Redis (database 11) and on RabbitMQ, with queues
named for this test run. The tests publish tasks from this process (instrumented, so that
messages carry their publish time and trace context), then read the worker's real ``/metrics``,
its log, and the spans it wrote through a real SDK pipeline.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, signals

import otel_jobs
from tests.integrations import celery_app
from tests.support import Samples, free_port, require_rabbitmq, require_redis, scrape
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
CELERY = str(Path(sys.executable).with_name("celery"))
REDIS_URL = "redis://127.0.0.1:6379/11"
RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672//"
WAIT = 60.0  # generous: the machine is small and shared


@dataclass
class Worker:
    """A running ``celery worker`` of the test app."""

    broker: str
    prefix: str
    url: str
    log: Path
    spans: Path
    release_dir: Path
    process: subprocess.Popen[bytes]
    publisher: Celery

    def metrics(self) -> Samples:
        return scrape(self.url)

    def send(self, name: str, *args: Any, **options: Any) -> str:
        fast, slow = celery_app.queues(self.prefix)
        queue = slow if name in celery_app.SLOW_TASKS else fast
        result = self.publisher.send_task(name, args=args, queue=queue, **options)
        return str(result.id)

    def terminate_a_running_block(self) -> str:
        """Run ``oj.block``, stop it with ``revoke(terminate=True)``, wait for its cancel."""
        job_id = self.send("oj.block")
        wait_for(
            "the run in flight",
            lambda: self.metrics().total("otel_jobs_runs_in_progress", job_name="oj.block") == 1,
        )
        self.publisher.control.revoke(job_id, terminate=True)
        wait_for("the terminated run", lambda: settled(self, {"oj.block": {"cancelled": 1}}))
        return job_id

    def spans_by_job_id(self) -> dict[str, list[dict[str, Any]]]:
        found: dict[str, list[dict[str, Any]]] = {}
        if not self.spans.exists():
            return found
        for line in self.spans.read_text().splitlines():
            span = json.loads(line)
            attrs = span.get("attributes", {})
            job_id = attrs.get("job.id") or attrs.get("messaging.message.id")
            if job_id and span["kind"] == "SpanKind.CONSUMER":
                found.setdefault(job_id, []).append(span)
        return found


def start_worker(
    tmp: Path,
    broker: str,
    *,
    app: str = "tests.integrations.celery_app",
    pool: str = "prefork",
    **env: str,
) -> Worker:
    prefix = f"ojc-{uuid.uuid4().hex[:8]}"
    port = free_port()
    log = tmp / f"{prefix}.log"
    spans = tmp / f"{prefix}.spans.jsonl"
    release_dir = tmp / f"{prefix}-release"
    release_dir.mkdir()
    fast, slow = celery_app.queues(prefix)
    environ = {
        **os.environ,
        "OJ_CELERY_WORKER": "1",
        "OJ_CELERY_BROKER": broker,
        "OJ_CELERY_PREFIX": prefix,
        "OJ_CELERY_PORT": str(port),
        "OJ_CELERY_SPANS": str(spans),
        "OJ_CELERY_RELEASE_DIR": str(release_dir),
        "PYTHONPATH": str(ROOT),
        **env,
    }
    queues = f"{prefix}-all" if "bad" in app else f"{fast},{slow}"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [CELERY, "-A", app, "worker", "-P", pool, "-c", "2", "-Q", queues,
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO",
             "-n", f"{prefix}@%h"],
            cwd=ROOT, env=environ, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    worker = Worker(
        broker, prefix, f"http://127.0.0.1:{port}/metrics", log, spans, release_dir, process,
        celery_app.make_app(broker, prefix),
    )  # fmt: skip
    try:
        wait_for("worker ready", lambda: "ready." in log.read_text() or process.poll() is not None)
        assert process.poll() is None, log.read_text()
        wait_for("/metrics", worker.metrics)
    except BaseException:
        stop_worker(worker)
        raise
    return worker


def stop_worker(worker: Worker) -> None:
    # The worker runs in a session of its own: end its whole process group (pool children too).
    try:
        os.killpg(worker.process.pid, signal.SIGTERM)
        worker.process.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(worker.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    worker.process.wait(10)
    worker.publisher.close()


def require(broker: str) -> None:
    if broker.startswith("redis"):
        require_redis()
    else:
        require_rabbitmq()


@pytest.fixture(scope="module", params=[REDIS_URL, RABBIT_URL], ids=["redis", "rabbitmq"])
def worker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Worker]:
    require(request.param)
    running = start_worker(tmp_path_factory.mktemp("celery"), request.param)
    yield running
    stop_worker(running)


@pytest.fixture
def publisher(instrumented: Callable[..., Any]) -> None:
    """This process publishes as an instrumented app does: publish time and trace context."""
    instrumented(frameworks=["celery"], outbound=[], prometheus=False, watchdog=False)


def finished(m: Samples, job: str, outcome: str) -> float:
    return m.total("otel_jobs_runs_finished_total", job_name=job, outcome=outcome)


def settled(worker: Worker, jobs: dict[str, dict[str, int]]) -> Samples | None:
    """The scrape once every job has its expected finished outcomes and none is in flight."""
    m = worker.metrics()
    for job, outcomes in jobs.items():
        for outcome, count in outcomes.items():
            if finished(m, job, outcome) < count:
                return None
        if m.total("otel_jobs_runs_in_progress", job_name=job) != 0:
            return None
    return m


OUTCOMES = ("success", "failure", "retry", "timeout", "cancelled")


def assert_exact(m: Samples, job: str, queue: str, started: int, **outcomes: int) -> None:
    assert m.value("otel_jobs_runs_started_total", job_name=job, queue=queue) == started
    for outcome in OUTCOMES:
        assert finished(m, job, outcome) == outcomes.get(outcome, 0), (job, outcome)
    assert m.value("otel_jobs_runs_in_progress", job_name=job, queue=queue) == 0
    assert not m.find("otel_jobs_oldest_run_start_timestamp_seconds", job_name=job)


# --- outcomes, counted exactly --------------------------------------------------------------


def test_outcomes_on_metrics_equal_the_tasks_enqueued(worker: Worker, publisher: None) -> None:
    fast, _ = celery_app.queues(worker.prefix)
    for i in range(12):
        worker.send("oj.ok", i)
    for _ in range(3):
        worker.send("oj.fail")
    worker.send("oj.expected")
    worker.send("oj.retry_once")
    worker.send("oj.ignore")
    worker.send("oj.reject")
    expected = {
        "oj.ok": {"success": 12},
        "oj.fail": {"failure": 3},
        "oj.expected": {"failure": 1},
        "oj.retry_once": {"retry": 1, "success": 1},
        "oj.ignore": {"cancelled": 1},
        "oj.reject": {"cancelled": 1},
    }
    wait_for("every run finished", lambda: settled(worker, expected))
    time.sleep(0.5)  # a late duplicate would show on the next scrape
    m = worker.metrics()
    assert_exact(m, "oj.ok", fast, 12, success=12)
    assert_exact(m, "oj.fail", fast, 3, failure=3)
    assert_exact(m, "oj.expected", fast, 1, failure=1)
    assert_exact(m, "oj.retry_once", fast, 2, retry=1, success=1)  # a retry is a new run
    assert_exact(m, "oj.ignore", fast, 1, cancelled=1)
    assert_exact(m, "oj.reject", fast, 1, cancelled=1)
    assert m.value("otel_jobs_run_duration_seconds_count", job_name="oj.ok", queue=fast, outcome="success") == 12  # fmt: skip
    # The app-wide task_time_limit became the max duration in force.
    assert m.value("otel_jobs_run_max_duration_seconds", job_name="oj.ok", queue=fast) == 300
    # A good configuration: no finding.
    assert not m.find("otel_jobs_config_finding", framework="celery")
    assert not m.find("otel_jobs_internal_errors_total")


def test_spans_continue_the_publisher_trace(
    worker: Worker, span_exporter: Any, publisher: None
) -> None:
    from opentelemetry import trace

    with trace.get_tracer("test").start_as_current_span("publish") as parent:
        ok_id = worker.send("oj.ok", 1)
        fail_id = worker.send("oj.fail")
        expected_id = worker.send("oj.expected")
    context = parent.get_span_context()
    spans = wait_for(
        "the runs' spans",
        lambda: (
            (found := worker.spans_by_job_id())
            and all(i in found for i in (ok_id, fail_id, expected_id))
            and found
        ),
    )
    for job_id in (ok_id, fail_id, expected_id):
        assert len(spans[job_id]) == 1
        span = spans[job_id][0]
        assert span["context"]["trace_id"] == f"0x{context.trace_id:032x}"
        assert span["parent_id"] == f"0x{context.span_id:016x}"
        assert span["attributes"]["job.framework"] == "celery"
        assert span["attributes"]["job.id"] == job_id
    assert spans[ok_id][0]["status"]["status_code"] == "UNSET"
    assert spans[fail_id][0]["status"]["status_code"] == "ERROR"
    assert spans[fail_id][0]["events"][0]["attributes"]["exception.type"].endswith("ValueError")
    # An exception listed in `throws` is recorded, but is not an error.
    assert spans[expected_id][0]["status"]["status_code"] == "UNSET"
    assert spans[expected_id][0]["attributes"]["job.outcome"] == "failure"
    assert spans[expected_id][0]["events"][0]["attributes"]["exception.type"].endswith(
        "ExpectedError"
    )


# --- stuck, killed, lost ---------------------------------------------------------------------


def test_a_hung_run_is_stalled_on_metrics_and_in_the_log(worker: Worker, publisher: None) -> None:
    _, slow = celery_app.queues(worker.prefix)
    job_id = worker.send("oj.hang", "hang-1")

    def stalled() -> Samples | None:
        m = worker.metrics()
        if m.total("otel_jobs_runs_stalled", job_name="oj.hang") != 1:
            return None
        return m

    m = wait_for("the stall verdict on /metrics", stalled)
    assert m.value("otel_jobs_stalls_detected_total", job_name="oj.hang", queue=slow, reason="no_heartbeat") == 1  # fmt: skip
    assert m.value("otel_jobs_runs_in_progress", job_name="oj.hang", queue=slow) == 1
    assert m.find("otel_jobs_stalest_heartbeat_timestamp_seconds", job_name="oj.hang")
    assert m.value("otel_jobs_run_heartbeat_timeout_seconds", job_name="oj.hang", queue=slow) == 1
    # The child's watchdog logs the stuck run with its id and where it is.
    wait_for(
        "the stall in the worker log",
        lambda: any(
            "WARNING" in line and job_id in line and "celery_app.py" in line
            for line in worker.log.read_text().splitlines()
        ),
    )
    (worker.release_dir / "hang-1").touch()
    m = wait_for("the released run", lambda: settled(worker, {"oj.hang": {"success": 1}}))
    assert_exact(m, "oj.hang", slow, 1, success=1)
    assert m.total("otel_jobs_runs_stalled", job_name="oj.hang") == 0


def test_hard_time_limit_kill_is_a_timeout_recorded_once(worker: Worker, publisher: None) -> None:
    _, slow = celery_app.queues(worker.prefix)
    job_id = worker.send("oj.sleep_past_limit")
    m = wait_for(
        "the killed run recorded as timeout, not in flight",
        lambda: settled(worker, {"oj.sleep_past_limit": {"timeout": 1}}),
    )
    # Let the killed child be replaced; a second record would show by now.
    wait_for(
        "child replaced",
        lambda: "SIGKILL" in worker.log.read_text() or "exited" in worker.log.read_text(),
    )
    time.sleep(0.5)
    m = worker.metrics()
    assert_exact(m, "oj.sleep_past_limit", slow, 1, timeout=1)
    assert m.value("otel_jobs_run_max_duration_seconds", job_name="oj.sleep_past_limit", queue=slow) == 1  # fmt: skip
    # The main process emitted the run's span (the child's never ended).
    spans = wait_for("the killed run's span", lambda: worker.spans_by_job_id().get(job_id))
    assert len(spans) == 1
    assert spans[0]["attributes"]["job.outcome"] == "timeout"
    assert spans[0]["status"]["status_code"] == "ERROR"


def test_a_lost_child_is_a_failure_recorded_once(worker: Worker, publisher: None) -> None:
    fast, _ = celery_app.queues(worker.prefix)
    worker.send("oj.die")
    wait_for("the lost run recorded", lambda: settled(worker, {"oj.die": {"failure": 1}}))
    time.sleep(0.5)
    assert_exact(worker.metrics(), "oj.die", fast, 1, failure=1)
    assert "WorkerLostError" in worker.log.read_text()


def test_revoked_tasks_cancelled_while_running_or_skipped_before(
    worker: Worker, publisher: None
) -> None:
    fast, slow = celery_app.queues(worker.prefix)
    worker.terminate_a_running_block()
    time.sleep(0.5)
    assert_exact(worker.metrics(), "oj.block", slow, 1, cancelled=1)
    # Revoked while it waits for its countdown: it never starts, and is counted as skipped.
    waiting = worker.send("oj.later", countdown=2)
    wait_for("receipt", lambda: f"Task oj.later[{waiting}] received" in worker.log.read_text())
    worker.publisher.control.revoke(waiting)
    m = wait_for(
        "the revoked task counted as skipped",
        lambda: (
            (s := worker.metrics()).find(
                "otel_jobs_runs_skipped_total", job_name="oj.later", queue=fast, reason="revoked"
            )
            == [1.0]
            and s
        ),
    )
    assert m.total("otel_jobs_runs_started_total", job_name="oj.later") == 0


def test_queue_wait_of_a_delayed_task_counts_from_its_due_time(
    worker: Worker, publisher: None
) -> None:
    fast, _ = celery_app.queues(worker.prefix)
    countdown = 4
    worker.send("oj.delayed", countdown=countdown)
    m = wait_for("the delayed run", lambda: settled(worker, {"oj.delayed": {"success": 1}}))
    assert m.value("otel_jobs_queue_wait_seconds_count", job_name="oj.delayed", queue=fast) == 1
    # Measured from the publish time, the wait would be at least the countdown.
    waited = m.value("otel_jobs_queue_wait_seconds_sum", job_name="oj.delayed", queue=fast)
    assert 0 <= waited < countdown


# --- other pools, and instrument() in the wrong place ------------------------------------------


@pytest.mark.parametrize("pool", ["solo", "threads"])
def test_runs_in_a_pool_without_children(tmp_path: Path, publisher: None, pool: str) -> None:
    require_redis()
    worker = start_worker(tmp_path, REDIS_URL, pool=pool)
    fast, slow = celery_app.queues(worker.prefix)
    try:
        for i in range(5):
            worker.send("oj.ok", i)
        worker.send("oj.fail")
        worker.send("oj.retry_once")
        worker.send("oj.hang", "hang-pool")
        wait_for(
            "the stall verdict",
            lambda: worker.metrics().total("otel_jobs_runs_stalled", job_name="oj.hang") == 1,
        )
        # Released only now: in the solo pool the hung run holds the only slot (the retry of
        # oj.retry_once waits behind it).
        (worker.release_dir / "hang-pool").touch()
        expected = {"oj.ok": {"success": 5}, "oj.fail": {"failure": 1},
                    "oj.retry_once": {"retry": 1, "success": 1}, "oj.hang": {"success": 1}}  # fmt: skip
        m = wait_for("the runs", lambda: settled(worker, expected))
        assert_exact(m, "oj.ok", fast, 5, success=5)
        assert_exact(m, "oj.fail", fast, 1, failure=1)
        assert_exact(m, "oj.retry_once", fast, 2, retry=1, success=1)
        assert_exact(m, "oj.hang", slow, 1, success=1)
        assert not m.find("otel_jobs_internal_errors_total")
    finally:
        stop_worker(worker)


def test_instrument_in_worker_process_init_is_reported(tmp_path: Path) -> None:
    require_redis()
    worker = start_worker(tmp_path, REDIS_URL, OJ_CELERY_INSTRUMENT_IN_CHILD="1")
    try:
        log = wait_for(
            "a warning from each of the two children",
            lambda: (
                (text := worker.log.read_text()).count("inside a Celery pool child") == 2 and text
            ),
        )
        # Only one child can bind the metrics port; the other says it cannot.
        assert "cannot serve /metrics" in log
    finally:
        stop_worker(worker)


# --- with opentelemetry-instrumentation-celery ------------------------------------------------


@pytest.mark.parametrize("contrib", ["1", "first"], ids=["in_worker_process_init", "before"])
def test_with_contrib_celery_instrumentation_a_run_has_one_span(
    tmp_path: Path, publisher: None, contrib: str
) -> None:
    require_redis()
    worker = start_worker(tmp_path, REDIS_URL, OJ_CELERY_CONTRIB=contrib)
    try:
        ids = {
            "ok": worker.send("oj.ok", 2),
            "fail": worker.send("oj.fail"),
            "retry": worker.send("oj.retry_once"),
        }
        wait_for(
            "the runs",
            lambda: settled(
                worker,
                {
                    "oj.ok": {"success": 1},
                    "oj.fail": {"failure": 1},
                    "oj.retry_once": {"success": 1},
                },
            ),
        )
        spans = wait_for(
            "the spans",
            lambda: (
                (found := worker.spans_by_job_id())
                and len(found.get(ids["retry"], [])) == 2
                and all(i in found for i in ids.values())
                and found
            ),
        )
        for key in ("ok", "fail"):
            (span,) = spans[ids[key]]  # one span: the contrib one, with otel-jobs' attributes
            assert span["name"].startswith("run/")
            assert span["attributes"]["job.framework"] == "celery"
        assert spans[ids["ok"]][0]["attributes"]["job.outcome"] == "success"
        assert spans[ids["fail"]][0]["attributes"]["job.outcome"] == "failure"
        assert spans[ids["fail"]][0]["status"]["status_code"] == "ERROR"
        attempts = sorted(s["attributes"]["job.attempt"] for s in spans[ids["retry"]])
        assert attempts == [1, 2]
        assert not worker.metrics().find("otel_jobs_internal_errors_total")
    finally:
        stop_worker(worker)


@pytest.mark.parametrize(
    ("contrib", "remap"),
    [("1", ""), ("first", ""), ("1", "SIGQUIT")],
    ids=["in_worker_process_init", "before", "remap_sigterm"],
)
def test_with_contrib_a_run_stopped_by_sigterm_has_one_span(
    tmp_path: Path, publisher: None, contrib: str, remap: str
) -> None:
    # The hard time limit and revoke(terminate=True) send SIGTERM to the child, which lets the
    # contrib instrumentation end its span there; the main process counts the run but must
    # not add a span of its own, even when it does not run the contrib instrumentation itself
    # (enabled in worker_process_init: in the children only). Also under billiard's
    # REMAP_SIGTERM, where the hard time limit still sends SIGTERM to the child.
    require_redis()
    env = {"REMAP_SIGTERM": remap} if remap else {}
    worker = start_worker(tmp_path, REDIS_URL, OJ_CELERY_CONTRIB=contrib, **env)
    _, slow = celery_app.queues(worker.prefix)
    try:
        timed_out = worker.send("oj.sleep_past_limit")
        wait_for("the killed run", lambda: settled(worker, {"oj.sleep_past_limit": {"timeout": 1}}))
        stopped = {timed_out: "timeout"}
        if not remap:  # under REMAP_SIGTERM, revoke(terminate=True) does not stop the child
            stopped[worker.terminate_a_running_block()] = "cancelled"
        wait_for("the runs' spans", lambda: set(stopped) <= set(worker.spans_by_job_id()))
        m = worker.metrics()
        assert_exact(m, "oj.sleep_past_limit", slow, 1, timeout=1)
        if not remap:
            assert_exact(m, "oj.block", slow, 1, cancelled=1)
        assert not m.find("otel_jobs_internal_errors_total")
    finally:
        stop_worker(worker)  # a main process still waiting to decide on a span decides now
    spans = worker.spans_by_job_id()
    for job_id, outcome in stopped.items():
        (span,) = spans[job_id]  # the contrib one, carrying otel-jobs' attributes
        assert span["name"].startswith("run/")
        assert span["attributes"]["job.id"] == job_id
        assert span["attributes"]["job.outcome"] == outcome


@pytest.mark.parametrize("cause", ["deaf_child", "slow_exporter"])
def test_with_contrib_a_stopped_child_that_cannot_export_leaves_the_span_to_the_main_process(
    tmp_path: Path, publisher: None, cause: str
) -> None:
    # Billiard sends SIGKILL 0.1 s after the hard time limit's SIGTERM. A child that holds off
    # SIGTERM (stuck in C code) or whose exporter is slower than that never exports the contrib
    # span: the main process, seeing no note from the child, emits the run's one span itself.
    require_redis()
    env = {"OJ_CELERY_CONTRIB": "1"}
    if cause == "slow_exporter":
        env["OJ_CELERY_SPANS_SLOW_CHILD"] = "0.5"
    task = "oj.deaf_past_limit" if cause == "deaf_child" else "oj.sleep_past_limit"
    worker = start_worker(tmp_path, REDIS_URL, **env)
    _, slow = celery_app.queues(worker.prefix)
    try:
        killed = worker.send(task)
        wait_for("the killed run", lambda: settled(worker, {task: {"timeout": 1}}))
        (span,) = wait_for("the main's span", lambda: worker.spans_by_job_id().get(killed))
        if cause == "slow_exporter":
            # Without SIGKILL (revoke terminate) the slow child has time: its span, not the main's.
            blocked = worker.terminate_a_running_block()
            wait_for("the child's span", lambda: blocked in worker.spans_by_job_id())
        m = worker.metrics()
        assert_exact(m, task, slow, 1, timeout=1)
        assert not m.find("otel_jobs_internal_errors_total")
    finally:
        stop_worker(worker)
    spans = worker.spans_by_job_id()
    (span,) = spans[killed]
    assert span["name"] == task  # the main process's own span, not the contrib "run/..." one
    assert span["attributes"]["job.outcome"] == "timeout"
    assert span["status"]["status_code"] == "ERROR"
    if cause == "slow_exporter":
        (span,) = spans[blocked]
        assert span["name"].startswith("run/")
        assert span["attributes"]["job.outcome"] == "cancelled"


def test_a_pool_child_exports_its_spans_when_it_exits(tmp_path: Path, publisher: None) -> None:
    # Children leave through os._exit (no atexit): spans a batch processor still holds would be
    # lost, the one span of a run stopped by SIGTERM among them. This processor exports only
    # when flushed; each child exits after one task.
    require_redis()
    worker = start_worker(
        tmp_path, REDIS_URL, OJ_CELERY_SPANS_BATCH="1", OJ_CELERY_MAX_TASKS_PER_CHILD="1"
    )
    try:
        job_id = worker.send("oj.ok", 1)
        wait_for("the run", lambda: settled(worker, {"oj.ok": {"success": 1}}))
        (span,) = wait_for("the run's span", lambda: worker.spans_by_job_id().get(job_id))
        assert span["attributes"]["job.outcome"] == "success"
    finally:
        stop_worker(worker)


# --- configuration audit ----------------------------------------------------------------------

BAD_FINDINGS = {
    "no_time_limit",
    "time_limit_exceeds_visibility_timeout",
    "late_ack_without_time_limit",
    "late_ack_without_reject_on_worker_lost",
    "no_retry_or_dead_letter",
    "single_queue",
    "soft_time_limit_above_time_limit",
}


def test_audit_of_a_bad_and_a_good_configuration() -> None:
    from otel_jobs.integrations.celery import audit
    from tests.integrations import celery_bad_app

    assert {f.finding for f in audit(celery_bad_app.app)} == BAD_FINDINGS
    assert audit(celery_app.app) == []
    # The same app on RabbitMQ: no visibility timeout there.
    on_rabbit = Celery("bad", broker=RABBIT_URL, set_as_current=False)
    on_rabbit.conf.update(
        {k: v for k, v in celery_bad_app.app.conf.changes.items() if k != "broker_url"}
    )
    for task in celery_bad_app.app.tasks.values():
        if not task.name.startswith("celery."):
            on_rabbit.task(shared=False, name=task.name, **_task_options(task))(task.run)
    assert {f.finding for f in audit(on_rabbit)} == BAD_FINDINGS - {
        "time_limit_exceeds_visibility_timeout"
    }


def test_audit_late_ack_needs_reject_on_worker_lost() -> None:
    from otel_jobs.integrations.celery import audit

    def findings(**conf: Any) -> set[str]:
        app = Celery("late", broker=RABBIT_URL, set_as_current=False)
        app.conf.update(task_time_limit=60, **conf)

        def job() -> None:
            pass

        app.task(shared=False, name="late.job", autoretry_for=(OSError,))(job)
        return {f.finding for f in audit(app)}

    assert "late_ack_without_reject_on_worker_lost" in findings(task_acks_late=True)
    assert "late_ack_without_reject_on_worker_lost" not in findings(
        task_acks_late=True, task_reject_on_worker_lost=True
    )
    assert "late_ack_without_reject_on_worker_lost" not in findings(task_acks_late=False)


def _task_options(task: Any) -> dict[str, Any]:
    names = ("time_limit", "soft_time_limit", "acks_late")
    return {k: getattr(task, k) for k in names if k in vars(type(task))}


def test_a_worker_reports_its_configuration_findings_once(tmp_path: Path) -> None:
    require_redis()
    worker = start_worker(tmp_path, REDIS_URL, app="tests.integrations.celery_bad_app")
    try:
        m = worker.metrics()
        found = {s.labels["finding"] for s in m.samples if s.name == "otel_jobs_config_finding"}
        assert found == BAD_FINDINGS
        assert all(v == 1 for v in m.find("otel_jobs_config_finding", framework="celery"))
        log = worker.log.read_text()
        for finding in ("can run forever", "visibility timeout (3600s)", "but have no time limit",
                        "without task_reject_on_worker_lost", "neither retry", "go to one queue",
                        "soft time limit above"):  # fmt: skip
            assert log.count(finding) == 1, finding
        # Through Celery's logging, as WARNINGs of the main process (not bare lines on stderr
        # before Celery has set up its logging).
        lines = [line for line in log.splitlines() if "otel-jobs: celery configuration:" in line]
        assert len(lines) == len(BAD_FINDINGS)
        for line in lines:
            assert re.match(r"\[[^]]+: WARNING/MainProcess\] otel-jobs: celery config", line), line
    finally:
        stop_worker(worker)


def test_doctor_prints_the_findings_without_a_worker() -> None:
    doctor = [sys.executable, "-m", "otel_jobs", "doctor"]
    bad = subprocess.run(
        [*doctor, "--celery-app", "tests.integrations.celery_bad_app:app"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1, bad.stderr
    printed = {line.split()[1] for line in bad.stdout.splitlines()}
    assert printed == BAD_FINDINGS
    assert all(line.startswith("celery ") for line in bad.stdout.splitlines())

    good = subprocess.run(
        [*doctor, "--celery-app", "tests.integrations.celery_app"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert good.returncode == 0, good.stderr
    assert "no known queue configuration mistake" in good.stdout

    as_json = subprocess.run(
        [*doctor, "--json", "--celery-app", "tests.integrations.celery_bad_app:app"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert {f["finding"] for f in json.loads(as_json.stdout)} == BAD_FINDINGS

    missing = subprocess.run(
        [*doctor, "--celery-app", "no_such_module:app"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert missing.returncode == 2
    assert "no_such_module" in missing.stderr
    nothing = subprocess.run([*doctor], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert nothing.returncode == 2


def test_doctor_checks_rq_through_its_audit() -> None:
    require_redis()
    result = subprocess.run(
        [sys.executable, "-m", "otel_jobs", "doctor", "--rq-redis-url", REDIS_URL],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    # Whatever the RQ audit finds in that database, doctor prints it as RQ findings.
    assert result.returncode in (0, 1), result.stderr
    for line in result.stdout.splitlines():
        assert line.startswith("rq ") or "no known queue configuration mistake" in line


# --- install / uninstall ----------------------------------------------------------------------


def test_instrument_twice_then_uninstrument_leaves_no_receiver() -> None:
    tracked = (signals.before_task_publish, signals.task_prerun, signals.task_postrun,
               signals.task_failure, signals.worker_init)  # fmt: skip
    before = [len(s.receivers) for s in tracked]
    otel_jobs.instrument(frameworks=["celery"], outbound=[], prometheus=False, watchdog=False)
    otel_jobs.instrument(frameworks=["celery"], outbound=[], prometheus=False, watchdog=False)
    assert [len(s.receivers) for s in tracked] == [n + 1 for n in before]
    otel_jobs.uninstrument()
    assert [len(s.receivers) for s in tracked] == before


# --- the example -------------------------------------------------------------------------------


def test_the_example_shows_its_stuck_task_on_metrics_and_in_the_log(tmp_path: Path) -> None:
    """examples/celery as its README runs it, with a partner that accepts and never answers."""
    import socket

    import redis

    require_redis()
    example = ROOT / "examples" / "celery"
    redis.Redis.from_url(REDIS_URL).delete("default", "partners")  # the example's queue names
    port = free_port()
    log = tmp_path / "example.log"
    with socket.create_server(("127.0.0.1", 0)) as partner:
        env = {
            **os.environ,
            "CELERY_BROKER_URL": REDIS_URL,
            "OTEL_JOBS_PROMETHEUS_PORT": str(port),
            "PARTNER_URL": f"http://127.0.0.1:{partner.getsockname()[1]}/report",
        }
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [CELERY, "-A", "proj", "worker", "-P", "prefork", "-c", "2",
                 "-Q", "default,partners", "--without-gossip", "--without-mingle",
                 "--without-heartbeat", "-l", "INFO"],
                cwd=example, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            wait_for("the example worker", lambda: "ready." in log.read_text())
            sent = subprocess.run(
                [sys.executable, "send.py"], cwd=example, env=env, capture_output=True,
                text=True, timeout=120,
            )  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            stuck = {"job_name": "example.fetch_partner_report", "queue": "partners"}
            m = wait_for(
                "the stuck task on /metrics",
                lambda: (
                    (s := scrape(url)).total("otel_jobs_runs_stalled", **stuck) == 1
                    and s.total("otel_jobs_runs_finished_total", job_name="example.resize_image")
                    == 10
                    and s
                ),
            )
            assert m.value("otel_jobs_runs_in_progress", **stuck) == 1
            assert m.value("otel_jobs_stalls_detected_total", reason="no_heartbeat", **stuck) == 1
            assert m.total("otel_jobs_outbound_calls_without_timeout_total", library="urllib") == 1
            wait_for(
                "the diagnosis in the log",
                lambda: "stalled" in (text := log.read_text()) and "tasks.py:" in text,
            )
        finally:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
            redis.Redis.from_url(REDIS_URL).delete("default", "partners")
