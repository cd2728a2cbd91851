"""A run's span is recorded whatever the job's exception does, and carries no secrets.

* An exception whose ``__str__`` raises (a ``RuntimeError``, or ``SystemExit``) still leaves
  the run's span ended and exported, counted once, with the exception event and a placeholder
  message; the caller gets the job's own exception object, never the one ``__str__`` raised.
* A failed job's exception text is redacted on its span: a real ``requests`` call to a closed
  local port with ``?token=...`` and a URL with a password in a message keep their host on the
  span, and lose the token and the password (message and traceback); so does the span of a run
  whose process died (``record_lost_run``).
* An exception text that is not UTF-8 (a file name decoded with ``surrogateescape``) is
  replaced on the span (U+FFFD), so that the OTLP encoder keeps its message and traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import otel_jobs
from otel_jobs.core.redaction import redact
from tests.otlp_receiver import unused_port
from tests.support import scrape

TOKEN = "tok-8c1f0e"
PASSWORD = "hunter2-pw"


def _span(exporter: InMemorySpanExporter, name: str) -> Any:
    spans = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(spans) == 1, [s.name for s in exporter.get_finished_spans()]
    return spans[0]


def _exception_event(span: Any) -> dict[str, Any]:
    events = [e for e in span.events if e.name == "exception"]
    assert len(events) == 1, span.events
    return dict(events[0].attributes)


def _finished(name: str, outcome: str) -> float:
    url = otel_jobs.metrics_url()
    assert url is not None
    return scrape(url).total("otel_jobs_runs_finished_total", job_name=name, outcome=outcome)


class _BadStr(Exception):
    raises: BaseException = RuntimeError("__str__ is broken")

    def __str__(self) -> str:
        raise self.raises


class _ExitingStr(Exception):
    def __str__(self) -> str:
        raise SystemExit(3)


@pytest.mark.parametrize("kind", [_BadStr, _ExitingStr], ids=["raises", "raises-SystemExit"])
def test_an_exception_whose_str_raises_still_ends_the_span(
    kind: type[Exception],
    instrumented: Callable[..., Any],
    span_exporter: InMemorySpanExporter,
) -> None:
    instrumented()
    thrown = kind()

    @otel_jobs.job(name="rec.bad_str")
    def job() -> None:
        raise thrown

    with pytest.raises(kind) as caught:
        job()
    assert caught.value is thrown  # the job's own exception, not what __str__ raised

    span = _span(span_exporter, "rec.bad_str")
    assert span.attributes["job.outcome"] == "failure"
    assert span.status.status_code is StatusCode.ERROR
    event = _exception_event(span)
    assert event["exception.type"].endswith(kind.__qualname__)
    assert event["exception.message"] == f"<{kind.__qualname__}: str() failed>"
    assert f"{kind.__qualname__}" in event["exception.stacktrace"]
    assert _finished("rec.bad_str", "failure") == 1
    assert otel_jobs.current_run() is None


def test_an_exception_whose_str_raises_in_a_job_run_block(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented()
    thrown = _ExitingStr()
    with pytest.raises(_ExitingStr) as caught, otel_jobs.job_run("rec.block"):
        raise thrown
    assert caught.value is thrown
    assert _span(span_exporter, "rec.block").attributes["job.outcome"] == "failure"


def test_a_requests_error_loses_its_token_on_the_span(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    requests = pytest.importorskip("requests")
    instrumented()
    port = unused_port()
    url = f"http://127.0.0.1:{port}/v1/items?token={TOKEN}&page=2"

    @otel_jobs.job(name="rec.requests")
    def job() -> None:
        requests.get(url, timeout=5)

    with pytest.raises(requests.ConnectionError) as caught:
        job()
    assert TOKEN in str(caught.value)  # the job's exception itself is left as it is

    event = _exception_event(_span(span_exporter, "rec.requests"))
    assert event["exception.type"] == "requests.exceptions.ConnectionError"
    for key in ("exception.message", "exception.stacktrace"):
        assert TOKEN not in event[key], event[key]
    assert "/v1/items?***" in event["exception.message"]
    assert f"port={port}" in event["exception.message"]  # where it went is still said


def test_credentials_in_a_message_are_redacted(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented()

    @otel_jobs.job(name="rec.dsn")
    def job() -> None:
        try:
            raise ConnectionError(f"host=db.internal user=app password={PASSWORD} refused")
        except ConnectionError as exc:
            raise ValueError(
                f"cannot reach https://bot:{PASSWORD}@api.example.com:8443/v1?key=x"
            ) from exc

    with pytest.raises(ValueError):
        job()
    event = _exception_event(_span(span_exporter, "rec.dsn"))
    assert event["exception.message"] == "cannot reach https://api.example.com:8443/v1?***"
    stack = event["exception.stacktrace"]
    assert PASSWORD not in stack, stack
    assert "password=***" in stack and "ConnectionError" in stack  # the chained one too


def test_the_span_of_a_lost_run_is_redacted(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    agent = instrumented()
    agent.record_lost_run(
        "rec.lost",
        exc=RuntimeError(f"horse died calling https://x:{PASSWORD}@h.example/p?token={TOKEN}"),
    )
    event = _exception_event(_span(span_exporter, "rec.lost"))
    assert event["exception.message"] == "horse died calling https://h.example/p?***"


def test_an_exception_text_that_is_not_utf8_is_replaced_on_the_span(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    # A job that fails on a file whose name is not UTF-8 (surrogateescape): OTLP strings must
    # be UTF-8, and the exporter drops (with a traceback in the log) every attribute that is
    # not, so the span would go out without the message and the traceback of its failure.
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    instrumented()
    name = b"report-\xff.csv".decode("utf-8", "surrogateescape")

    @otel_jobs.job(name="rec.not_utf8")
    def job() -> None:
        raise ValueError(f"cannot read {name}")

    with pytest.raises(ValueError):
        job()
    span = _span(span_exporter, "rec.not_utf8")
    event = _exception_event(span)
    assert event["exception.message"] == "cannot read report-\ufffd.csv"
    assert "cannot read report-\ufffd.csv" in event["exception.stacktrace"]
    # As the OTLP exporters encode it: every attribute of the event is kept.
    [resource] = encode_spans([span]).resource_spans
    [encoded] = [e for s in resource.scope_spans[0].spans for e in s.events]
    keys = {a.key for a in encoded.attributes}
    assert {"exception.type", "exception.message", "exception.stacktrace"} <= keys


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Client error '404 Not Found' for url 'https://api.example.com/v1?token=abc'",
            "Client error '404 Not Found' for url 'https://api.example.com/v1?***'",
        ),
        (
            "404, message='Not Found', url='http://h:8080/p?sig=abc#frag'",
            "404, message='Not Found', url='http://h:8080/p?***'",
        ),
        (
            "Error 111 connecting to redis://:pw@10.1.2.3:6379/0.",
            "Error 111 connecting to redis://10.1.2.3:6379/0.",
        ),
        ("(see http://[::1]:9/x?a=b).", "(see http://[::1]:9/x?***)."),
        ("api_key=abc123&x=1 token='quoted value'", "api_key=***&x=1 token=***"),
        (
            "nothing to see at /etc/hosts, a question? yes",
            "nothing to see at /etc/hosts, a question? yes",
        ),
        ("https://h:notaport/p?token=abc", "https://***?***"),
    ],
)
def test_redact(text: str, expected: str) -> None:
    assert redact(text) == expected
