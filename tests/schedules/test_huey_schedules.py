"""Huey periodic tasks: the schedule gauges match what a real consumer's scheduler holds.

A real consumer (worker threads, its scheduler thread) on the real Redis runs in this process, so
that its scheduler's next check can be compared with the gauges; its periodic checks are 2 s
apart instead of Huey's 60 s (a subclass of its scheduler), and the task is due at every check.
Redis DB 4 is this module's own, emptied before and after.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from huey import RedisHuey
from huey.consumer import Consumer, Scheduler

from tests.support import agent_metrics, emptied_redis_db, scrape

from .conftest import wait_for
from .support import INTERVAL, NEXT, SENT

pytestmark = pytest.mark.broker

REDIS_URL = "redis://127.0.0.1:6379/4"


@pytest.fixture
def clean_db() -> Iterator[None]:
    with emptied_redis_db(REDIS_URL):
        yield


class FastScheduler(Scheduler):
    periodic_task_seconds = 2
    instances: list[Scheduler] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        FastScheduler.instances.append(self)


class FastConsumer(Consumer):
    scheduler_class = FastScheduler


def test_next_run_last_sent_and_interval_match_the_scheduler(
    instrumented: Callable[..., Any], clean_db: None
) -> None:
    instrumented(frameworks=["huey"])
    huey = RedisHuey(f"schedules-{uuid.uuid4().hex[:8]}", url=REDIS_URL, utc=True)
    starts: list[float] = []

    ending: list[float] = []  # the task's last line
    completed: list[float] = []  # Huey's "complete" signal, sent once the run is over

    @huey.periodic_task(lambda moment: True)
    def refresh() -> None:
        starts.append(time.time())
        ending.append(time.time())

    @huey.signal("complete")
    def on_complete(signal_name: str, task: Any, *args: Any) -> None:
        completed.append(time.time())

    name = huey._registry.task_to_string(type(refresh.s()))
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    FastScheduler.instances.clear()
    consumer = FastConsumer(huey, workers=1, worker_type="thread", scheduler_interval=1)
    consumer.start()
    try:
        scheduler = FastScheduler.instances[0]
        wait_for("the gauges", lambda: agent_metrics().find(NEXT, schedule=name))
        for _ in range(50):  # a scrape taken while the scheduler's next check did not move
            before = scheduler._next_periodic
            offset = time.time() - time.monotonic()
            m = agent_metrics()
            if scheduler._next_periodic == before:
                break
        # The scheduler keeps its next check on the monotonic clock; the gauge is that instant
        # as Unix time (the two conversions differ by the clocks' read jitter only).
        assert m.value(NEXT, job_name=name, schedule=name) == pytest.approx(
            before + offset, abs=0.01
        )
        assert m.value(INTERVAL, job_name=name, schedule=name) == pytest.approx(2, abs=1e-6)

        wait_for("two runs", lambda: len(starts) >= 2, timeout=60)
        for _ in range(50):
            count = len(starts)
            m = agent_metrics()
            if len(starts) == count:
                break
        sent = m.value(SENT, job_name=name, schedule=name)
        assert starts[count - 2] < sent  # after the previous run started
        assert m.value(NEXT, job_name=name, schedule=name) > sent
        # The last success is the end of the run: after its last line, before Huey's signal
        # (otel-jobs' receiver, connected first, finishes the run).
        for _ in range(50):
            done = len(completed)
            m = agent_metrics()
            if len(completed) == done == len(ending):
                break
        last = m.value("otel_jobs_last_success_timestamp_seconds", job_name=name)
        assert ending[done - 1] <= last <= completed[done - 1]
    finally:
        consumer.stop(graceful=True)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


APP = """
import os

from huey import RedisHuey, crontab

import otel_jobs

huey = RedisHuey(os.environ["HUEY_NAME"], url=os.environ["REDIS_URL"], utc=True)
otel_jobs.instrument(prometheus_port=int(os.environ["METRICS_PORT"]), watchdog_interval=0.5)


@huey.periodic_task(crontab(minute="*"))
def every_minute():
    return "ran"
"""


def test_process_workers_the_schedulers_process_reaches_the_consumers_metrics(
    clean_db: None, tmp_path: Any
) -> None:
    """``-k process``: the scheduler is a process of its own, forked from the consumer."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.support import free_port

    from .conftest import stop

    (tmp_path / "periodic_app.py").write_text(APP)
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).resolve().parents[2])]),
        "HUEY_NAME": f"schedules-{uuid.uuid4().hex[:8]}",
        "REDIS_URL": REDIS_URL,
        "METRICS_PORT": str(port),
    }
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    log = (tmp_path / "consumer.log").open("wb")
    consumer = str(Path(sys.executable).parent / "huey_consumer")
    proc = subprocess.Popen(
        [sys.executable, consumer, "periodic_app.huey", "-k", "process", "-w", "1"],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        name = "periodic_app.every_minute"
        m = wait_for(
            "the scheduler process's entry on the consumer's /metrics",
            lambda: (s := scrape(url)).find(NEXT, job_name=name, schedule=name) and s,
            timeout=60,
        )
        assert m.value(INTERVAL, job_name=name, schedule=name) == 60
        assert m.value(NEXT, job_name=name, schedule=name) > time.time() - 60
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        stop(proc)
        log.close()
