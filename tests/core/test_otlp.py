"""OTLP export, end to end: the real exporters of a worker process, over the real protocols.

A subprocess is pointed at a local :class:`~tests.otlp_receiver.OtlpReceiver` with
``OTEL_EXPORTER_OTLP_ENDPOINT`` (and ``OTEL_EXPORTER_OTLP_PROTOCOL``), runs jobs that succeed
and fail, and uninstruments (which flushes). The receiver must hold each run's span with its
``job.*`` attributes, and the ``otel_jobs.*`` metrics under their names, in unit ``s`` for
the durations, with the same counts the runs produced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.otlp_receiver import OtlpReceiver

WORKER = textwrap.dedent(
    """
    import otel_jobs

    otel_jobs.instrument(prometheus=False, watchdog_interval=0.2)

    @otel_jobs.job(name="otlp.ok", queue="otlp-q")
    def ok(i):
        otel_jobs.heartbeat(progress=0.5)
        return i

    @otel_jobs.job(name="otlp.bad", queue="otlp-q")
    def bad():
        raise ValueError("boom")

    for i in range(5):
        ok(i)
    for _ in range(2):
        try:
            bad()
        except ValueError:
            pass
    otel_jobs.uninstrument()
    print("done", flush=True)
    """
)


def otlp_env(endpoint: str, protocol: str, **extra: str) -> dict[str, str]:
    """The environment of a worker exporting to ``endpoint`` only (no inherited OTEL_ settings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CI_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL=protocol,
        OTEL_SERVICE_NAME="otlp-test-worker",
        **extra,
    )
    return env


