"""The watchdog's verdicts under a controlled clock: no watchdog thread, no sleep.

The runs are real (``agent.start_run``) and record their own monotonic times; the watchdog is
given a clock that the test sets relative to them, and ticked by hand. Runs that are started but
not activated have no thread, so a tick reads no CPU time and waits for nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from otel_jobs.core.verdicts import due_before, reason_of, split_nested
from otel_jobs.core.watchdog import Watchdog
from tests.support.series import registry_total


class Clock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def agent(instrumented: Callable[..., Any]) -> Any:
    return instrumented(watchdog=False, prometheus=False, frameworks=[], outbound=[])


def stalls(agent: Any, reason: str) -> float:
    """``otel_jobs_stalls_detected_total{reason}``, summed over the jobs."""
    return registry_total(agent, "otel_jobs_stalls_detected_total", reason=reason)


def test_reason_of_a_run_at_each_moment(agent: Any) -> None:
    run = agent.start_run("v.report", heartbeat_timeout=30, max_duration=600)
    start = run.start_mono
    assert reason_of(run, start + 29.9) is None
    assert reason_of(run, start + 30.1) == "no_heartbeat"
    assert reason_of(run, start + 600.1) == "max_duration"  # the overrun wins
    assert reason_of(run, start + 1, loop_blocked=True) == "loop_blocked"
    assert reason_of(run, start + 31, loop_blocked=True) == "no_heartbeat"  # a deadline first
    run.last_beat = start + 100  # as a heartbeat at that moment would
    assert reason_of(run, start + 129) is None
    assert due_before(run, start + 131) and not due_before(run, start + 129)
    run.finish("success")


def test_a_tick_gives_the_verdict_once_and_a_heartbeat_clears_it(
    agent: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="otel_jobs")
    run = agent.start_run("v.export", heartbeat_timeout=30, max_duration=600)
    clock = Clock(run.start_mono)
    watchdog = Watchdog(agent, clock=clock)

    clock.now = run.start_mono + 29.9
    watchdog.tick()
    assert run.verdict is None and stalls(agent, "no_heartbeat") == 0

    clock.now = run.start_mono + 30.1  # the first tick past the threshold
    watchdog.tick()
    assert (run.verdict, run.state) == ("no_heartbeat", "unknown")  # no thread to read
    assert stalls(agent, "no_heartbeat") == 1
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "v.export" in warning.getMessage() and warning.stall_reason == "no_heartbeat"

    clock.now += 45  # still stalled: the verdict stands, counted once
    watchdog.tick()
    assert run.verdict == "no_heartbeat" and stalls(agent, "no_heartbeat") == 1

    run.heartbeat()
    clock.now = run.last_beat + 1
    watchdog.tick()
    assert run.verdict is None and run.state is None and run.diagnosis is None
    assert any("recovered" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)

    clock.now = run.start_mono + 600.1
    watchdog.tick()
    assert run.verdict == "max_duration" and stalls(agent, "max_duration") == 1
    run.finish("success")


def test_a_finished_run_gets_no_verdict_and_a_healthy_one_is_left_alone(agent: Any) -> None:
    done = agent.start_run("v.done", heartbeat_timeout=10, max_duration=600)
    healthy = agent.start_run("v.healthy", heartbeat_timeout=3600, max_duration=7200)
    clock = Clock(done.start_mono)
    watchdog = Watchdog(agent, clock=clock)
    done.finish("success")
    clock.now = done.start_mono + 11
    watchdog.tick()
    assert done.verdict is None and healthy.verdict is None
    assert stalls(agent, "no_heartbeat") == 0
    healthy.finish("success")


def test_runs_stuck_inside_a_run_are_covered_by_the_innermost(agent: Any) -> None:
    outer = agent.start_run("v.outer", heartbeat_timeout=10, max_duration=600)
    outer.activate()
    inner = agent.start_run("v.inner", heartbeat_timeout=10, max_duration=600)
    inner.activate()
    other = agent.start_run("v.other", heartbeat_timeout=10, max_duration=600)  # not nested
    try:
        assert inner.parent is outer
        fresh = [(outer, "no_heartbeat"), (inner, "no_heartbeat"), (other, "max_duration")]
        innermost, enclosing = split_nested(fresh)
        assert innermost == [(inner, "no_heartbeat"), (other, "max_duration")]
        assert enclosing == [(outer, "no_heartbeat", inner)]
        assert split_nested([(outer, "no_heartbeat")]) == ([(outer, "no_heartbeat")], [])
    finally:
        inner.deactivate()
        outer.deactivate()
        for run in (inner, outer, other):
            run.finish("success")
