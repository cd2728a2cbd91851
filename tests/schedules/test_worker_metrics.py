"""Worker-side metrics of scheduled jobs: last success, failures in a row, expected every.

Read on the real ``/metrics`` endpoint (parsed with prometheus-client's parser) and on the
real OpenTelemetry SDK's in-memory reader.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import otel_jobs
from otel_jobs.core.streaks import KEEP, State, merge
from tests.support import agent_metrics, otel_points

LAST = "otel_jobs_last_success_timestamp_seconds"
FAILURES = "otel_jobs_consecutive_failures"
EVERY = "otel_jobs_run_expected_every_seconds"


def test_last_success_is_the_end_of_the_last_successful_run(
    instrumented: Callable[..., Any],
) -> None:
    instrumented()
    with pytest.raises(RuntimeError):
        with otel_jobs.job_run("reports.nightly", queue="reports"):
            raise RuntimeError("boom")
    m = agent_metrics()
    assert m.find(LAST, job_name="reports.nightly") == []  # no success yet: no series
    assert m.value(FAILURES, job_name="reports.nightly", queue="reports") == 1

    with otel_jobs.job_run("reports.nightly", queue="reports"):
        before_end = time.time()
    after_end = time.time()
    m = agent_metrics()
    last = m.value(LAST, job_name="reports.nightly", queue="reports")
    assert before_end <= last <= after_end
    assert m.value(FAILURES, job_name="reports.nightly", queue="reports") == 0


def test_failures_and_timeouts_in_a_row_and_one_success_clears_them(
    instrumented: Callable[..., Any],
) -> None:
    agent = instrumented()

    @otel_jobs.job(name="sync.partner", queue="integrations")
    def sync(outcome: str) -> None:
        if outcome == "failure":
            raise ValueError("partner said no")
        if outcome == "timeout":
            raise TimeoutError("partner too slow")

    sync("ok")
    first_success = agent_metrics().value(LAST, job_name="sync.partner")
    for expected, outcome in enumerate(("failure", "timeout", "failure"), start=1):
        with pytest.raises((ValueError, TimeoutError)):
            sync(outcome)
        m = agent_metrics()
        assert m.value(FAILURES, job_name="sync.partner", queue="integrations") == expected
        assert m.value(LAST, job_name="sync.partner") == first_success

    # A retried attempt (outcome "retry") and a cancelled run are no failure of the job.
    for outcome in ("retry", "cancelled"):
        run = agent.start_run("sync.partner", queue="integrations")
        run.finish(outcome)
    assert agent_metrics().value(FAILURES, job_name="sync.partner") == 3

    sync("ok")
    m = agent_metrics()
    assert m.value(FAILURES, job_name="sync.partner") == 0
    assert m.value(LAST, job_name="sync.partner") > first_success


def test_retries_that_later_succeed_are_no_streak(instrumented: Callable[..., Any]) -> None:
    agent = instrumented()
    for attempt in (1, 2, 3):
        run = agent.start_run("mail.send", attempt=attempt)
        run.finish("retry", ValueError("smtp busy"))
    assert agent_metrics().value(FAILURES, job_name="mail.send") == 0
    run = agent.start_run("mail.send", attempt=4)
    run.finish("success")
    m = agent_metrics()
    assert m.value(FAILURES, job_name="mail.send") == 0
    assert len(m.find(LAST, job_name="mail.send")) == 1


def test_expected_every_from_the_job_the_context_manager_and_instrument(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(jobs={"billing.close": {"expected_every": 600}})

    @otel_jobs.job(name="billing.close", expected_every=60)
    def close() -> None:
        pass

    @otel_jobs.job(name="billing.remind", expected_every=86400)
    def remind() -> None:
        pass

    @otel_jobs.job(name="billing.adhoc")
    def adhoc() -> None:
        pass

    close(), remind(), adhoc()
    with otel_jobs.job_run("billing.export", queue="exports", expected_every=3600):
        pass
    m = agent_metrics()
    assert m.value(EVERY, job_name="billing.close") == 600  # instrument(jobs=...) wins
    assert m.value(EVERY, job_name="billing.remind") == 86400
    assert m.value(EVERY, job_name="billing.export", queue="exports") == 3600
    assert math.isinf(m.value(EVERY, job_name="billing.adhoc"))  # not set: +Inf


@pytest.mark.parametrize("bad", [0, -5, float("nan"), "soon", "", True, [60]])
def test_bad_expected_every_is_a_configuration_error_naming_it(bad: object) -> None:
    for make in (
        lambda: otel_jobs.job(expected_every=bad),  # type: ignore[arg-type]
        lambda: otel_jobs.job_run("x", expected_every=bad),  # type: ignore[arg-type]
    ):
        with pytest.raises(otel_jobs.ConfigurationError, match="expected_every") as err:
            make()
        assert err.value.setting == "job.expected_every"
    with pytest.raises(otel_jobs.ConfigurationError, match="expected_every") as err:
        otel_jobs.instrument(prometheus_port=0, jobs={"x": {"expected_every": bad}})
    assert err.value.setting == "jobs['x'].expected_every"
    assert not otel_jobs.is_instrumented()


def test_the_gauges_reach_opentelemetry(
    instrumented: Callable[..., Any], metric_reader: InMemoryMetricReader
) -> None:
    instrumented()

    @otel_jobs.job(name="otel.gauges", expected_every=120)
    def fails() -> None:
        raise ValueError("no")

    with otel_jobs.job_run("otel.gauges"):
        pass
    with pytest.raises(ValueError):
        fails()
    with pytest.raises(ValueError):
        fails()
    seen: dict[str, float] = {}
    for metric, point in otel_points(metric_reader):
        if point.attributes.get("job_name") == "otel.gauges" and hasattr(point, "value"):
            seen[f"{metric.name} {metric.unit}"] = point.value
    assert seen["otel_jobs.consecutive_failures {failure}"] == 2
    assert seen["otel_jobs.run.expected_every s"] == 120
    assert seen["otel_jobs.last_success.timestamp s"] <= time.time()


# --- the merge of several processes' views (core/streaks.py), without processes ------------


def test_merge_takes_the_latest_success_and_counts_failures_after_it_anywhere() -> None:
    # RQ forks one horse per job: each horse saw one outcome.
    horses = [
        State(None, 1, (10.0,)),
        State(None, 1, (11.0,)),
        State(12.0, 0, ()),
        State(None, 1, (13.0,)),
        State(None, 1, (14.0,)),
    ]
    merged = merge(horses)
    assert merged.last_success == 12.0
    assert merged.failures == 2
    assert merged.times == (13.0, 14.0)
    # Folding into an archive one state at a time gives the same answer.
    archive = State(None, 0, ())
    for horse in horses:
        archive = merge([archive, horse])
    assert archive == merged
    assert merge([archive, State(15.0, 0, ())]).failures == 0


def test_merge_of_pool_children_whose_streaks_straddle_a_success() -> None:
    child_a = State(None, 3, (1.0, 2.0, 5.0))  # failed at 1 and 2, then again at 5
    child_b = State(3.0, 0, ())  # succeeded at 3
    merged = merge([child_a, child_b])
    assert (merged.last_success, merged.failures) == (3.0, 1)
    # More failures in a row than a process keeps end times of: all after the last success.
    long = State(3.0, KEEP + 5, tuple(float(t) for t in range(10, 10 + KEEP)))
    assert merge([long, child_b]).failures == KEEP + 5
    assert merge([]).failures == 0
    assert math.isinf(merge([State(None, 0, (), 60.0), State(None, 0, ())]).expected_every) is False


# --- forked children: RQ's work horse per job, a pool's long-lived children ------------------


@otel_jobs.job(name="fork.nightly", queue="fq", expected_every=300)
def _nightly(fail: bool) -> None:
    if fail:
        raise ValueError("failed in a child")


def _horse(fail: bool) -> float:
    """Run one job in a forked child that leaves with os._exit, as RQ's work horse does;
    return the Unix time just after the child ended."""
    pid = os.fork()
    if pid == 0:
        try:
            try:
                _nightly(fail)
            except ValueError:
                pass
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return time.time()


def test_a_horse_per_job_keeps_the_streak_and_the_last_success_of_the_job(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(watchdog_interval=5)
    before = time.time()
    after = _horse(fail=False)
    m = agent_metrics()
    last = m.value(LAST, job_name="fork.nightly", queue="fq")
    assert before <= last <= after
    assert m.value(EVERY, job_name="fork.nightly", queue="fq") == 300
    for streak in (1, 2, 3):
        _horse(fail=True)
        m = agent_metrics()  # each scrape folds the dead horse in
        assert m.value(FAILURES, job_name="fork.nightly", queue="fq") == streak
        assert m.value(LAST, job_name="fork.nightly", queue="fq") == last
        assert m.value(EVERY, job_name="fork.nightly", queue="fq") == 300
    # Two horses that die between two scrapes, then one more success.
    _horse(fail=True)
    _horse(fail=True)
    assert agent_metrics().value(FAILURES, job_name="fork.nightly", queue="fq") == 5
    before = time.time()
    after = _horse(fail=False)
    m = agent_metrics()
    assert m.value(FAILURES, job_name="fork.nightly", queue="fq") == 0
    assert before <= m.value(LAST, job_name="fork.nightly", queue="fq") <= after


def test_the_owner_and_a_live_child_are_merged(instrumented: Callable[..., Any]) -> None:
    instrumented(watchdog_interval=5)
    with pytest.raises(ValueError):
        _nightly(True)  # in the owner
    ready, release = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            try:
                _nightly(True)
            except ValueError:
                pass
            os.write(ready[1], b"x")
            os.read(release[0], 1)  # stay alive until the owner has scraped
        finally:
            os._exit(0)
    try:
        os.read(ready[0], 1)
        m = agent_metrics()
        assert m.value(FAILURES, job_name="fork.nightly", queue="fq") == 2
        assert m.find(LAST, job_name="fork.nightly") == []
    finally:
        os.write(release[1], b"x")
        os.waitpid(pid, 0)
    _nightly(False)
    assert agent_metrics().value(FAILURES, job_name="fork.nightly", queue="fq") == 0


@pytest.mark.internal_errors("schedules")
@pytest.mark.internal_errors("schedules")
def test_the_schedule_gauges_reach_opentelemetry_and_a_failing_source_is_counted(
    instrumented: Callable[..., Any], metric_reader: InMemoryMetricReader
) -> None:
    from otel_jobs.core.schedules import Entry

    agent = instrumented()
    schedules = agent.telemetry.schedules
    schedules.add_source(lambda: [Entry("otel.sched", "every-minute", 1_000_060.0, 60.0)])

    def broken() -> list[Entry]:
        raise RuntimeError("the scheduler's state cannot be read")

    schedules.add_source(broken)
    schedules.sent("otel.sched", "every-minute", at=1_000_000.0)
    seen: dict[str, float] = {}
    for metric, point in otel_points(metric_reader):
        if point.attributes.get("schedule") == "every-minute":
            assert point.attributes["job_name"] == "otel.sched"
            seen[f"{metric.name} {metric.unit}"] = point.value
    assert seen == {
        "otel_jobs.schedule.next_run.timestamp s": 1_000_060.0,
        "otel_jobs.schedule.last_sent.timestamp s": 1_000_000.0,
        "otel_jobs.schedule.interval s": 60.0,
    }
    m = agent_metrics()
    assert m.value("otel_jobs_schedule_next_run_timestamp_seconds", schedule="every-minute") == (
        1_000_060.0
    )
    assert m.value("otel_jobs_internal_errors_total", component="schedules") >= 1
