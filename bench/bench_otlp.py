"""An empty ``@job`` run with a healthy OTLP endpoint, against the same work done by hand.

The driver starts a local OTLP receiver (``tests/otlp_receiver.py``, OTLP/HTTP protobuf, counting
what it decodes instead of keeping it) and runs the measurement in a fresh interpreter
(``python -m bench.bench_otlp --subject ENDPOINT``), so that otel-jobs sets up the pipelines it
sets up for a worker from ``OTEL_EXPORTER_OTLP_ENDPOINT`` alone, and the receiver does not take
the measured process's GIL. In that process, taking turns (``bench/_timing.py``):

* ``otel-jobs``: a function decorated with ``@otel_jobs.job``, with ``instrument()``'s defaults
  (its SDK ``TracerProvider`` with a ``BatchSpanProcessor`` and the OTLP span exporter, its
  ``MeterProvider`` with a periodic reader and the OTLP metric exporter, Prometheus metrics
  too);
* ``by hand``: the same work written with the SDK: a ``TracerProvider`` with a
  ``BatchSpanProcessor`` and an OTLP span exporter to the same receiver, the run's span with
  the same 4 attributes at its start and ``job.outcome`` at its end, made current while the
  function runs, and a ``MeterProvider`` with the same instruments (runs started and finished,
  the duration histogram with the same bucket advisory), recorded at the same moments with the
  same attributes;
* the same two without a metrics pipeline, the floor of the no-endpoint row of
  ``bench_core``, for reading.

A second measured process does the same with the ``/metrics`` endpoint, the lease and the
watchdog turned off (:data:`WITHOUT`): how much of the gap to the floor they hold.

Exemplars are kept: the finish metrics are recorded while the run's span is current, on both
sides, so the SDK's default ``trace_based`` exemplar filter samples one per observation (what
links a duration bucket to a trace). The ratio is otel-jobs against the same work by hand,
exemplars included, in wall time; the note gives it in CPU time of the calling thread too (the
span exporters' threads, which encode and send each side's batches in the same process, take
the GIL at moments that fall in one round or the other: the wall-time ratio swings more).
``python -m bench.bench_otlp [--quick]``.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

try:
    from bench._timing import interleaved, main, measured_apart, ratio, row, us
except ImportError:  # run as a script from bench/
    from _timing import interleaved, main, measured_apart, ratio, row, us  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
TARGET = 1.10


# --- the measured process (``python -m bench.bench_otlp --subject ENDPOINT REPS NUMBER``) --------


def _subject(reps: int, number: int) -> dict[str, Any]:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    import otel_jobs
    from otel_jobs.core.telemetry import DURATION_BUCKETS

    otel_jobs.instrument(prometheus_port=0, frameworks=[], outbound=[])
    from otel_jobs.core import agent as agent_mod

    agent = agent_mod.current()
    assert agent is not None and agent.telemetry.otel is not None, "no OTLP metrics pipeline"

    def empty() -> None:
        pass

    job = otel_jobs.job(name="bench.empty")(empty)

    # The same work by hand, with pipelines of its own to the same endpoint.
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    tracer = tracer_provider.get_tracer("bench.by_hand")
    meter_provider = MeterProvider(
        metric_readers=[PeriodicExportingMetricReader(OTLPMetricExporter())]
    )
    meter = meter_provider.get_meter("bench.by_hand")
    started = meter.create_counter("bench.runs.started", unit="{run}")
    finished = meter.create_counter("bench.runs.finished", unit="{run}")
    duration = meter.create_histogram(
        "bench.run.duration", unit="s",
        explicit_bucket_boundaries_advisory=list(DURATION_BUCKETS),
    )  # fmt: skip
    attrs = {"job.name": "bench.empty", "job.queue": "default", "job.attempt": 1,
             "job.framework": "otel_jobs"}  # fmt: skip
    labels = {"job_name": "bench.empty", "queue": "default"}
    outcome_labels = {**labels, "outcome": "success"}
    monotonic = time.monotonic
    attach, detach, in_context = otel_context.attach, otel_context.detach, trace.set_span_in_context

    def by_hand() -> None:
        start = monotonic()
        span = tracer.start_span("bench.empty", kind=SpanKind.CONSUMER, attributes=attrs)
        started.add(1, labels)
        token = attach(in_context(span))
        empty()
        span.set_attribute("job.outcome", "success")
        finished.add(1, outcome_labels)
        duration.record(monotonic() - start, outcome_labels)  # span current: an exemplar
        detach(token)
        span.end()

    def spans_only() -> None:
        start = monotonic()
        span = tracer.start_span("bench.empty", kind=SpanKind.CONSUMER, attributes=attrs)
        token = attach(in_context(span))
        empty()
        span.set_attribute("job.outcome", "success")
        detach(token)
        span.end()
        monotonic() - start

    results = interleaved(
        {"otel-jobs": job, "by hand": by_hand, "by hand, spans only": spans_only},
        reps=reps,
        number=number,
    )
    out = {
        "ratio": ratio(results, "otel-jobs", "by hand"),
        "cpu_ratio": ratio(results, "otel-jobs", "by hand", key="cpu"),
        # The calling thread's CPU time per run more than by hand, median over rounds.
        "cpu_extra": statistics.median(
            a - b
            for a, b in zip(results["otel-jobs"]["cpu"], results["by hand"]["cpu"], strict=True)
        ),
        "spans_only_ratio": ratio(results, "otel-jobs", "by hand, spans only"),
        **{name: value["median"] for name, value in results.items()},
    }
    otel_jobs.uninstrument()
    tracer_provider.shutdown()
    meter_provider.shutdown()
    return out


# --- the driver ---------------------------------------------------------------------------------


def _receiver() -> Any:
    sys.path.insert(0, str(ROOT))
    from tests.otlp_receiver import OtlpReceiver

    class CountingReceiver(OtlpReceiver):
        """Decodes every request, as a collector does, and counts its spans instead of keeping it."""

        spans_received = 0
        metric_requests_received = 0

        def _keep(self, into: list[Any], request: Any) -> None:
            with self._lock:
                if into is self.trace_requests:
                    self.spans_received += sum(
                        len(scope.spans)
                        for resource in request.resource_spans
                        for scope in resource.scope_spans
                    )
                else:
                    self.metric_requests_received += 1

    return CountingReceiver()


#: What the second measured process turns off: where the gap to the floor is not.
WITHOUT = {
    "OTEL_JOBS_PROMETHEUS_ENABLED": "false",
    "OTEL_JOBS_LEASE_ENABLED": "false",
    "OTEL_JOBS_WATCHDOG_ENABLED": "false",
}


def run(quick: bool = False) -> list[dict[str, Any]]:
    reps, number = (3, 200) if quick else (21, 2000)
    receiver = _receiver()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(
            PYTHONPATH=str(ROOT),
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            # Room for every span of a round on both sides: a dropped span costs less.
            OTEL_BSP_MAX_QUEUE_SIZE=str(4 * number),
        )
        found = measured_apart("bench.bench_otlp", "subject", reps, number, env, 1800)
        # The same, with the /metrics endpoint, the lease and the watchdog off.
        bare = measured_apart("bench.bench_otlp", "subject", reps, number, {**env, **WITHOUT}, 1800)
        received = receiver.spans_received
    finally:
        receiver.close()
    value = found["ratio"]
    return [
        row(
            "@job run, empty function, healthy OTLP endpoint (spans and metrics over OTLP/HTTP)",
            subject="otel-jobs @job (defaults)", value=us(found["otel-jobs"]), unit="us/run",
            baseline="the same work by hand with the SDK (span, 3 instruments, exemplars)",
            baseline_value=us(found["by hand"]), ratio=value,
            target=f"<= {TARGET}x", met=None if quick else value <= TARGET,
            note=f"calling thread's CPU time: {found['cpu_ratio']:.3f}x, "
            f"{us(found['cpu_extra']):+.2f} us per run; "
            f"{found['spans_only_ratio']:.2f}x the span alone by hand "
            f"({us(found['by hand, spans only']):.2f} us); the receiver decoded {received:,} "
            "spans; exemplars kept on both sides",
        ),
        row(
            "the same, without the /metrics endpoint, the lease and the watchdog",
            subject="otel-jobs @job (OTLP only)", value=us(bare["otel-jobs"]), unit="us/run",
            baseline="the same work by hand with the SDK", baseline_value=us(bare["by hand"]),
            ratio=bare["ratio"],
            note=f"calling thread's CPU time: {bare['cpu_ratio']:.3f}x, "
            f"{us(bare['cpu_extra']):+.2f} us per run (defaults: {us(found['cpu_extra']):+.2f})",
        ),
    ]  # fmt: skip


if __name__ == "__main__":
    main(__doc__, run, "3 rounds of 200 runs", "subject", _subject)
