"""Dramatiq: real worker processes (the dramatiq CLI, forked processes and threads) on the real
Redis and RabbitMQ servers, scraped on their real ``/metrics``; plus install/uninstall and spans."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

import otel_jobs
from tests.integrations.counts import MIX_FINISHED, MIX_STARTED, QueueCounts
from tests.integrations.dramatiq_app import APP
from tests.integrations.workers import GroupWorker, purge_dramatiq, start
from tests.support import Samples, free_port, require_rabbitmq, require_redis, scrape

dramatiq = pytest.importorskip("dramatiq")

from dramatiq.brokers.redis import RedisBroker  # noqa: E402

from otel_jobs.integrations.dramatiq import OtelJobsMiddleware  # noqa: E402

pytestmark = pytest.mark.broker

REDIS_URL = "redis://127.0.0.1:6379/12"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672"
ROOT = Path(__file__).resolve().parents[2]

# The launcher a user writes to pass options in code (documented in the module docstring).
LAUNCHER = textwrap.dedent(
    """
    import os

    from otel_jobs.integrations.dramatiq import main

    raise SystemExit(
        main(
            prometheus_port=int(os.environ["DQ_PORT"]),
            frameworks=["dramatiq"],
            jobs={
                **{name: {"heartbeat_timeout": 1} for name in ("hang", "hang_async", "beat_async")},
                "cancel_async": {"heartbeat_timeout": 1, "on_stall": "cancel"},
            },
        )
    )
    """
)


class Worker(GroupWorker):
    """A dramatiq CLI worker in its own session, killed with its processes at the end."""

    def __init__(self, tmp_path: Path, broker_url: str, launcher: str) -> None:
        self.broker_url = broker_url
        self.queue = f"otel-jobs-test-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.state = tmp_path / "state"
        self.state.mkdir()
        (tmp_path / "dq_app.py").write_text(APP)
        (tmp_path / "dq_launcher.py").write_text(LAUNCHER)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
            "DQ_BROKER": broker_url,
            "DQ_QUEUE": self.queue,
            "DQ_STATE": str(self.state),
            "DQ_PORT": str(self.port),
            "OTEL_JOBS_PROMETHEUS_PORT": str(self.port),
            "OTEL_JOBS_MULTIPROCESS_DIR": str(tmp_path / "mp"),
            "OTEL_JOBS_WATCHDOG_INTERVAL": "0.5",
        }
        if launcher == "cli":
            # The plain dramatiq command: each worker process instruments itself.
            command = [sys.executable, "-m", "dramatiq"]
            self.env["DQ_INSTRUMENT"] = "1"
        elif launcher == "module":
            # The shortcut: options from the environment only.
            command = [sys.executable, "-m", "otel_jobs.integrations.dramatiq"]
            self.env["OTEL_JOBS_FRAMEWORKS"] = "dramatiq"
            self.env["OTEL_JOBS_HEARTBEAT_TIMEOUT"] = "1"
        else:
            command = [sys.executable, str(tmp_path / "dq_launcher.py")]
        self.log = tmp_path / "worker.log"
        self.proc = start(
            [*command, "dq_app", "--processes", "2", "--threads", "2"],
            self.log, self.env, tmp_path, new_session=True,
        )  # fmt: skip
        sys.path.insert(0, str(tmp_path))


@contextlib.contextmanager
def producer(worker: Worker) -> Iterator[Any]:
    """The worker's module on this (producer) side: same actors, same broker and queue."""
    global_broker = dramatiq.broker.global_broker
    os.environ["DQ_BROKER"], os.environ["DQ_QUEUE"] = worker.broker_url, worker.queue
    os.environ["DQ_STATE"] = str(worker.state)
    try:
        import dq_app

        yield dq_app
        dq_app.broker.close()
    finally:
        for key in ("DQ_BROKER", "DQ_QUEUE", "DQ_STATE"):
            os.environ.pop(key, None)
        dramatiq.set_broker(global_broker)  # type: ignore[arg-type]


