"""What ``providers.flush`` waits for: nothing when the SDK provider has no span processor.

An RQ work horse waits for its spans' export before it exits; with no span processor there is
nothing to export, and it must not wait. Whether there is one is read from the SDK's private
``_active_span_processor._span_processors`` (in ``otel_jobs.core.providers`` only): this test
fails by name on an SDK that renames it, rather than letting every horse wait for nothing.
"""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_jobs.core import providers


def test_a_provider_without_span_processors_has_nothing_to_flush() -> None:
    provider = TracerProvider()
    assert providers._without_span_processors(provider) is True
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    assert providers._without_span_processors(provider) is False


def test_anything_else_may_hold_spans() -> None:
    class Other:
        def force_flush(self, timeout_millis: int = 0) -> bool:
            return True

    assert providers._without_span_processors(Other()) is False
    assert providers._without_span_processors(None) is False
