"""Fixtures: the real OpenTelemetry SDK with in-memory exporters, and an instrumented process."""

from __future__ import annotations

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