@pytest.fixture
def worker_factory(tmp_path: Path) -> Iterator[Callable[[str, str], Worker]]:
    """``worker_factory(broker_url, launcher)``: a started :class:`Worker` (the test skipped
    without its broker), stopped and its queue purged after the test."""
    started: list[Worker] = []

    def start(broker_url: str, launcher: str) -> Worker:
        (require_redis if broker_url.startswith("redis") else require_rabbitmq)()
        worker = Worker(tmp_path, broker_url, launcher)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
        purge_dramatiq(worker.broker_url, worker.queue)
    sys.path[:] = [p for p in sys.path if p != str(tmp_path)]
    sys.modules.pop("dq_app", None)


@pytest.mark.parametrize(
    ("broker_name", "launcher"),
    [("redis", "custom"), ("rabbitmq", "module")],
    ids=["redis-custom-launcher", "rabbitmq-module-launcher"],
)
def test_real_worker_outcomes_limits_stalls_and_exact_counts(
    broker_name: str, launcher: str, worker_factory: Callable[[str, str], Worker]
) -> None:
    worker = worker_factory(REDIS_URL if broker_name == "redis" else RABBITMQ_URL, launcher)
    # The worker's parent serves /metrics before any worker process exists.
    worker.wait_serving()
    with producer(worker) as dq_app:
        t_sent = time.time()
        dq_app.later.send_with_options(delay=3000)
        for i in range(3):
            dq_app.ok.send(i)
        for i in range(2):
            dq_app.boom.send(i)
        dq_app.flaky.send("flaky-1")
        dq_app.slow.send()
        dq_app.hang.send()

    q = worker.queue
    counts = QueueCounts(q)

    def settled(s: Samples) -> bool:
        return counts.mix_ended(s) and s.total("otel_jobs_runs_dead_lettered_total", queue=q) >= 3

    s = worker.wait_for(settled, "every run to finish and the hung run to be stalled")
    t_seen = time.time()
    # One more scrape after a few watchdog ticks: nothing counted twice, nothing late.
    time.sleep(1.5)
    s = scrape(worker.url)

    counts.assert_exact(s, MIX_STARTED, MIX_FINISHED)
    for job, count in MIX_STARTED.items():
        # every run has a queue wait, measured from publish or due time
        assert s.value("otel_jobs_queue_wait_seconds_count", job_name=job, queue=q) == count

    # Dead-letter queue: boom x2 (no retries) and slow (timed out, no retries); not flaky.
    assert s.value("otel_jobs_runs_dead_lettered_total", job_name="boom", queue=q) == 2
    assert s.value("otel_jobs_runs_dead_lettered_total", job_name="slow", queue=q) == 1
    # present at 0 for a job that never dead-lettered, so that increase() sees the first one
    assert s.value("otel_jobs_runs_dead_lettered_total", job_name="flaky", queue=q) == 0
    assert s.total("otel_jobs_runs_dead_lettered_total", queue=q) == 3

    # Native time limits: the actor's time_limit (1000 ms) and the TimeLimit default (10 min).
    assert s.value("otel_jobs_run_max_duration_seconds", job_name="slow", queue=q) == 1.0
    assert s.value("otel_jobs_run_max_duration_seconds", job_name="ok", queue=q) == 600.0

    # The hung run: in flight, stalled (no heartbeat for 1 s), counted once.
    counts.assert_stalled_once(s, "hang", heartbeat_timeout=1.0)
    for job in ("ok", "later", "boom", "flaky", "slow"):
        assert s.value("otel_jobs_runs_in_progress", job_name=job, queue=q) == 0
    assert s.find("otel_jobs_oldest_run_start_timestamp_seconds", job_name="ok", queue=q) == []

    # The delayed message's wait is measured from its due time (publish + 3 s), so it is at
    # most the time from due time to when we saw it finished (the slack covers ms rounding).
    wait = s.value("otel_jobs_queue_wait_seconds_sum", job_name="later", queue=q)
    assert 0 <= wait <= (t_seen - t_sent) - 3.0 + 0.01, wait


