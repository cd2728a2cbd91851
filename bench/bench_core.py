"""Per-run and per-heartbeat cost of otel-jobs, against the floor, in one process.

* ``@job`` run of an empty function, with spans (an SDK ``TracerProvider`` with a
  ``BatchSpanProcessor`` and an exporter that drops everything) and Prometheus metrics,
  against the floor: the same empty function inside an SDK span with ``job.name`` and
  ``job.queue``, made current while it runs, plus one prometheus-client histogram observation
  of its duration. Two more baselines for reading it: a bare span (no attributes, not made
  current), and the span a run must emit (its 5 attributes, made current).
* ``heartbeat()`` inside a run, against a plain dictionary store of a monotonic timestamp
  (what any liveness check must do at least).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry, Histogram

import otel_jobs
from otel_jobs.core.telemetry import DURATION_BUCKETS

from ._timing import interleaved, ratio, row, us

JOB_TARGET = 1.3
HEARTBEAT_TARGET = 5.0


class NullExporter(SpanExporter):
    """Accepts every batch and sends it nowhere."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def tracer_provider() -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(NullExporter()))
    return provider


def run(quick: bool = False) -> list[dict[str, Any]]:
    reps, number = (3, 200) if quick else (21, 5000)
    provider = tracer_provider()
    floor_tracer = provider.get_tracer("bench.floor")
    floor_hist = Histogram(
        "bench_floor_duration_seconds", "Floor.", ["job_name", "queue", "outcome"],
        buckets=DURATION_BUCKETS, registry=CollectorRegistry(),
    ).labels("bench.empty", "default", "success")  # fmt: skip
    monotonic = time.monotonic

    def empty() -> None:
        pass

    def bare() -> None:
        start = monotonic()
        span = floor_tracer.start_span("bench.empty", kind=SpanKind.CONSUMER)
        empty()
        span.end()
        floor_hist.observe(monotonic() - start)

    named = {"job.name": "bench.empty", "job.queue": "default"}

    def floor() -> None:
        # The floor: a span any instrumentation of a job emits, made current while it runs.
        start = monotonic()
        span = floor_tracer.start_span("bench.empty", kind=SpanKind.CONSUMER, attributes=named)
        token = otel_context.attach(trace.set_span_in_context(span))
        empty()
        otel_context.detach(token)
        span.end()
        floor_hist.observe(monotonic() - start)

    attrs: dict[str, Any] = {
        "job.name": "bench.empty",
        "job.queue": "default",
        "job.attempt": 1,
        "job.framework": "otel_jobs",
    }

    def floor_attributed() -> None:
        # The span a run must produce anyway: its attributes, made current while the job runs.
        start = monotonic()
        span = floor_tracer.start_span("bench.empty", kind=SpanKind.CONSUMER, attributes=attrs)
        token = otel_context.attach(trace.set_span_in_context(span))
        empty()
        otel_context.detach(token)
        span.set_attribute("job.outcome", "success")
        span.end()
        floor_hist.observe(monotonic() - start)

    otel_jobs.instrument(
        tracer_provider=provider, prometheus_port=0, frameworks=[], outbound=[], watchdog=False
    )
    try:
        job = otel_jobs.job(name="bench.empty")(empty)
        results = interleaved(
            {
                "job": job,
                "floor": floor,
                "attributed": floor_attributed,
                "bare": bare,
                "uninstrumented": empty,
            },
            reps=reps,
            number=number,
        )
        job_ratio = ratio(results, "job", "floor")
        job_cpu_ratio = ratio(results, "job", "floor", key="cpu")
        attributed_ratio = ratio(results, "job", "attributed")
        mandatory_ratio = ratio(results, "attributed", "floor")
        bare_ratio = ratio(results, "job", "bare")

        beats: dict[str, float] = {}

        def dict_store() -> None:
            beats["last_beat"] = monotonic()

        heartbeat = otel_jobs.heartbeat

        def beat_progress() -> None:
            heartbeat(progress=0.5)

        with otel_jobs.job_run("bench.heartbeat"):
            hb = interleaved(
                {"heartbeat": heartbeat, "dict": dict_store, "progress": beat_progress},
                reps=reps,
                number=number * 10,
            )
    finally:
        otel_jobs.uninstrument()
        provider.shutdown()
    hb_ratio = ratio(hb, "heartbeat", "dict")
    return [
        row(
            "@job run, empty function (spans + Prometheus)",
            subject="otel-jobs @job", value=us(results["job"]["median"]), unit="us/run",
            baseline="SDK span with job.name and job.queue, made current, + 1 histogram observe",
            baseline_value=us(results["floor"]["median"]), ratio=job_ratio,
            target=f"<= {JOB_TARGET}x", met=job_ratio <= JOB_TARGET,
            note=f"calling thread's CPU time: {job_cpu_ratio:.3f}x; "
            f"uninstrumented call {us(results['uninstrumented']['median']):.2f} us; "
            f"{bare_ratio:.2f}x a bare span (no attributes, not current) + 1 observe "
            f"({us(results['bare']['median']):.2f} us)",
        ),
        row(
            "@job run, against the span it must emit",
            subject="otel-jobs @job", value=us(results["job"]["median"]), unit="us/run",
            baseline="SDK span with the run's 5 attributes, made current, + 1 observe",
            baseline_value=us(results["attributed"]["median"]), ratio=attributed_ratio,
            note=f"that span alone is {mandatory_ratio:.2f}x the floor",
        ),
        row(
            "heartbeat() inside a run",
            subject="otel_jobs.heartbeat()", value=us(hb["heartbeat"]["median"]), unit="us/call",
            baseline="dict store of monotonic()", baseline_value=us(hb["dict"]["median"]),
            ratio=hb_ratio, target=f"<= {HEARTBEAT_TARGET}x, < 1 us",
            met=hb_ratio <= HEARTBEAT_TARGET and hb["heartbeat"]["median"] < 1e-6,
            note=f"with progress=: {us(hb['progress']['median']):.2f} us",
        ),
    ]  # fmt: skip
