"""APScheduler 3.x in process: a real BackgroundScheduler (and AsyncIOScheduler) on real time,
with the runs and skips read back from the real /metrics endpoint.

Every count on /metrics is compared with the events the scheduler itself dispatched, counted by a
listener of the test's own.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_JOB_MAX_INSTANCES,
    EVENT_JOB_MISSED,
    JobEvent,
)
from apscheduler.executors.base import BaseExecutor
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.schedulers.background import BackgroundScheduler

import otel_jobs
from tests.integrations.hooks import assert_untouched_by
from tests.integrations.workers import wait_for
from tests.support import Samples, scrape

QUEUE = "default"  # the executor alias is the queue


class Events:
    """What the scheduler dispatched, per (event code, job id)."""

    def __init__(self, scheduler: Any) -> None:
        self.counts: Counter[tuple[int, str]] = Counter()
        self.retvals: list[Any] = []
        self.scheduled: dict[str, list[datetime]] = {}
        self._lock = threading.Lock()
        scheduler.add_listener(
            self._on,
            EVENT_JOB_EXECUTED | EVENT_JOB_ERROR | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES,
        )

    def _on(self, event: JobEvent) -> None:
        with self._lock:
            self.counts[(event.code, event.job_id)] += 1
            if event.code == EVENT_JOB_EXECUTED:
                self.retvals.append(event.retval)

    def count(self, code: int, job_id: str) -> int:
        with self._lock:
            return self.counts[(code, job_id)]


def metrics() -> Samples:
    url = otel_jobs.metrics_url()
    assert url is not None
    return scrape(url)


def test_executions_and_errors_are_runs_counted_exactly(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(frameworks=["apscheduler"])
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    events = Events(scheduler)

    def tick() -> tuple[str, bool, str, float]:
        run = otel_jobs.current_run()
        assert run is not None
        return run.name, run.thread_id == threading.get_ident(), run.framework, time.time()

    def broken() -> None:
        raise ValueError("boom")

    scheduler.add_job(tick, "interval", seconds=0.2, id="tick-id", name="tick")
    scheduler.add_job(broken, "interval", seconds=0.3, id="broken-id", name="broken")
    scheduler.start()
    try:
        wait_for(
            "5 executions and 3 errors",
            lambda: (
                events.count(EVENT_JOB_EXECUTED, "tick-id") >= 5
                and events.count(EVENT_JOB_ERROR, "broken-id") >= 3
            ),
        )
    finally:
        scheduler.shutdown(wait=True)
    executed = events.count(EVENT_JOB_EXECUTED, "tick-id")
    errored = events.count(EVENT_JOB_ERROR, "broken-id")

    s = metrics()
    assert s.value("otel_jobs_runs_started_total", job_name="tick", queue=QUEUE) == executed
    assert (
        s.value("otel_jobs_runs_finished_total", job_name="tick", queue=QUEUE, outcome="success")
        == executed
    )
    assert s.total("otel_jobs_runs_finished_total", job_name="tick", queue=QUEUE) == executed
    assert s.value("otel_jobs_runs_started_total", job_name="broken", queue=QUEUE) == errored
    assert (
        s.value("otel_jobs_runs_finished_total", job_name="broken", queue=QUEUE, outcome="failure")
        == errored
    )
    assert s.value("otel_jobs_queue_wait_seconds_count", job_name="tick", queue=QUEUE) == executed
    assert s.value("otel_jobs_runs_in_progress", job_name="tick", queue=QUEUE) == 0
    # The run was the current run of the very thread that executed the job; job ids are no label.
    assert {r[:3] for r in events.retvals} == {("tick", True, "apscheduler")}
    assert s.find("otel_jobs_runs_started_total", job_name="tick-id") == []


def test_queue_wait_is_measured_from_the_scheduled_time(instrumented: Callable[..., Any]) -> None:
    instrumented(frameworks=["apscheduler"])
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    events = Events(scheduler)
    due = datetime.now(timezone.utc) + timedelta(seconds=0.5)
    scheduler.add_job(
        time.time, "date", run_date=due, id="stamp-id", name="stamp", misfire_grace_time=None
    )
    scheduler.start()
    try:
        wait_for("the stamp run", lambda: events.count(EVENT_JOB_EXECUTED, "stamp-id") == 1)
    finally:
        scheduler.shutdown(wait=True)
    (body_started,) = events.retvals
    s = metrics()
    assert s.value("otel_jobs_queue_wait_seconds_count", job_name="stamp", queue=QUEUE) == 1
    wait = s.value("otel_jobs_queue_wait_seconds_sum", job_name="stamp", queue=QUEUE)
    # The run starts just before the job's body, and not before its scheduled time.
    assert 0 <= wait <= body_started - due.timestamp() + 0.001


def test_a_missed_run_is_counted_as_skipped(instrumented: Callable[..., Any]) -> None:
    instrumented(frameworks=["apscheduler"])
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    events = Events(scheduler)
    ran = threading.Event()
    # Due 30 s ago with a grace time of 1 s: APScheduler skips it as missed.
    scheduler.add_job(
        ran.set, "date", run_date=datetime.now(timezone.utc) - timedelta(seconds=30),
        misfire_grace_time=1, id="late-id", name="late",
    )  # fmt: skip
    scheduler.start()
    try:
        wait_for("the missed event", lambda: events.count(EVENT_JOB_MISSED, "late-id") == 1)
    finally:
        scheduler.shutdown(wait=True)
    assert not ran.is_set()
    s = metrics()
    assert (
        s.value("otel_jobs_runs_skipped_total", job_name="late", queue=QUEUE, reason="missed") == 1
    )
    assert s.find("otel_jobs_runs_skipped_total", job_name="late", reason="max_instances") == []
    assert s.total("otel_jobs_runs_started_total", job_name="late") == 0


def test_a_hung_job_stalls_and_its_skipped_runs_are_counted(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(
        frameworks=["apscheduler"], watchdog_interval=0.2, jobs={"busy": {"heartbeat_timeout": 1}}
    )
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    events = Events(scheduler)
    release = threading.Event()

    def busy() -> None:
        release.wait(120)  # stuck, without heartbeats, until the test releases it

    scheduler.add_job(busy, "interval", seconds=0.2, max_instances=1, id="busy-id", name="busy")
    scheduler.start()
    try:

        def stalled() -> Samples | None:
            s = metrics()
            return (
                s if s.total("otel_jobs_runs_stalled", job_name="busy", queue=QUEUE) == 1 else None
            )

        s = wait_for("the stalled verdict on /metrics", stalled)
        assert s.value("otel_jobs_runs_in_progress", job_name="busy", queue=QUEUE) == 1
        assert (
            s.value(
                "otel_jobs_stalls_detected_total",
                job_name="busy",
                queue=QUEUE,
                reason="no_heartbeat",
            )
            == 1
        )
        wait_for(
            "3 skipped submissions", lambda: events.count(EVENT_JOB_MAX_INSTANCES, "busy-id") >= 3
        )
        scheduler.pause()  # no new submissions: the counts below are final
    finally:
        release.set()
        scheduler.shutdown(wait=True)
    skipped = events.count(EVENT_JOB_MAX_INSTANCES, "busy-id")
    s = metrics()
    assert (
        s.value(
            "otel_jobs_runs_skipped_total", job_name="busy", queue=QUEUE, reason="max_instances"
        )
        == skipped
    )
    assert s.value("otel_jobs_runs_started_total", job_name="busy", queue=QUEUE) == 1
    assert (
        s.value("otel_jobs_runs_finished_total", job_name="busy", queue=QUEUE, outcome="success")
        == 1
    )
    assert s.total("otel_jobs_runs_stalled", job_name="busy", queue=QUEUE) == 0


def test_a_coroutine_job_is_the_current_run_of_its_task(instrumented: Callable[..., Any]) -> None:
    instrumented(frameworks=["apscheduler"], prometheus=False, watchdog=False)
    seen: list[tuple[str, bool]] = []

    async def main() -> None:
        done = asyncio.Event()

        async def job() -> None:
            run = otel_jobs.current_run()
            assert run is not None
            seen.append((run.name, run.task is asyncio.current_task()))
            done.set()

        scheduler = AsyncIOScheduler(timezone=timezone.utc)
        scheduler.add_job(
            job, "date", run_date=datetime.now(timezone.utc), name="async-job",
            misfire_grace_time=None,  # however slow the machine, it runs
        )  # fmt: skip
        scheduler.start()
        try:
            await asyncio.wait_for(done.wait(), 60)
        finally:
            scheduler.shutdown(wait=False)

    asyncio.run(main())
    assert seen == [("async-job", True)]


def test_uninstrument_restores_apscheduler() -> None:
    original = BaseExecutor.submit_job
    otel_jobs.instrument(frameworks=["apscheduler"], prometheus=False, watchdog=False)
    otel_jobs.instrument(frameworks=["apscheduler"], prometheus=False, watchdog=False)
    patched = BaseExecutor.submit_job
    try:
        assert patched is not original
        assert patched.__wrapped__ is original  # type: ignore[attr-defined]  # wrapped once
        scheduler = BackgroundScheduler(timezone=timezone.utc)
        done = threading.Event()
        scheduler.add_job(
            done.set, "date", run_date=datetime.now(timezone.utc), misfire_grace_time=None
        )
        scheduler.start()
        try:
            assert done.wait(60)
            # The scheduler removes its "date" job after submitting it; shutting down before
            # that empties the job store under it (a JobLookupError in its thread).
            deadline = time.monotonic() + 60
            while scheduler.get_jobs() and time.monotonic() < deadline:
                time.sleep(0.01)
            listeners = len(scheduler._listeners)
            assert listeners == 1  # ours, added on the first submission
        finally:
            scheduler.shutdown(wait=True)
    finally:
        otel_jobs.uninstrument()
    assert BaseExecutor.submit_job is original
    assert scheduler._listeners == []
    otel_jobs.instrument(frameworks=["apscheduler"], prometheus=False, watchdog=False)
    assert BaseExecutor.submit_job is not original
    otel_jobs.uninstrument()
    assert BaseExecutor.submit_job is original


@pytest.fixture(autouse=True)
def _patched_only_while_instrumented() -> Any:
    original = BaseExecutor.submit_job
    yield
    assert BaseExecutor.submit_job is original


def test_not_hooked_when_frameworks_leave_it_out() -> None:
    assert_untouched_by(BaseExecutor, "submit_job", ["arq"])