def test_async_actor_runs_follow_their_coroutine(
    worker_factory: Callable[[str, str], Worker],
) -> None:
    # An async actor's coroutine runs on Dramatiq's event-loop thread while the worker thread
    # waits: its heartbeats reach the run, a hung one is diagnosed at its own await, and the
    # cancel policy cancels its task.
    worker = worker_factory(REDIS_URL, "custom")
    worker.wait_serving()
    with producer(worker) as dq_app:
        dq_app.hang_async.send()
        dq_app.beat_async.send()
        dq_app.cancel_async.send()
    q = worker.queue
    s = worker.wait_for(
        lambda s: (
            s.total("otel_jobs_runs_finished_total", job_name="beat_async", queue=q) == 1
            and s.total("otel_jobs_runs_finished_total", job_name="cancel_async", queue=q) == 1
            and s.total("otel_jobs_stalls_detected_total", job_name="hang_async", queue=q) >= 1
        ),
        "the heartbeating run to finish and the hung one to be stalled",
    )
    assert (
        s.value("otel_jobs_runs_finished_total", job_name="beat_async", queue=q, outcome="success")
        == 1
    )
    assert s.total("otel_jobs_stalls_detected_total", job_name="beat_async", queue=q) == 0
    assert s.total("otel_jobs_runs_stalled", job_name="hang_async", queue=q) == 1
    # the cancel policy cancelled the coroutine's task: the run ended as a timeout
    assert (
        s.value(
            "otel_jobs_runs_finished_total", job_name="cancel_async", queue=q, outcome="timeout"
        )
        == 1
    )
    assert s.value("otel_jobs_runs_in_progress", job_name="cancel_async", queue=q) == 0
    log = worker.log.read_text(errors="replace")
    stalled = [line for line in log.splitlines() if "of hang_async" in line and "stalled" in line]
    assert stalled, log
    assert "in hang_async" in stalled[0], stalled[0]  # its await, not the worker's wait


def test_plain_cli_with_instrument_in_the_module_says_how_to_fix_it(
    worker_factory: Callable[[str, str], Worker],
) -> None:
    """Two worker processes each call instrument(): the second cannot serve /metrics and says so."""
    worker = worker_factory(REDIS_URL, "cli")
    worker.wait_for(lambda s: True, "the first worker process's /metrics")
    deadline = time.monotonic() + 90
    while "python -m otel_jobs.integrations.dramatiq" not in worker.tail():
        assert worker.proc.poll() is None, worker.tail()
        assert time.monotonic() < deadline, worker.tail()
        time.sleep(0.3)
    assert "another process already serves /metrics" in worker.tail()


