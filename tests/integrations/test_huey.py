"""Huey: a real ``huey_consumer`` (forked worker processes, and threads) on the real Redis,
scraped on its real ``/metrics``; plus install/uninstall of the signal receivers."""

from __future__ import annotations

import datetime
import os
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import otel_jobs
from tests.integrations.counts import MIX_FINISHED, MIX_STARTED, QueueCounts
from tests.integrations.workers import GroupWorker, purge_huey, start
from tests.support import Samples, free_port, require_redis, scrape

huey_lib = pytest.importorskip("huey")

from huey import RedisHuey  # noqa: E402
from huey import signals as S  # noqa: E402

pytestmark = pytest.mark.broker

REDIS_URL = "redis://127.0.0.1:6379/13"
ROOT = Path(__file__).resolve().parents[2]

# The consumer's module: it creates the Huey instance and calls instrument(), as the docs say.
APP = textwrap.dedent(
    """
    import os
    import threading
    import time

    from huey import RedisHuey

    import otel_jobs
    from tests.integrations.job_bodies import fail_first_attempt

    huey = RedisHuey(os.environ["HQ_NAME"], url=os.environ["HQ_REDIS"])
    if os.environ.get("HQ_INSTRUMENT") == "1":
        otel_jobs.instrument(
            prometheus_port=int(os.environ["HQ_PORT"]),
            frameworks=["huey"],
            outbound=[],
            watchdog_interval=0.5,
            jobs={"hq_app.hang": {"heartbeat_timeout": 1}},
        )
    STATE = os.environ["HQ_STATE"]


    @huey.task()
    def ok(i):
        return None


    @huey.task()
    def later():
        return None


    @huey.task()
    def boom(i):
        raise RuntimeError("boom")


    @huey.task(retries=2)
    def flaky(key):
        fail_first_attempt(STATE, key)


    @huey.task(timeout=1)
    def slow():
        time.sleep(60)  # Huey's process workers interrupt it with SIGALRM after 1 s


    @huey.task()
    def hang():
        threading.Event().wait()  # never returns, never heartbeats


    @huey.task()
    @huey.lock_task("otel-jobs-test-lock")
    def guarded():
        return None


    @huey.task()
    def gone():
        return None


    @huey.task()
    def stale():
        return None
    """
)


class Consumer(GroupWorker):
    """A huey_consumer in its own session, killed with its worker processes at the end."""

    def __init__(self, tmp_path: Path, worker_type: str) -> None:
        self.name = f"otel-jobs-test-{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/metrics"
        self.state = tmp_path / "state"
        self.state.mkdir()
        (tmp_path / "hq_app.py").write_text(APP)
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
            "HQ_NAME": self.name,
            "HQ_REDIS": REDIS_URL,
            "HQ_STATE": str(self.state),
            "HQ_PORT": str(self.port),
            "HQ_INSTRUMENT": "1",
            "OTEL_JOBS_MULTIPROCESS_DIR": str(tmp_path / "mp"),
            # Not UTC: Huey keeps naive UTC times, which must not be read as local time.
            "TZ": "Asia/Kolkata",
        }
        self.log = tmp_path / "consumer.log"
        consumer = str(Path(sys.executable).parent / "huey_consumer")
        self.proc = start(
            [sys.executable, consumer, "hq_app.huey", "-k", worker_type, "-w", "2", "-d", "0.1",
             "-m", "0.2", "--no-periodic"],
            self.log, self.env, tmp_path, new_session=True,
        )  # fmt: skip

    def producer(self) -> RedisHuey:
        """The same app module, imported here as the producer (not instrumented)."""
        for key, value in self.env.items():
            if key.startswith("HQ_"):
                os.environ[key] = value
        os.environ["HQ_INSTRUMENT"] = "0"
        sys.path.insert(0, str(Path(self.state).parent))
        import hq_app

        return hq_app


@pytest.fixture
def consumer_factory(tmp_path: Path) -> Iterator[Callable[[str], Consumer]]:
    started: list[Consumer] = []

    def start(worker_type: str) -> Consumer:
        consumer = Consumer(tmp_path, worker_type)
        started.append(consumer)
        return consumer

    yield start
    for consumer in started:
        consumer.stop()
        purge_huey(REDIS_URL, consumer.name)
    for key in [k for k in os.environ if k.startswith("HQ_")]:
        del os.environ[key]
    sys.path[:] = [p for p in sys.path if p != str(tmp_path)]
    sys.modules.pop("hq_app", None)


