"""The series a job costs on /metrics: no zero series that nothing reads, buckets as configured.

The budget itself (at most 30 series per job and queue whose runs all succeed) is measured by
``bench/bench_series.py`` (``tests/bench``); these tests pin each saving to the endpoint.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import pytest

import otel_jobs
from otel_jobs.core import agent as agent_mod
from otel_jobs.core import config, telemetry
from tests.support import Samples, scrape


def _metrics() -> Samples:
    url = otel_jobs.metrics_url()
    assert url is not None
    return scrape(url)


def _samples(m: Samples, name: str, **labels: str) -> list[Any]:
    return [
        s
        for s in m.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def test_runs_stalled_has_no_series_until_the_jobs_first_stall_then_keeps_all_states(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(watchdog_interval=0.02)
    agent = agent_mod.current()
    assert agent is not None
    agent.start_run("budget.ok", queue="q").finish("success")
    run = agent.start_run("budget.stuck", queue="q", heartbeat_timeout=0.05)
    assert _metrics().find("otel_jobs_runs_stalled", job_name="budget.ok") == []
    deadline = time.monotonic() + 30
    while run.verdict is None:
        assert time.monotonic() < deadline, "no stall verdict"
        time.sleep(0.02)
    m = _metrics()
    states = {s.labels["state"]: s.value for s in _samples(m, "otel_jobs_runs_stalled")}
    assert set(states) == set(telemetry.STALL_STATES)
    assert sum(states.values()) == 1
    assert m.find("otel_jobs_runs_stalled", job_name="budget.ok") == []
    run.finish("success")
    # The verdict is over: the job's series stay, at 0 (a graph returns to 0, not to a gap).
    after = _metrics().find("otel_jobs_runs_stalled", job_name="budget.stuck")
    assert after == [0.0, 0.0, 0.0]


def test_retries_and_cancellations_get_their_series_at_their_first_run(
    instrumented: Callable[..., Any],
) -> None:
    instrumented()
    agent = agent_mod.current()
    assert agent is not None
    agent.start_run("budget.job", queue="q").finish("success")
    m = _metrics()
    finished = {
        s.labels["outcome"]: s.value
        for s in _samples(m, "otel_jobs_runs_finished_total", job_name="budget.job")
    }
    # failure and timeout exist at 0 so that the rules' increase() sees their first run
    assert finished == {"success": 1.0, "failure": 0.0, "timeout": 0.0}
    agent.start_run("budget.job", queue="q").finish("retry")
    agent.start_run("budget.job", queue="q").finish("cancelled")
    m = _metrics()
    assert m.value("otel_jobs_runs_finished_total", job_name="budget.job", outcome="retry") == 1
    assert m.value("otel_jobs_runs_finished_total", job_name="budget.job", outcome="cancelled") == 1


def test_histogram_buckets_come_from_the_settings(instrumented: Callable[..., Any]) -> None:
    instrumented(duration_buckets=[0.5, 5, 50], queue_wait_buckets="2,20")
    agent = agent_mod.current()
    assert agent is not None
    agent.start_run("budget.b", queue="q", enqueued_at=time.time() - 1).finish("success")
    m = _metrics()
    duration = [s.labels["le"] for s in _samples(m, "otel_jobs_run_duration_seconds_bucket")]
    wait = [s.labels["le"] for s in _samples(m, "otel_jobs_queue_wait_seconds_bucket")]
    assert duration == ["0.5", "5.0", "50.0", "+Inf"]
    assert wait == ["2.0", "20.0", "+Inf"]


def test_the_default_buckets_are_the_documented_ones() -> None:
    defaults = config.Settings()
    assert defaults.duration_buckets == telemetry.DURATION_BUCKETS
    assert defaults.queue_wait_buckets == telemetry.QUEUE_WAIT_BUCKETS
    assert len(telemetry.DURATION_BUCKETS) == 8 and len(telemetry.QUEUE_WAIT_BUCKETS) == 4


@pytest.mark.parametrize("bad", ["", "1,1", "3,2", "0,1", "-1", "1,inf", "1,nan", "a,b", 5])
def test_bad_buckets_name_the_setting_and_the_value(bad: object) -> None:
    with pytest.raises(config.ConfigurationError, match="duration_buckets") as raised:
        config.load({}, duration_buckets=bad)
    assert "increasing positive finite numbers" in str(raised.value)
    with pytest.raises(config.ConfigurationError, match="OTEL_JOBS_QUEUE_WAIT_BUCKETS"):
        config.load({"OTEL_JOBS_QUEUE_WAIT_BUCKETS": "10,5"})


def test_a_queue_wait_that_is_no_wait_is_left_out(instrumented: Callable[..., Any]) -> None:
    # A publisher's clock ahead of this one, or a bad timestamp, makes a negative, infinite or
    # NaN wait: none is observed, by a run started here or one another process ran.
    instrumented()
    agent = agent_mod.current()
    assert agent is not None
    now = time.time()
    for enqueued_at in (now + 60, -math.inf, math.nan):
        agent.start_run("budget.w", queue="q", enqueued_at=enqueued_at).finish("success")
        series = agent.series_for("budget.w", "q")
        agent.count_start(series, now, enqueued_at)
        agent.count_finish(series, "success", 0.1)
    agent.start_run("budget.w", queue="q", enqueued_at=now - 1).finish("success")
    m = _metrics()
    assert m.value("otel_jobs_queue_wait_seconds_count", job_name="budget.w", queue="q") == 1
    assert m.value("otel_jobs_runs_started_total", job_name="budget.w", queue="q") == 7