def test_reload_with_sighup_reexecutes_the_launcher(
    worker_factory: Callable[[str, str], Worker],
) -> None:
    """Dramatiq reloads with os.execvp(sys.argv[0], sys.argv): the launcher comes back, serves
    /metrics again, and the runs of the processes before the reload are still counted."""
    worker = worker_factory(REDIS_URL, "module")
    q = worker.queue
    worker.wait_for(lambda s: True, "/metrics")

    def ok_done(count: int) -> Callable[[Samples], bool]:
        return lambda s: s.total("otel_jobs_runs_finished_total", job_name="ok", queue=q) == count

    with producer(worker) as dq_app:
        dq_app.ok.send(1)
        worker.wait_for(ok_done(1), "the first run")
        os.kill(worker.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 90
        while worker.tail().count("is booting up") < 2:
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no reload:\n{worker.tail()}")
            time.sleep(0.3)
        dq_app.ok.send(2)
    s = worker.wait_for(ok_done(2), "the run after the reload")
    assert worker.proc.poll() is None  # the same process, re-executed
    assert s.value("otel_jobs_runs_started_total", job_name="ok", queue=q) == 2


# --- in process: install/uninstall, and the spans of a real worker on Redis ------------------


def test_install_twice_and_uninstall_restore_brokers(instrumented: Callable[..., object]) -> None:
    original_init = dramatiq.Broker.__init__
    before = RedisBroker(url=REDIS_URL)  # exists before instrument(): found through this module
    globals()["_BROKER_BEFORE"] = before
    try:
        instrumented(frameworks=["dramatiq"])
        otel_jobs.instrument(frameworks=["dramatiq"])  # a second call changes nothing
        assert dramatiq.Broker.__init__ is not original_init
        after = RedisBroker(url=REDIS_URL)
        for broker in (before, after):
            ours = [m for m in broker.middleware if isinstance(m, OtelJobsMiddleware)]
            assert len(ours) == 1
            assert broker.middleware[0] is ours[0]  # first, so its after_* hooks run last
        otel_jobs.uninstrument()
        assert dramatiq.Broker.__init__ is original_init
        for broker in (before, after, RedisBroker(url=REDIS_URL)):
            assert not [m for m in broker.middleware if isinstance(m, OtelJobsMiddleware)]
    finally:
        globals().pop("_BROKER_BEFORE", None)


def test_spans_of_an_in_process_worker(instrumented: Callable[..., object], span_exporter) -> None:
    require_redis()
    instrumented(frameworks=["dramatiq"])
    broker = RedisBroker(url=REDIS_URL)
    queue = f"otel-jobs-test-{uuid.uuid4().hex[:10]}"
    done = threading.Event()
    calls: list[int] = []

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=0, actor_name="span_ok")
    def span_ok() -> None:
        calls.append(1)

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=0, actor_name="span_boom")
    def span_boom() -> None:
        done.set()
        raise ValueError("nope")

    @dramatiq.actor(broker=broker, queue_name=queue, max_retries=0, actor_name="span_stale")
    def span_stale() -> None:
        raise AssertionError("AgeLimit skips it: it never runs")

    retried = threading.Event()
    flaky_calls: list[int] = []

    @dramatiq.actor(
        broker=broker, queue_name=queue, max_retries=1, min_backoff=10, max_backoff=20,
        actor_name="span_flaky",
    )  # fmt: skip
    def span_flaky() -> None:
        flaky_calls.append(1)
        if len(flaky_calls) == 1:
            raise RuntimeError("first attempt fails")
        retried.set()

    worker = dramatiq.Worker(broker, worker_threads=1, worker_timeout=100)
    worker.start()
    try:
        with trace.get_tracer("test").start_as_current_span("publish") as publish:
            message = span_ok.send()
        span_stale.send_with_options(max_age=1)  # older than 1 ms when it is consumed
        span_boom.send()
        span_flaky.send()
        assert done.wait(60) and retried.wait(60)
        worker.join()
    finally:
        worker.stop()
        broker.close()
        purge_dramatiq(REDIS_URL, queue)
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    ok, boom = spans["span_ok"], spans["span_boom"]
    assert ok.attributes["job.framework"] == "dramatiq"
    assert ok.attributes["job.id"] == message.message_id
    assert ok.attributes["job.queue"] == queue
    assert ok.attributes["job.attempt"] == 1
    assert ok.attributes["job.outcome"] == "success"
    # The run is a child of the span current where the message was sent.
    assert ok.context.trace_id == publish.get_span_context().trace_id
    assert ok.parent is not None and ok.parent.span_id == publish.get_span_context().span_id
    assert boom.parent is None  # sent with no span current: a new trace
    assert boom.attributes["job.outcome"] == "failure"
    assert boom.status.status_code.name == "ERROR"
    assert any(e.name == "exception" for e in boom.events)
    # A retry's run is a child of the attempt that failed, through the delay queue.
    first, second = sorted(
        (x for x in span_exporter.get_finished_spans() if x.name == "span_flaky"),
        key=lambda x: x.attributes["job.attempt"],
    )
    assert first.attributes["job.outcome"] == "retry" and second.attributes["job.attempt"] == 2
    assert second.parent is not None and second.parent.span_id == first.context.span_id
    # Too old: AgeLimit skipped it (outcome cancelled) and sent it to the dead-letter queue.
    assert spans["span_stale"].attributes["job.outcome"] == "cancelled"
    s = scrape(otel_jobs.metrics_url())  # type: ignore[arg-type]
    dead = "otel_jobs_runs_dead_lettered_total"
    assert s.value(dead, job_name="span_stale", queue=queue) == 1
    assert s.value(dead, job_name="span_boom", queue=queue) == 1
    assert s.total(dead, job_name="span_ok", queue=queue) == 0