def test_process_workers_outcomes_timeout_skips_stall_and_exact_counts(
    consumer_factory: Callable[[str], Consumer],
) -> None:
    require_redis()
    consumer = consumer_factory("process")
    consumer.wait_serving()
    app = consumer.producer()
    q = consumer.name

    lock = app.huey.lock_task("otel-jobs-test-lock")
    lock.acquire()  # held by the test: the guarded task meets lock contention
    t_sent = time.time()
    app.later.schedule(delay=3)
    for i in range(3):
        app.ok(i)
    for i in range(2):
        app.boom(i)
    app.flaky("flaky-1")
    app.slow()
    app.hang()
    app.guarded()
    app.gone.schedule(delay=2).revoke()
    # An absolute expiry (naive UTC, as Huey keeps time): a relative one restarts at re-enqueue.
    expiry = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    app.stale.schedule(delay=2, expires=expiry + datetime.timedelta(seconds=1))

    counts = QueueCounts(q, prefix="hq_app.")
    finished, skipped = counts.finished, counts.skipped

    def settled(s: Samples) -> bool:
        return (
            counts.mix_ended(s)
            and finished(s, "guarded", "failure") == 1
            and skipped(s, "gone", "revoked") == 1
            and skipped(s, "stale", "expired") == 1
        )

    try:
        s = consumer.wait_for(settled, "every run to finish and the hung run to be stalled")
        t_seen = time.time()
        time.sleep(1.5)  # a few more watchdog ticks: nothing counted twice, nothing late
        s = scrape(consumer.url)

        counts.assert_exact(
            s, {**MIX_STARTED, "guarded": 1}, {**MIX_FINISHED, ("guarded", "failure"): 1}
        )
        for job in ("gone", "stale"):  # never started
            assert s.total("otel_jobs_runs_started_total", job_name=f"hq_app.{job}", queue=q) == 0
        assert skipped(s, "guarded", "locked") == 1
        assert skipped(s, "gone", "revoked") == 1
        assert skipped(s, "stale", "expired") == 1
        assert s.total("otel_jobs_runs_skipped_total", queue=q) == 3

        # The task's timeout is its max duration; tasks without one keep the global default.
        assert s.value("otel_jobs_run_max_duration_seconds", job_name="hq_app.slow", queue=q) == 1.0
        assert (
            s.value("otel_jobs_run_max_duration_seconds", job_name="hq_app.ok", queue=q) == 3600.0
        )

        # The hung run: in flight in a forked worker, stalled once, seen on the consumer's endpoint.
        counts.assert_stalled_once(s, "hang", heartbeat_timeout=1.0)
        assert s.value("otel_jobs_runs_in_progress", job_name="hq_app.ok", queue=q) == 0

        # Queue wait: only tasks with a due time have one (Huey messages carry no publish
        # time); the scheduled task's wait is measured from its due time (publish + 3 s).
        assert s.value("otel_jobs_queue_wait_seconds_count", job_name="hq_app.later", queue=q) == 1
        assert s.total("otel_jobs_queue_wait_seconds_count", job_name="hq_app.ok", queue=q) == 0
        wait = s.value("otel_jobs_queue_wait_seconds_sum", job_name="hq_app.later", queue=q)
        assert 0 <= wait <= (t_seen - t_sent) - 3.0 + 0.01, wait
    finally:
        lock.release()
        consumer.stop()


def test_thread_workers_share_one_process(consumer_factory: Callable[[str], Consumer]) -> None:
    require_redis()
    consumer = consumer_factory("thread")
    consumer.wait_serving()
    app = consumer.producer()
    q = consumer.name
    for i in range(4):
        app.ok(i)
    app.boom(1)
    app.hang()

    def settled(s: Samples) -> bool:
        return (
            s.total("otel_jobs_runs_finished_total", job_name="hq_app.ok", queue=q) == 4
            and s.total("otel_jobs_runs_finished_total", job_name="hq_app.boom", queue=q) == 1
            and s.total("otel_jobs_runs_stalled", job_name="hq_app.hang", queue=q) == 1
        )

    s = consumer.wait_for(settled, "the runs of a threaded consumer")
    f = "otel_jobs_runs_finished_total"
    assert s.value(f, job_name="hq_app.ok", queue=q, outcome="success") == 4
    assert s.value(f, job_name="hq_app.boom", queue=q, outcome="failure") == 1
    assert s.value("otel_jobs_runs_in_progress", job_name="hq_app.hang", queue=q) == 1


# --- in process: install/uninstall ------------------------------------------------------------


def _receivers(huey: RedisHuey) -> list[object]:
    return [r for rs in huey._signal.receivers.values() for r in rs]


