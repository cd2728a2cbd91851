"""httpx, sync and async, against real local servers, through opentelemetry-instrumentation-httpx."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx
import pytest
from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import otel_jobs
from tests.outbound import probe
from tests.outbound.conftest import HTTPServer
from tests.support.servers import SilentServer


def client_spans(exporter: InMemorySpanExporter) -> list[Any]:
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]


@dataclass(frozen=True)
class Warned:
    """httpx checked under the warn policy (``outbound("httpx")`` done), and what it left."""

    exporter: InMemorySpanExporter
    caplog: pytest.LogCaptureFixture

    def spans(self) -> list[Any]:
        return client_spans(self.exporter)

    def warnings(self) -> list[str]:
        return probe.warnings_of(self.caplog)


@pytest.fixture
def warned(
    outbound: Callable[..., Any],
    span_exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> Warned:
    outbound("httpx")
    return Warned(span_exporter, caplog)


@pytest.fixture(autouse=True)
def _httpx_spans_reset() -> Iterator[None]:
    yield
    instrumentor = HTTPXClientInstrumentor()
    if instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.uninstrument()


def test_warn_flags_sync_call_with_the_test_line(warned: Warned, http_server: HTTPServer) -> None:
    site = probe.here()
    response = httpx.get(http_server.url + "/a", timeout=None)

    assert response.text == "ok"  # warn changes nothing
    samples = probe.metrics()
    assert (
        samples.value(probe.NO_TIMEOUT, library="httpx", host=http_server.host, call_site=site) == 1
    )
    [message] = warned.warnings()
    assert f"GET {http_server.host} via httpx has no connect/read/write/pool timeout" in message
    assert site in message
    [span] = warned.spans()
    assert span.attributes["otel_jobs.timeout.missing"] == ("connect", "read", "write", "pool")
    assert span.attributes["otel_jobs.timeout.policy"] == "warn"
    assert span.attributes["otel_jobs.call_site"] == site


def test_warn_flags_async_call_and_only_the_missing_part(
    warned: Warned, http_server: HTTPServer
) -> None:
    sites = []

    async def main() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(5, read=None)) as client:
            sites.append(probe.here())
            response = await client.get(http_server.url)
            assert response.text == "ok"

    asyncio.run(main())
    assert probe.flagged(library="httpx", call_site=sites[0]) == 1
    [message] = warned.warnings()
    assert "has no read timeout" in message


def test_call_with_a_timeout_is_never_flagged(warned: Warned, http_server: HTTPServer) -> None:
    httpx.get(http_server.url)  # httpx's default: 5 s each
    with httpx.Client(timeout=2) as client:
        client.get(http_server.url)

    async def main() -> None:
        async with httpx.AsyncClient(timeout=3) as client:
            await client.get(http_server.url)

    asyncio.run(main())
    assert len(http_server.requests) == 3
    assert probe.metrics().find(probe.NO_TIMEOUT) == []
    assert warned.warnings() == []
    assert all("otel_jobs.timeout.missing" not in s.attributes for s in warned.spans())


def test_enforce_turns_a_hang_into_httpx_timeout(
    outbound: Any, silent_server: SilentServer, caplog: pytest.LogCaptureFixture
) -> None:
    outbound("httpx", "enforce", default_timeout=0.5)
    result = probe.in_thread(lambda: httpx.get(silent_server.url, timeout=None))
    assert isinstance(result, httpx.ReadTimeout)
    [message] = probe.warnings_of(caplog)
    assert "otel-jobs applied 0.5 s to the missing parts" in message


def test_enforce_async_keeps_the_parts_the_caller_set(
    outbound: Any, silent_server: SilentServer, http_server: HTTPServer
) -> None:
    outbound("httpx", "enforce", default_timeout=0.5)
    seen: list[dict[str, Any]] = []

    async def main() -> Any:
        timeout = httpx.Timeout(connect=7.0, read=None, write=None, pool=9.0)
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(http_server.url)
            seen.append(response.request.extensions["timeout"])
            return await asyncio.wait_for(client.get(silent_server.url), 60)

    with pytest.raises(httpx.ReadTimeout):
        asyncio.run(main())
    assert seen == [{"connect": 7.0, "read": 0.5, "write": 0.5, "pool": 9.0}]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_raise_sends_nothing(outbound: Any, silent_server: SilentServer, kind: str) -> None:
    outbound("httpx", "raise")
    sites = []

    def sync_call() -> Any:
        sites.append(probe.here())
        return httpx.get(silent_server.url + "/x", timeout=None)

    async def async_call() -> Any:
        async with httpx.AsyncClient(timeout=None) as client:
            sites.append(probe.here())
            return await client.get(silent_server.url + "/x")

    with pytest.raises(otel_jobs.MissingTimeoutError) as caught:
        if kind == "sync":
            sync_call()
        else:
            asyncio.run(async_call())
    error = caught.value
    assert isinstance(error, otel_jobs.JobTimeoutError)
    assert (error.library, error.host, error.call_site) == ("httpx", silent_server.host, sites[0])
    assert "httpx" in str(error) and silent_server.host in str(error) and sites[0] in str(error)
    assert probe.nothing_reached(silent_server)
    assert probe.flagged(library="httpx", call_site=sites[0]) == 1


# --- living with the user's own opentelemetry-instrumentation-httpx ------------------------


def test_otel_jobs_instruments_httpx_spans_when_nobody_did(
    outbound: Any, http_server: HTTPServer, span_exporter: InMemorySpanExporter
) -> None:
    before = vars(httpx.HTTPTransport)["handle_request"]
    outbound("httpx")
    assert HTTPXClientInstrumentor().is_instrumented_by_opentelemetry
    httpx.get(http_server.url)
    assert len(client_spans(span_exporter)) == 1
    otel_jobs.uninstrument()
    assert not HTTPXClientInstrumentor().is_instrumented_by_opentelemetry
    assert vars(httpx.HTTPTransport)["handle_request"] is before


def test_otel_jobs_spans_keep_the_url_without_its_secrets_as_contrib_writes_it(
    warned: Warned, http_server: HTTPServer
) -> None:
    httpx.get(f"http://alice:hunter2@{http_server.host}/v1/a%20b?token=s3cr3t#top", timeout=5)
    [span] = warned.spans()
    [url] = [span.attributes[k] for k in ("url.full", "http.url") if k in span.attributes]
    # contrib's own value is str(httpx.URL): the path stays percent-encoded
    assert url == f"http://{http_server.host}/v1/a%20b"


def test_user_instrumented_first_one_span_and_left_in_place(
    outbound: Any, http_server: HTTPServer, span_exporter: InMemorySpanExporter
) -> None:
    hooked: list[Any] = []
    HTTPXClientInstrumentor().instrument(request_hook=lambda span, request: hooked.append(span))
    users = vars(httpx.HTTPTransport)["handle_request"]
    outbound("httpx")
    assert vars(httpx.HTTPTransport)["handle_request"] is users  # not wrapped a second time
    httpx.get(http_server.url, timeout=None)

    [span] = client_spans(span_exporter)
    assert [s.context.span_id for s in hooked] == [span.context.span_id]  # their hook, our span
    assert span.attributes["otel_jobs.timeout.missing"] == ("connect", "read", "write", "pool")
    otel_jobs.uninstrument()
    assert HTTPXClientInstrumentor().is_instrumented_by_opentelemetry  # theirs stays
    assert vars(httpx.HTTPTransport)["handle_request"] is users


def test_user_instrumenting_later_replaces_otel_jobs_spans(
    outbound: Any, http_server: HTTPServer, span_exporter: InMemorySpanExporter
) -> None:
    outbound("httpx")
    hooked: list[Any] = []
    HTTPXClientInstrumentor().instrument(request_hook=lambda span, request: hooked.append(span))
    # one wrapper (theirs) around the original, not theirs around otel-jobs'
    assert not hasattr(vars(httpx.HTTPTransport)["handle_request"].__wrapped__, "__wrapped__")
    httpx.get(http_server.url, timeout=None)

    [span] = client_spans(span_exporter)
    assert [s.context.span_id for s in hooked] == [span.context.span_id]
    assert span.attributes["otel_jobs.call_site"].startswith("tests.outbound.test_httpx:")
    otel_jobs.uninstrument()
    assert HTTPXClientInstrumentor().is_instrumented_by_opentelemetry


def test_user_instrumenting_one_client_gets_one_span_per_call(
    warned: Warned, http_server: HTTPServer
) -> None:
    with httpx.Client(timeout=None) as client:
        HTTPXClientInstrumentor.instrument_client(client)
        client.get(http_server.url)
    [span] = warned.spans()
    assert span.attributes["otel_jobs.timeout.policy"] == "warn"


def test_uninstrument_restores_the_pool_functions(outbound: Any, http_server: HTTPServer) -> None:
    sync_before = httpcore.ConnectionPool.handle_request
    async_before = httpcore.AsyncConnectionPool.handle_async_request
    outbound("httpx")
    assert httpcore.ConnectionPool.handle_request is not sync_before
    otel_jobs.uninstrument()
    assert httpcore.ConnectionPool.handle_request is sync_before
    assert httpcore.AsyncConnectionPool.handle_async_request is async_before
    assert httpx.get(http_server.url, timeout=None).text == "ok"


def test_spans_go_to_the_tracer_provider_given_to_instrument(
    instrumented: Any, http_server: HTTPServer, span_exporter: InMemorySpanExporter
) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    own = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(own))
    instrumented(frameworks=[], outbound=["httpx"], tracer_provider=provider)
    httpx.get(http_server.url, timeout=None)
    [span] = client_spans(own)
    assert span.attributes["otel_jobs.timeout.policy"] == "warn"
    assert client_spans(span_exporter) == []
