"""APScheduler 3.x: the schedule gauges match what a real BackgroundScheduler holds.

Next run and last submission are compared with the scheduler's own job state and with the
times its executions saw; the interval with the trigger's.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_SUBMITTED, JobEvent, JobSubmissionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger

import otel_jobs
from tests.support import Samples, agent_metrics

from .conftest import wait_for
from .support import INTERVAL, NEXT, SENT


def consistent(read: Callable[[], Any], probe: Callable[[Samples], Any]) -> tuple[Any, Any]:
    """A scrape taken while the scheduler's value did not change: (value, what the scrape says)."""
    for _ in range(50):
        before = read()
        m = agent_metrics()
        if read() == before:
            return before, probe(m)
    raise AssertionError("the scheduler kept changing while it was scraped")


def test_next_run_last_sent_and_interval_match_the_scheduler(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(frameworks=["apscheduler"])
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    submitted: list[float] = []  # the scheduler's own submission events, Unix time after each
    lock = threading.Lock()

    def on_submitted(event: JobSubmissionEvent) -> None:
        if event.job_id == "every-2s":
            with lock:
                submitted.append(time.time())

    scheduler.add_listener(on_submitted, EVENT_JOB_SUBMITTED)
    ran: list[float] = []  # the job's last line
    executed: list[float] = []  # the scheduler's event once the run is over

    def on_executed(event: JobEvent) -> None:
        if event.job_id == "every-2s":
            executed.append(time.time())

    scheduler.add_listener(on_executed, EVENT_JOB_EXECUTED)

    def report() -> None:
        ran.append(time.time())

    scheduler.add_job(report, "interval", seconds=2, id="every-2s", name="reports.refresh")
    scheduler.add_job(
        report, CronTrigger(hour=3, minute=30, timezone=timezone.utc), id="nightly",
        name="reports.nightly",
    )  # fmt: skip
    scheduler.add_job(report, "date", run_date=datetime.now(timezone.utc) + timedelta(hours=1))
    scheduler.start()
    try:
        job = scheduler.get_job("every-2s")
        nightly = scheduler.get_job("nightly")

        def next_of(j: Any) -> Callable[[], float]:
            return lambda: scheduler.get_job(j.id).next_run_time.timestamp()

        value, seen = consistent(
            next_of(job), lambda m: m.value(NEXT, job_name="reports.refresh", schedule="every-2s")
        )
        assert seen == value
        value, seen = consistent(
            next_of(nightly),
            lambda m: m.value(NEXT, job_name="reports.nightly", schedule="nightly"),
        )
        assert seen == value
        m = agent_metrics()
        assert m.value(INTERVAL, job_name="reports.refresh", schedule="every-2s") == 2
        # A daily crontab: a day from one fire time to the next.
        assert m.value(INTERVAL, job_name="reports.nightly", schedule="nightly") == 86400
        assert not [s for s in m.samples if s.name == NEXT and s.labels["job_name"] == "report"]
        assert m.find(SENT, schedule="nightly") == []  # never sent: no series

        wait_for("two submissions", lambda: len(submitted) >= 2, timeout=60)
        sent = agent_metrics().value(SENT, job_name="reports.refresh", schedule="every-2s")
        assert sent <= time.time()  # a submission's time, not the next run's
        # The gauge is set as the job is submitted, before the scheduler's event that it was:
        # it lies between the event of the submission before and that of its own.

        def events() -> list[float]:
            with lock:
                return list(submitted)

        own = wait_for(
            "the event of the submission the gauge shows",
            lambda: [i for i, t in enumerate(events()) if t >= sent],
            timeout=60,
        )[0]
        assert own >= 1 and events()[own - 1] < sent
        # Each run carries the trigger's interval as its expected_every.
        wait_for("a finished run", lambda: executed, timeout=60)
        # The last success is the end of the run: after the job's last line, before the
        # scheduler's event that the run is over (a scrape between two runs).
        for _ in range(50):
            count = len(executed)
            m = agent_metrics()
            if len(executed) == count == len(ran):
                break
        last = m.value("otel_jobs_last_success_timestamp_seconds", job_name="reports.refresh")
        assert ran[count - 1] <= last <= executed[count - 1]
        wait_for(
            "the run's expected_every",
            lambda: agent_metrics().find(
                "otel_jobs_run_expected_every_seconds", job_name="reports.refresh"
            ),
        )
        assert (
            agent_metrics().value(
                "otel_jobs_run_expected_every_seconds", job_name="reports.refresh"
            )
            == 2
        )

        scheduler.pause_job("every-2s")
        # Paused: not due (read by the scheduler's thread at its wakeup, not by the scrape).
        m = wait_for(
            "the paused job's next run gone",
            lambda: (x := agent_metrics()) and x.find(NEXT, schedule="every-2s") == [] and x,
        )
        assert m.value(SENT, schedule="every-2s") > 0  # what it sent is still known
    finally:
        scheduler.shutdown(wait=True)


def test_uninstrument_stops_reading_the_scheduler(instrumented: Callable[..., Any]) -> None:
    agent = instrumented(frameworks=["apscheduler"])
    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_job(lambda: None, "interval", hours=1, id="hourly", name="hourly.job")
    scheduler.start()
    try:
        wait_for("the gauge", lambda: agent_metrics().find(NEXT, schedule="hourly"), timeout=30)
        schedules = agent.telemetry.schedules
        otel_jobs.uninstrument()
        assert schedules.entries() == []
        otel_jobs.instrument(prometheus_port=0, frameworks=["apscheduler"])
        scheduler.wakeup()  # its loop runs again, now seen by the new instrumentation
        found = wait_for("the gauge again", lambda: agent_metrics().find(NEXT, schedule="hourly"))
        assert not math.isinf(found[0])
    finally:
        scheduler.shutdown(wait=True)
