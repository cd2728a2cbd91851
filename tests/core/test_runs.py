"""Runs as spans and metrics: sync, async and context-manager runs, failures, heartbeats."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import otel_jobs
from tests.support import agent_metrics
from tests.support.series import runs_finished

METRIC_NAMES = {
    "otel_jobs_runs_started_total",
    "otel_jobs_runs_finished_total",
    "otel_jobs_run_duration_seconds_bucket",
    "otel_jobs_runs_in_progress",
    "otel_jobs_oldest_run_start_timestamp_seconds",
    "otel_jobs_stalest_heartbeat_timestamp_seconds",
    "otel_jobs_run_max_duration_seconds",
    "otel_jobs_run_heartbeat_timeout_seconds",
}


def test_sync_job_success_and_failure(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented()

    @otel_jobs.job(name="billing.sync", queue="billing", max_duration=120, heartbeat_timeout=30)
    def sync(n: int) -> int:
        if n < 0:
            raise ValueError("negative")
        return n * 2

    assert sync(21) == 42
    with pytest.raises(ValueError, match="negative"):
        sync(-1)

    m = agent_metrics()
    billing = {"job_name": "billing.sync", "queue": "billing"}
    assert m.value("otel_jobs_runs_started_total", **billing) == 2
    assert runs_finished(m, "billing.sync", "success", queue="billing") == 1
    assert runs_finished(m, "billing.sync", "failure", queue="billing") == 1
    durations = "otel_jobs_run_duration_seconds_count"
    assert m.value(durations, job_name="billing.sync", outcome="success") == 1
    assert m.value("otel_jobs_run_max_duration_seconds", **billing) == 120
    assert m.value("otel_jobs_run_heartbeat_timeout_seconds", **billing) == 30
    assert m.value("otel_jobs_runs_in_progress", **billing) == 0
    # Idle job: the timestamp gauges have no series, so staleness alerts cannot fire.
    assert m.find("otel_jobs_oldest_run_start_timestamp_seconds", job_name="billing.sync") == []
    assert m.find("otel_jobs_stalest_heartbeat_timestamp_seconds", job_name="billing.sync") == []
    # Buckets made for jobs: from 10 ms to hours, not HTTP's 10 s.
    les = {s.labels["le"] for s in m.samples if s.name == "otel_jobs_run_duration_seconds_bucket"}
    assert {"0.01", "3600.0", "28800.0", "+Inf"} <= les
    assert not any("job" in s.labels for s in m.samples if s.name.startswith("otel_jobs_"))

    spans = span_exporter.get_finished_spans()
    assert [s.name for s in spans] == ["billing.sync", "billing.sync"]
    ok, failed = spans
    assert ok.kind is SpanKind.CONSUMER
    assert ok.attributes is not None and failed.attributes is not None
    assert ok.attributes["job.name"] == "billing.sync" and ok.attributes["job.queue"] == "billing"
    assert ok.attributes["job.outcome"] == "success" and ok.attributes["job.attempt"] == 1
    assert failed.attributes["job.outcome"] == "failure"
    assert failed.status.status_code is StatusCode.ERROR
    assert [e.name for e in failed.events] == ["exception"]
    assert failed.events[0].attributes is not None
    assert failed.events[0].attributes["exception.type"] == "ValueError"


def test_async_job_and_timeout_outcome(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented()

    @otel_jobs.job(queue="async")
    async def fetch(delay: float) -> str:
        await asyncio.sleep(delay)
        otel_jobs.heartbeat(progress=1.0)
        return "done"

    @otel_jobs.job(name="async.too_slow", queue="async")
    async def too_slow() -> None:
        await asyncio.wait_for(asyncio.sleep(10), timeout=0.01)

    async def main() -> None:
        assert await fetch(0.01) == "done"
        with pytest.raises(TimeoutError):
            await too_slow()

    asyncio.run(main())
    name = f"{__name__}.test_async_job_and_timeout_outcome.<locals>.fetch"
    m = agent_metrics()
    assert runs_finished(m, name, "success", queue="async") == 1
    assert runs_finished(m, "async.too_slow", "timeout") == 1
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    assert spans[name].attributes is not None and spans[name].attributes["job.progress"] == 1.0
    assert spans["async.too_slow"].status.status_code is StatusCode.ERROR


def test_context_manager_runs_sync_and_async(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented()
    with otel_jobs.job_run("etl.load", queue="etl", job_id="run-7", attempt=3) as run:
        assert otel_jobs.current_run() is run
        run.heartbeat(progress=0.5, last_row=10)
    assert otel_jobs.current_run() is None

    async def main() -> None:
        async with otel_jobs.job_run("etl.load", queue="etl"):
            await asyncio.sleep(0)

    asyncio.run(main())
    with pytest.raises(KeyError), otel_jobs.job_run("etl.load", queue="etl"):
        raise KeyError("missing")

    m = agent_metrics()
    assert runs_finished(m, "etl.load", "success", queue="etl") == 2
    assert runs_finished(m, "etl.load", "failure", queue="etl") == 1
    first = span_exporter.get_finished_spans()[0]
    assert first.attributes is not None
    assert first.attributes["job.id"] == "run-7" and first.attributes["job.attempt"] == 3
    assert first.attributes["job.progress"] == 0.5


def test_in_flight_gauges_while_a_run_is_running(instrumented: Callable[..., Any]) -> None:
    instrumented(watchdog=False)
    before = time.time()
    with otel_jobs.job_run("long.job", queue="q", heartbeat_timeout=50, max_duration=70) as run:
        time.sleep(0.05)
        run.heartbeat()
        beat = time.time()
        m = agent_metrics()
        assert m.value("otel_jobs_runs_in_progress", job_name="long.job", queue="q") == 1
        start = m.value(
            "otel_jobs_oldest_run_start_timestamp_seconds", job_name="long.job", queue="q"
        )
        stalest = m.value(
            "otel_jobs_stalest_heartbeat_timestamp_seconds", job_name="long.job", queue="q"
        )
        assert before <= start <= beat
        assert start + 0.04 <= stalest <= time.time()
    assert agent_metrics().value("otel_jobs_runs_in_progress", job_name="long.job", queue="q") == 0


def test_heartbeat_records_progress_and_details_and_is_silent_outside_runs(
    instrumented: Callable[..., Any],
) -> None:
    instrumented(watchdog=False)
    otel_jobs.heartbeat(progress=0.3, x=1)  # outside a run: nothing happens, nothing raises
    with otel_jobs.job_run("beat.job") as run:
        assert isinstance(run, otel_jobs.Run)
        first = run.last_beat
        time.sleep(0.001)
        otel_jobs.heartbeat(progress=0.25, cursor="abc")
        assert run.last_beat > first
        assert run.progress == 0.25 and run.details == {"cursor": "abc"}
        otel_jobs.heartbeat(progress=7)  # out of range: ignored, logged once, never raises
        otel_jobs.heartbeat(progress="half")
        otel_jobs.heartbeat(blob=object())  # kept as given; never serialised on the hot path
        assert run.progress == 0.25 and set(run.details) == {"cursor", "blob"}


def test_thresholds_most_specific_first(instrumented: Callable[..., Any]) -> None:
    agent = instrumented(
        watchdog=False, max_duration=100, heartbeat_timeout=10, jobs={"ops.a": {"max_duration": 5}}
    )
    a = agent.start_run("ops.a", max_duration=50, native_max_duration=70)
    b = agent.start_run("ops.b", max_duration=50, native_max_duration=70)
    c = agent.start_run("ops.c", native_max_duration=70)
    d = agent.start_run("ops.d")
    assert (a.max_duration, b.max_duration, c.max_duration, d.max_duration) == (5, 50, 70, 100)
    assert a.heartbeat_timeout == 10
    for run in (a, b, c, d):
        run.finish()
    e = agent.start_run("ops.e", max_duration=math.inf)
    e.finish()
    m = agent_metrics()
    assert (
        m.value("otel_jobs_run_max_duration_seconds", job_name="ops.e", queue="default") == math.inf
    )


def test_not_instrumented_calls_straight_through() -> None:
    @otel_jobs.job
    def add(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) == 3
    with otel_jobs.job_run("plain") as run:
        run.heartbeat(progress=0.5)
    assert otel_jobs.current_run() is None


def test_otel_metrics_translate_to_the_prometheus_names(
    instrumented: Callable[..., Any], metric_reader: InMemoryMetricReader
) -> None:
    instrumented(watchdog=False)

    @otel_jobs.job(name="otel.names", queue="q")
    def work() -> None:
        pass

    work()
    data = metric_reader.get_metrics_data()
    assert data is not None
    found = {
        m.name: m
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        if sm.scope.name == "otel_jobs"
        for m in sm.metrics
    }
    assert found["otel_jobs.run.duration"].unit == "s"
    points = list(found["otel_jobs.run.duration"].data.data_points)
    mine = [p for p in points if p.attributes.get("job_name") == "otel.names"]
    assert mine and mine[0].attributes["outcome"] == "success" and mine[0].count >= 1
    assert 28800.0 in mine[0].explicit_bounds and 0.01 in mine[0].explicit_bounds
    for name in ("otel_jobs.runs.started", "otel_jobs.runs.finished", "otel_jobs.runs.in_progress",
                 "otel_jobs.run.max_duration", "otel_jobs.run.heartbeat_timeout"):  # fmt: skip
        assert name in found


def test_every_documented_metric_is_exposed(instrumented: Callable[..., Any]) -> None:
    instrumented(watchdog=False)
    with otel_jobs.job_run("doc.job"):
        names = agent_metrics().names()
    assert METRIC_NAMES <= names