def run_worker(
    code: str, receiver: OtlpReceiver, protocol: str
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` (it prints ``done`` last) in a worker process exporting to ``receiver``."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=otlp_env(receiver.endpoint, protocol),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0 and "done" in out.stdout, out.stderr
    return out


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_runs_reach_an_otlp_receiver(protocol: str) -> None:
    with OtlpReceiver(protocol) as receiver:
        run_worker(WORKER, receiver, protocol)
        spans = receiver.wait_for(
            "7 run spans",
            lambda: (
                [s for s in receiver.spans() if s.name in ("otlp.ok", "otlp.bad")]
                if len([s for s in receiver.spans() if s.name.startswith("otlp.")]) >= 7
                else None
            ),
        )
        metrics = receiver.metrics()

    assert sorted(s.name for s in spans) == ["otlp.bad"] * 2 + ["otlp.ok"] * 5
    assert len({s.span_id for s in spans}) == 7  # each run once
    for s in spans:
        assert s.resource.get("service.name") == "otlp-test-worker"
        assert s.kind == 5  # SPAN_KIND_CONSUMER
        assert s.attributes["job.name"] == s.name
        assert s.attributes["job.queue"] == "otlp-q"
        assert s.attributes["job.attempt"] == 1
        assert s.attributes["job.framework"] == "otel_jobs"
    ok = [s for s in spans if s.name == "otlp.ok"]
    bad = [s for s in spans if s.name == "otlp.bad"]
    assert all(s.attributes["job.outcome"] == "success" for s in ok)
    assert all(s.attributes["job.progress"] == 0.5 for s in ok)
    assert all(s.attributes["job.outcome"] == "failure" and s.status_code == 2 for s in bad)
    assert all(any(name == "exception" for name, _ in s.events) for s in bad)

    by_name: dict[str, list] = {}
    for m in metrics:
        by_name.setdefault(m.name, []).append(m)
    for name in (
        "otel_jobs.runs.started",
        "otel_jobs.runs.finished",
        "otel_jobs.run.duration",
        "otel_jobs.runs.in_progress",
        "otel_jobs.run.max_duration",
        "otel_jobs.run.heartbeat_timeout",
        "otel_jobs.watchdog.last_tick.timestamp",
    ):
        assert name in by_name, f"{name} not received; got {sorted(by_name)}"
    assert {m.unit for m in by_name["otel_jobs.run.duration"]} == {"s"}
    assert {m.kind for m in by_name["otel_jobs.run.duration"]} == {"histogram"}
    assert {m.unit for m in by_name["otel_jobs.run.max_duration"]} == {"s"}

    def last(name: str, **attrs: str) -> float:
        # Cumulative temporality: the last export holds the totals.
        values = [
            v
            for m in by_name[name]
            for a, v in m.points
            if all(a.get(k) == want for k, want in attrs.items())
        ]
        assert values, (name, attrs)
        return values[-1]

    assert last("otel_jobs.runs.started", job_name="otlp.ok", queue="otlp-q") == 5
    assert last("otel_jobs.runs.started", job_name="otlp.bad", queue="otlp-q") == 2
    assert last("otel_jobs.runs.finished", job_name="otlp.ok", outcome="success") == 5
    assert last("otel_jobs.runs.finished", job_name="otlp.bad", outcome="failure") == 2
    assert last("otel_jobs.run.duration", job_name="otlp.ok", outcome="success") == 5


NON_UTF8_NAMES = textwrap.dedent(
    """
    import otel_jobs

    otel_jobs.instrument(prometheus=False, watchdog_interval=0.2)
    # A job named after a file whose name is not UTF-8 (surrogateescape), and a healthy job
    # whose spans go out in the same batch.
    name = b"otlp.report-\\xff.csv".decode("utf-8", "surrogateescape")
    with otel_jobs.job_run(name, queue=b"q-\\xfe".decode("utf-8", "surrogateescape"),
                           job_id=b"id-\\xfd".decode("utf-8", "surrogateescape")):
        pass
    for i in range(3):
        with otel_jobs.job_run("otlp.healthy", queue="otlp-q"):
            pass
    otel_jobs.uninstrument()
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_a_job_name_that_is_not_utf8_costs_no_span_of_the_batch(protocol: str) -> None:
    """OTLP (protobuf) strings must be UTF-8: a lone surrogate in one span's name would fail the
    encoding of its whole batch. It is replaced (U+FFFD), as in the metrics' labels."""
    with OtlpReceiver(protocol) as receiver:
        out = run_worker(NON_UTF8_NAMES, receiver, protocol)
        spans = receiver.wait_for(
            "4 run spans",
            lambda: (
                found
                if len(found := [s for s in receiver.spans() if s.name.startswith("otlp.")]) >= 4
                else None
            ),
        )
    assert sorted(s.name for s in spans) == ["otlp.healthy"] * 3 + ["otlp.report-\ufffd.csv"]
    [odd] = [s for s in spans if s.name != "otlp.healthy"]
    assert odd.attributes["job.name"] == "otlp.report-\ufffd.csv"
    assert odd.attributes["job.queue"] == "q-\ufffd"
    assert odd.attributes["job.id"] == "id-\ufffd"
    assert "Failed to export" not in out.stderr and "UnicodeEncodeError" not in out.stderr


def test_the_span_opened_for_a_forked_run_is_utf8_too(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    """RQ's worker opens its horse's span (``Agent.open_span``): name and attributes replaced
    the same way, so that the span encodes as OTLP."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    agent = instrumented(watchdog=False)

    def bad(text: bytes) -> str:
        return text.decode("utf-8", "surrogateescape")

    agent.open_span(
        bad(b"otlp.report-\xff.csv"), queue=bad(b"q-\xfe"), job_id=bad(b"id-\xfd"),
        attempt=1, framework="rq",
    ).end()  # fmt: skip
    [span] = span_exporter.get_finished_spans()
    assert span.name == "otlp.report-\ufffd.csv"
    assert span.attributes is not None
    assert span.attributes["job.name"] == span.name
    assert (span.attributes["job.queue"], span.attributes["job.id"]) == ("q-\ufffd", "id-\ufffd")
    [resource] = encode_spans([span]).resource_spans
    assert [s.name for s in resource.scope_spans[0].spans] == [span.name]
