"""Fixtures: the real OpenTelemetry SDK with in-memory exporters, and an instrumented process."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_jobs
from otel_jobs.core import errors

# The suite's processes (this one and the workers it starts, which inherit the variable) serve
# /metrics from instrument() on, as they did before the lazy start: tests scrape an endpoint
# before any run. The default, lazy (a process that only publishes opens no port and starts no
# thread), is tested with the variable removed: tests/core/test_lazy_start.py, and the workers
# of tests/integrations/test_warm_shutdown.py.
os.environ.setdefault("OTEL_JOBS_START", "eager")

_span_exporter = InMemorySpanExporter()
_metric_reader = InMemoryMetricReader()


def _install_sdk_once() -> None:
    # Global providers can be set once per process: one real SDK pipeline for the whole run.
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_span_exporter))
        trace.set_tracer_provider(provider)
        metrics.set_meter_provider(MeterProvider(metric_readers=[_metric_reader]))


@pytest.fixture
def span_exporter() -> Iterator[InMemorySpanExporter]:
    _install_sdk_once()
    _span_exporter.clear()
    yield _span_exporter
    _span_exporter.clear()


@pytest.fixture
def metric_reader() -> InMemoryMetricReader:
    _install_sdk_once()
    return _metric_reader


@pytest.fixture
def instrumented(span_exporter: InMemorySpanExporter) -> Iterator[Callable[..., Any]]:
    """``instrumented(**options)``: instrument with a free port; uninstrumented after the test."""

    def start(**options: Any) -> Any:
        options.setdefault("prometheus_port", 0)
        otel_jobs.instrument(**options)
        from otel_jobs.core import agent

        return agent.current()

    yield start
    otel_jobs.uninstrument()


@pytest.fixture(autouse=True)
def _never_left_instrumented() -> Iterator[None]:
    yield
    if otel_jobs.is_instrumented():
        otel_jobs.uninstrument()


def _allowed(component: str, expected: tuple[str, ...]) -> bool:
    return any(component == e or component.startswith(e + ".") for e in expected)


@pytest.fixture(autouse=True)
def _no_unexpected_internal_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test in which otel-jobs counted an internal error (caught, counted and logged, so
    the job went on) that the test does not expect.

    A test that provokes them says which: ``@pytest.mark.internal_errors("watchdog", ...)`` (a
    component and its sub-components: "watchdog" covers "watchdog.span"); with no argument, any.
    Errors counted in this process only: a worker process counts its own.
    """
    before = errors.counts()
    yield
    marker = request.node.get_closest_marker("internal_errors")
    if marker is not None and not marker.args:
        return
    expected: tuple[str, ...] = marker.args if marker is not None else ()
    unexpected = {
        component: count - before.get(component, 0)
        for component, count in errors.counts().items()
        if count > before.get(component, 0) and not _allowed(component, expected)
    }
    if unexpected:
        pytest.fail(
            f"otel-jobs counted internal errors this test does not expect: {unexpected} (their "
            "tracebacks are in the ERROR records of the otel_jobs logger). Fix the cause, or mark "
            f"a test that provokes them: @pytest.mark.internal_errors({', '.join(map(repr, unexpected))})",
            pytrace=False,
        )
