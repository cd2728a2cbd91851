"""Nothing leaks: what jobs handle stays out of spans, logs and metrics; the endpoint is guarded.

Jobs run with secret-looking arguments and results through ``@job`` and through a framework
adapter (APScheduler, in process), make an outbound call whose URL carries a user, a password
and a query token and whose headers carry a bearer token, without a timeout (so otel-jobs
reports it), and one of them stalls with the secret in a local variable (so the watchdog
diagnoses its stack). Every exported span (attributes, events, status, links), every log
record (message, fields, traceback), the ``/metrics`` text and the OpenTelemetry metrics are
then searched for the secrets: none may appear. ``capture_args`` is the opt-in for arguments,
and records a bounded repr.

The ``/metrics`` endpoint binds only the address chosen, and serves TLS with HTTP basic auth
(a self-signed certificate made with ``openssl`` for the test).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_jobs
from otel_jobs.api import MAX_ARGS_CHARS
from tests.support import Samples, free_port, scrape_text

# Made at run time, so that no source line the stack diagnosis quotes can contain them.
SECRET = "arg-" + uuid.uuid4().hex
RESULT = "result-" + uuid.uuid4().hex
PASSWORD = "pw-" + uuid.uuid4().hex
TOKEN = "tok-" + uuid.uuid4().hex
SECRETS = (SECRET, RESULT, PASSWORD, TOKEN)


@pytest.fixture
def http_server() -> Iterator[int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.1,), daemon=True).start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _record_text(record: logging.LogRecord) -> str:
    parts = [record.getMessage(), record.exc_text or ""]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append(logging.Formatter().formatException(record.exc_info))
    parts.extend(repr(v) for v in vars(record).values())
    return "\n".join(parts)


def test_by_default_no_argument_result_credential_or_local_value_leaks(
    instrumented: Callable[..., Any],
    span_exporter: InMemorySpanExporter,
    metric_reader: InMemoryMetricReader,
    caplog: pytest.LogCaptureFixture,
    http_server: int,
) -> None:
    import requests
    from apscheduler.events import EVENT_JOB_ERROR, EVENT_JOB_EXECUTED
    from apscheduler.schedulers.background import BackgroundScheduler

    caplog.set_level(logging.DEBUG)
    instrumented(
        frameworks=["apscheduler"],
        outbound=["requests"],
        watchdog_interval=0.05,
        missing_timeout="warn",
    )
    url = f"http://scott:{PASSWORD}@127.0.0.1:{http_server}/private/path?token={TOKEN}"

    @otel_jobs.job(name="leak.direct")
    def direct(secret: str, *, password: str) -> str:
        otel_jobs.heartbeat(progress=0.5)
        # No timeout: otel-jobs reports the call, with its host and call site.
        response = requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.text == "ok"
        return RESULT

    assert direct(SECRET, password=PASSWORD) == RESULT

    @otel_jobs.job(name="leak.stuck", heartbeat_timeout=0.2)
    def stuck(secret: str) -> str:
        kept = secret  # a local variable holding the secret while the run is diagnosed
        run = otel_jobs.current_run()
        deadline = time.monotonic() + 30
        while run is not None and run.verdict is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert run is not None and run.verdict == "no_heartbeat"
        return kept[:0] + RESULT

    assert stuck(SECRET) == RESULT

    outcomes: list[Any] = []
    done = threading.Event()

    def scheduled(secret: str, password: str) -> str:
        return RESULT

    def listener(event: Any) -> None:
        outcomes.append(event.retval)
        done.set()

    scheduler = BackgroundScheduler(timezone=timezone.utc)
    scheduler.add_listener(listener, EVENT_JOB_EXECUTED | EVENT_JOB_ERROR)
    scheduler.add_job(
        scheduled, args=[SECRET], kwargs={"password": PASSWORD}, id="leak-job", name="scheduled"
    )
    scheduler.start()
    try:
        assert done.wait(60)
    finally:
        scheduler.shutdown(wait=True)
    assert outcomes == [RESULT]

    spans = span_exporter.get_finished_spans()
    names = {s.name for s in spans}
    assert {"leak.direct", "leak.stuck", "leak.stuck stalled", "scheduled"} <= names, names
    metrics_url = otel_jobs.metrics_url()
    assert metrics_url is not None
    exported = {
        "spans": "\n".join(s.to_json() for s in spans),
        # Records of otel-jobs and OpenTelemetry: a library's own DEBUG lines (urllib3 logs the
        # URLs it fetches) are the application's logging configuration, not otel-jobs'.
        "logs": "\n".join(
            _record_text(r)
            for r in caplog.records
            if r.name.startswith(("otel_jobs", "opentelemetry"))
        ),
        "/metrics": scrape_text(metrics_url),
        "otel metrics": metric_reader.get_metrics_data().to_json(),  # type: ignore[union-attr]
    }
    # The evidence that each channel saw these runs at all.
    assert "leak.stuck" in exported["logs"] and "127.0.0.1" in exported["logs"]
    assert 'job_name="leak.direct"' in exported["/metrics"]
    assert "otel_jobs.outbound.no_timeout" in exported["spans"]
    for where, text in exported.items():
        for secret in SECRETS:
            assert secret not in text, f"{secret[:4]}... leaked into {where}"


def test_capture_args_records_a_bounded_repr(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented(watchdog=False, capture_args=True)

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    @otel_jobs.job(name="leak.captured")
    def captured(*args: Any, **kwargs: Any) -> int:
        return len(args)

    @otel_jobs.job(name="leak.captured.async")
    async def captured_async(value: str) -> str:
        return value

    assert captured(SECRET, 42, flag=True) == 2
    assert captured("x" * 100_000, list(range(10_000)), Unprintable(), nested={"a": [1] * 50}) == 3
    assert asyncio.run(captured_async(SECRET)) == SECRET
    spans = span_exporter.get_finished_spans()
    first, second, third = (s.attributes["job.args"] for s in spans)  # type: ignore[index]
    assert first == f"('{SECRET}', 42, flag=True)"
    assert isinstance(second, str) and len(second) <= MAX_ARGS_CHARS
    assert "Unprintable" in second and "nested=" in second
    assert third == f"('{SECRET}')"  # the call's arguments, as written


def test_capture_args_is_off_by_default(
    instrumented: Callable[..., Any], span_exporter: InMemorySpanExporter
) -> None:
    instrumented(watchdog=False)
    otel_jobs.job(name="leak.default")(lambda secret: None)(SECRET)
    (span,) = span_exporter.get_finished_spans()
    assert "job.args" not in (span.attributes or {})


def test_metrics_endpoint_binds_only_the_chosen_address(instrumented: Callable[..., Any]) -> None:
    port = free_port()
    instrumented(watchdog=False, prometheus_port=port, prometheus_addr="127.0.0.2")
    assert otel_jobs.metrics_url() == f"http://127.0.0.2:{port}/metrics"
    assert "otel_jobs_runs_started_total" in scrape_text(f"http://127.0.0.2:{port}/metrics")
    with pytest.raises(OSError):  # the same port on another local address: nothing there
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_metrics_endpoint_with_tls_and_basic_auth(
    instrumented: Callable[..., Any], certificate: tuple[str, str]
) -> None:
    cert, key = certificate
    instrumented(
        watchdog=False,
        prometheus_certfile=cert,
        prometheus_keyfile=key,
        prometheus_basic_auth=f"scraper:{PASSWORD}",
    )
    url = otel_jobs.metrics_url()
    assert url is not None and url.startswith("https://127.0.0.1:")
    trusted = ssl.create_default_context(cafile=cert)  # verifies the chain and the IP

    def get(authorization: str | None) -> tuple[int, str]:
        request = urllib.request.Request(url)
        if authorization is not None:
            request.add_header("Authorization", authorization)
        try:
            with urllib.request.urlopen(request, context=trusted, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, ""

    import base64

    def basic(credentials: str) -> str:
        return "Basic " + base64.b64encode(credentials.encode()).decode()

    assert get(None)[0] == 401
    assert get(basic("scraper:wrong"))[0] == 401
    status, text = get(basic(f"scraper:{PASSWORD}"))
    assert status == 200
    assert Samples(text).find("otel_jobs_internal_errors_total") is not None
    assert "otel_jobs_runs_started_total" in text
    # Plain HTTP on the TLS port gets no metrics.
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(url.replace("https://", "http://"), timeout=10).read()
    # A client that does not trust the certificate cannot complete the handshake.
    with pytest.raises(urllib.error.URLError) as raised:
        urllib.request.urlopen(url, context=ssl.create_default_context(), timeout=10)
    assert isinstance(raised.value.reason, ssl.SSLCertVerificationError)
