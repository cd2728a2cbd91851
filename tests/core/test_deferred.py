"""Checks that wait (core.deferred), and a lost run whose span waits for another's."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import otel_jobs
from otel_jobs.core import errors
from otel_jobs.core.deferred import Deferred
from tests.support import scrape

TIMEOUT = 10.0  # waits for the deferred thread; generous for a loaded machine


def test_a_check_runs_later_and_again_while_it_asks() -> None:
    deferred = Deferred()
    calls: list[bool] = []
    done = threading.Event()

    def check(final: bool) -> float | None:
        calls.append(final)
        if len(calls) < 3:
            return 0.01
        done.set()
        return None

    deferred.call_later(0.01, check)
    assert done.wait(TIMEOUT)
    assert calls == [False, False, False]
    deferred.run_all()
    assert calls == [False, False, False]  # done: nothing was left to decide at the end


def test_run_all_decides_every_pending_check_at_once_and_later_ones_immediately() -> None:
    deferred = Deferred()
    seen: list[tuple[str, bool]] = []
    deferred.call_later(3600, lambda final: seen.append(("a", final)))
    deferred.call_later(7200, lambda final: seen.append(("b", final)))
    assert seen == []  # both wait
    deferred.run_all()
    assert seen == [("a", True), ("b", True)]  # in due order, told to decide
    deferred.call_later(3600, lambda final: seen.append(("c", final)))
    assert seen[-1] == ("c", True)  # stopped: nothing waits any more
    deferred.run_all()
    assert len(seen) == 3


@pytest.mark.internal_errors("deferred")
def test_a_failing_check_is_counted_and_the_thread_goes_on() -> None:
    deferred = Deferred()
    before = errors.counts().get("deferred", 0)
    ran = threading.Event()

    def broken(final: bool) -> None:
        raise RuntimeError("check bug")

    deferred.call_later(0, broken)
    deferred.call_later(0.01, lambda final: ran.set())
    assert ran.wait(TIMEOUT)
    assert errors.counts().get("deferred", 0) == before + 1
    deferred.run_all()


@pytest.mark.parametrize("answer", [True, False])
def test_a_lost_runs_span_waits_for_the_dying_process_answer(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter, answer: bool
) -> None:
    agent = instrumented(frameworks=[], outbound=[], watchdog=False)
    asked = threading.Event()
    answers: list[bool | float] = [0.01, answer]  # "ask again soon", then the answer

    def other_span_exported(final: bool) -> bool | float:
        value = answers.pop(0)
        if not answers:
            asked.set()
        return value

    agent.record_lost_run(
        "reports.build",
        queue="reports",
        job_id="t-1",
        started_at=1_700_000_000.0,
        outcome="timeout",
        span_exported_elsewhere=other_span_exported,
    )
    # Counted at once, whatever becomes of the span.
    url = otel_jobs.metrics_url()
    assert url is not None
    m = scrape(url)
    assert (
        m.value(
            "otel_jobs_runs_finished_total",
            job_name="reports.build",
            queue="reports",
            outcome="timeout",
        )
        == 1
    )
    assert asked.wait(TIMEOUT)
    agent.deferred.run_all()  # joins the thread: the decision is made
    spans = [s for s in span_exporter.get_finished_spans() if s.name == "reports.build"]
    if answer:
        assert spans == []  # the dying process exported the run's one span
    else:
        (span,) = spans
        assert span.attributes is not None
        assert span.attributes["job.outcome"] == "timeout"
        assert span.attributes["job.id"] == "t-1"
        assert span.status.status_code is StatusCode.ERROR
        assert span.start_time == 1_700_000_000 * 10**9


def test_a_lost_run_still_waiting_when_the_agent_stops_gets_its_span(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    import otel_jobs

    agent = instrumented(frameworks=[], outbound=[], watchdog=False)
    finals: list[bool] = []

    def undecided(final: bool) -> bool | float:
        finals.append(final)
        return False if final else 3600.0

    agent.record_lost_run(
        "reports.build", started_at=1.0, outcome="failure", span_exported_elsewhere=undecided
    )
    assert [s for s in span_exporter.get_finished_spans() if s.name == "reports.build"] == []
    otel_jobs.uninstrument()
    assert finals[-1] is True
    (span,) = [s for s in span_exporter.get_finished_spans() if s.name == "reports.build"]
    assert span.attributes is not None and span.attributes["job.outcome"] == "failure"