def test_install_twice_and_uninstall_restore_huey(instrumented: Callable[..., object]) -> None:
    original_init = RedisHuey.__init__
    from huey.api import Huey

    original_base_init = Huey.__init__
    before = RedisHuey(f"otel-jobs-test-{uuid.uuid4().hex[:8]}", url=REDIS_URL)
    globals()["_HUEY_BEFORE"] = before  # exists before instrument(): found through this module
    try:
        instrumented(frameworks=["huey"])
        otel_jobs.instrument(frameworks=["huey"])  # a second call changes nothing
        assert Huey.__init__ is not original_base_init
        after = RedisHuey(f"otel-jobs-test-{uuid.uuid4().hex[:8]}", url=REDIS_URL)
        for huey in (before, after):
            assert len({id(r) for r in _receivers(huey)}) == 1  # one receiver, connected once
            for name in (S.SIGNAL_EXECUTING, S.SIGNAL_COMPLETE, S.SIGNAL_ERROR, S.SIGNAL_LOCKED):
                assert len(huey._signal.receivers[name]) == 1
        otel_jobs.uninstrument()
        assert Huey.__init__ is original_base_init
        assert RedisHuey.__init__ is original_init
        for huey in (before, after, RedisHuey("otel-jobs-test-x", url=REDIS_URL)):
            assert _receivers(huey) == []
    finally:
        globals().pop("_HUEY_BEFORE", None)


def test_immediate_mode_spans(instrumented: Callable[..., object], span_exporter) -> None:
    """Huey's immediate mode runs tasks in the caller, through the same signals: one span each."""
    instrumented(frameworks=["huey"])
    huey = RedisHuey("otel-jobs-immediate", immediate=True)

    @huey.task()
    def add(a: int, b: int) -> int:
        return a + b

    @huey.task()
    def fail() -> None:
        raise ValueError("nope")

    assert add(1, 2)() == 3
    fail()
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    ok = spans[huey._registry.task_to_string(add.task_class)]
    bad = spans[huey._registry.task_to_string(fail.task_class)]
    assert ok.attributes["job.framework"] == "huey"
    assert ok.attributes["job.queue"] == "otel-jobs-immediate"
    assert ok.attributes["job.outcome"] == "success"
    assert ok.attributes["job.attempt"] == 1
    assert bad.attributes["job.outcome"] == "failure"
    assert bad.status.status_code.name == "ERROR"


def test_immediate_mode_control_flow_signals(instrumented: Callable[..., object]) -> None:
    """RetryTask, CancelExecution (task and pre-execute hook), lock contention and revocation,
    through Huey's real signals in immediate mode; read on this process's real /metrics."""
    from huey.exceptions import CancelExecution, RetryTask

    agent = instrumented(frameworks=["huey"], outbound=[])
    name = f"otel-jobs-immediate-{uuid.uuid4().hex[:8]}"
    huey = RedisHuey(name, immediate=True)
    attempts: list[int] = []

    @huey.task(retries=1)
    def again() -> None:
        attempts.append(1)
        if len(attempts) == 1:
            raise RetryTask()

    @huey.task()
    def stop() -> None:
        raise CancelExecution(retry=False)

    @huey.task()
    def vetoed() -> None:
        raise AssertionError("a pre-execute hook cancels it first")

    @huey.pre_execute()
    def veto(task: object) -> None:
        if type(task).__name__ == "vetoed":
            raise CancelExecution()

    @huey.task()
    @huey.lock_task("held")
    def locked() -> None:
        return None

    @huey.task()
    def revoked() -> None:
        return None

    again()
    stop()
    vetoed()
    with huey.lock_task("held"):
        locked()
    revoked.revoke(revoke_once=True)
    revoked()
    locked()  # the lock is free again: success

    s = scrape(agent.server.url)  # type: ignore[attr-defined]

    def job(fn: object) -> str:
        return huey._registry.task_to_string(fn.task_class)  # type: ignore[attr-defined]

    def finished(fn: object, outcome: str) -> float:
        return s.total(
            "otel_jobs_runs_finished_total", job_name=job(fn), queue=name, outcome=outcome
        )

    assert len(attempts) == 2
    assert finished(again, "retry") == 1 and finished(again, "success") == 1
    assert s.value("otel_jobs_runs_started_total", job_name=job(again), queue=name) == 2
    assert finished(stop, "cancelled") == 1
    assert finished(vetoed, "cancelled") == 1
    assert finished(locked, "failure") == 1 and finished(locked, "success") == 1
    skipped = "otel_jobs_runs_skipped_total"
    assert s.value(skipped, job_name=job(locked), queue=name, reason="locked") == 1
    assert s.value(skipped, job_name=job(revoked), queue=name, reason="revoked") == 1
    assert s.total("otel_jobs_runs_started_total", job_name=job(revoked), queue=name) == 0
    assert s.total("otel_jobs_runs_in_progress", queue=name) == 0
