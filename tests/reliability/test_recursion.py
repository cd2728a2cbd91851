"""Nested and recursive ``@job`` runs: every run's span, and one WARNING per stuck chain.

* A recursive ``@job`` that hits the recursion limit: every call of the function leaves its
  span (outcome failure, ended) and is counted once, nothing stays in flight and no internal
  error is counted, although the nested runs end with hardly any stack left (the outermost
  run's finish records them, with the time they ended). A single run whose job fails with a
  RecursionError is recorded at once (an RQ work horse exits right after).
* 150 nested runs stalled together (heartbeat timeout far below the watchdog's interval): one
  WARNING and one stall span, for the innermost; every run's stall is still counted in
  ``otel_jobs_stalls_detected_total`` and marked on its span.
* An enclosing run still stuck a tick after the run inside it finished is reported in full.

The stuck runs wait on the watchdog's own tick counter, never on a clock.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_jobs
from otel_jobs.core import errors
from tests.support import scrape

DEADLINE = 60.0


@pytest.fixture
def stall_records(
    caplog: pytest.LogCaptureFixture,
) -> Iterator[Callable[[], list[logging.LogRecord]]]:
    caplog.set_level(logging.INFO, logger="otel_jobs")
    yield lambda: [
        r for r in caplog.records if r.levelno == logging.WARNING and hasattr(r, "stall_reason")
    ]


def _wait_ticks(agent: Any, count: int) -> None:
    """Block (as a stuck job does) until the watchdog has ticked ``count`` more times."""
    target = agent.watchdog.ticks + count
    deadline = time.monotonic() + DEADLINE
    while agent.watchdog.ticks < target:
        if time.monotonic() > deadline:
            raise AssertionError("the watchdog did not tick")
        time.sleep(0.005)


def _run_errors() -> int:
    return sum(n for component, n in errors.counts().items() if component.startswith("run."))


def test_a_recursive_job_at_the_recursion_limit_loses_no_span(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    agent = instrumented(watchdog_interval=0.05)
    before = _run_errors()
    calls = 0

    @otel_jobs.job(name="recursion.down")
    def down(n: int) -> int:
        nonlocal calls
        calls += 1
        return down(n + 1)

    with pytest.raises(RecursionError):
        down(0)

    assert calls > 100, calls  # deep enough to have hit the limit
    spans = [s for s in span_exporter.get_finished_spans() if s.name == "recursion.down"]
    assert len(spans) == calls
    assert {s.attributes["job.outcome"] for s in spans} == {"failure"}
    assert all(s.end_time is not None and s.end_time >= s.start_time for s in spans)
    assert agent.runs() == []
    assert _run_errors() == before
    url = otel_jobs.metrics_url()
    assert url is not None
    samples = scrape(url)
    labels = {"job_name": "recursion.down"}
    assert samples.total("otel_jobs_runs_finished_total", outcome="failure", **labels) == calls
    assert samples.total("otel_jobs_runs_in_progress", **labels) == 0


def test_a_single_run_failing_with_recursion_error_is_recorded_at_once(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented(watchdog=False)

    def helper(n: int) -> int:
        return helper(n + 1)

    @otel_jobs.job(name="recursion.helper")
    def job() -> int:
        return helper(0)

    with pytest.raises(RecursionError):
        job()
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "recursion.helper"]
    assert span.attributes["job.outcome"] == "failure"
    (event,) = [e for e in span.events if e.name == "exception"]
    assert event.attributes["exception.type"] == "RecursionError"
    assert "outer frames left out" in str(event.attributes["exception.stacktrace"])


def test_nested_runs_stuck_together_log_one_warning(
    instrumented: Callable[..., Any],
    span_exporter: InMemorySpanExporter,
    stall_records: Callable[[], list[logging.LogRecord]],
) -> None:
    agent = instrumented(watchdog_interval=0.05)
    depth = 150
    assert depth * 3 < sys.getrecursionlimit()  # nested, not at the limit

    @otel_jobs.job(name="nested.level", heartbeat_timeout=0.001)
    def level(n: int) -> None:
        if n < depth:
            level(n + 1)
        else:
            time.sleep(0.01)  # past even this run's 1 ms heartbeat timeout
            agent.watchdog.start()  # every run in flight and overdue, none with a verdict yet
            _wait_ticks(agent, 4)  # no heartbeat meanwhile: every run stalls

    agent.watchdog.stop()
    level(1)

    warned = stall_records()
    assert len(warned) == 1, [r.getMessage()[:80] for r in warned]
    stall_spans = [
        s for s in span_exporter.get_finished_spans() if s.name == "nested.level stalled"
    ]
    assert len(stall_spans) == 1
    runs = [s for s in span_exporter.get_finished_spans() if s.name == "nested.level"]
    assert len(runs) == depth
    marked = [s for s in runs if any(e.name == "otel_jobs.stall" for e in s.events)]
    url = otel_jobs.metrics_url()
    assert url is not None
    counted = scrape(url).total("otel_jobs_stalls_detected_total", job_name="nested.level")
    assert counted == len(marked) == depth  # each run's stall counted and on its span


def test_an_enclosing_run_still_stuck_after_the_inner_one_is_reported(
    instrumented: Callable[..., Any],
    stall_records: Callable[[], list[logging.LogRecord]],
) -> None:
    agent = instrumented(watchdog_interval=0.05)

    @otel_jobs.job(name="nested.inner", heartbeat_timeout=0.001)
    def inner() -> None:
        time.sleep(0.01)  # past both runs' 1 ms heartbeat timeout
        agent.watchdog.start()  # both runs in flight and overdue, neither with a verdict yet
        _wait_ticks(agent, 4)

    @otel_jobs.job(name="nested.outer", heartbeat_timeout=0.001)
    def outer() -> None:
        inner()
        _wait_ticks(agent, 4)  # still no heartbeat once inner has finished

    agent.watchdog.stop()
    outer()
    assert [r.job_name for r in stall_records()] == ["nested.inner", "nested.outer"]
