"""A plain ``@job``'s later runs (sync or async) start from a plan made at its first run
(core/plain_runs.py), not through ``Agent.start_run``: they record exactly what the first did,
and a new agent makes a new plan."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import otel_jobs
from otel_jobs.core import agent as agent_mod
from tests.support import agent_metrics
from tests.support.series import runs_finished

LABELS = {"job_name": "plain.job", "queue": "plain"}


def _counting_start_run(started: list[str]) -> None:
    """Note each run the agent starts through ``Agent.start_run`` (a plan's runs do not)."""
    agent = agent_mod.current()
    assert agent is not None
    through_agent = agent.start_run

    def start_run(name: str, **options: Any) -> Any:
        started.append(name)
        return through_agent(name, **options)

    agent.start_run = start_run  # type: ignore[method-assign]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_later_runs_record_what_the_first_did(
    kind: str, instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented(watchdog=False, jobs={"plain.job": {"max_duration": 50, "expected_every": 600}})
    through_agent: list[str] = []
    _counting_start_run(through_agent)
    seen: list[Any] = []

    def body(n: int) -> int:
        run = otel_jobs.current_run()
        assert run is not None
        seen.append((run.name, run.queue, run.max_duration, run.heartbeat_timeout, run.on_stall))
        return n

    options: dict[str, Any] = {"name": "plain.job", "queue": "plain", "heartbeat_timeout": 7}
    if kind == "sync":
        plain = otel_jobs.job(**options, on_stall="observe")(body)
        calls = lambda: [plain(i) for i in range(3)]  # noqa: E731
    else:

        @otel_jobs.job(**options, on_stall="observe")
        async def plain_async(n: int) -> int:
            return body(n)

        async def three() -> list[int]:
            return [await plain_async(i) for i in range(3)]

        calls = lambda: asyncio.run(three())  # noqa: E731

    outer = trace.get_tracer("test").start_span("outer")
    with trace.use_span(outer, end_on_exit=True):
        assert calls() == [0, 1, 2]

    assert seen == [("plain.job", "plain", 50, 7, "observe")] * 3
    assert through_agent == ["plain.job"]  # the first run only: the later two from its plan
    spans = [s for s in span_exporter.get_finished_spans() if s.name == "plain.job"]
    assert len(spans) == 3
    for span in spans:
        assert span.kind is SpanKind.CONSUMER
        assert dict(span.attributes or {}) == {
            "job.name": "plain.job", "job.queue": "plain", "job.attempt": 1,
            "job.framework": "otel_jobs", "job.outcome": "success",
        }  # fmt: skip
        assert span.parent is not None
        assert span.parent.span_id == outer.get_span_context().span_id
    m = agent_metrics()
    assert m.value("otel_jobs_runs_started_total", **LABELS) == 3
    assert runs_finished(m, "plain.job", "success", queue="plain") == 3
    assert m.value("otel_jobs_run_max_duration_seconds", **LABELS) == 50
    assert m.value("otel_jobs_run_heartbeat_timeout_seconds", **LABELS) == 7
    assert m.value("otel_jobs_run_expected_every_seconds", **LABELS) == 600
    assert m.value("otel_jobs_runs_in_progress", **LABELS) == 0


def test_a_new_agent_makes_a_new_plan(instrumented: Callable[..., Any]) -> None:
    @otel_jobs.job(name="plain.job", queue="plain")
    def plain() -> float | None:
        run = otel_jobs.current_run()
        return run.max_duration if run is not None else None

    instrumented(watchdog=False, jobs={"plain.job": {"max_duration": 50}})
    assert [plain(), plain()] == [50, 50]
    otel_jobs.uninstrument()
    assert plain() is None  # not instrumented: a plain call
    instrumented(watchdog=False, jobs={"plain.job": {"max_duration": 80}})
    assert [plain(), plain()] == [80, 80]
    m = agent_metrics()
    assert m.value("otel_jobs_runs_started_total", **LABELS) == 2
    assert m.value("otel_jobs_run_max_duration_seconds", **LABELS) == 80
