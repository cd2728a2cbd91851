"""What every outbound check shares: call sites, hosts, runs, logs, policies, install and uninstall."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
import urllib.request
from typing import Any

import aiohttp
import httpcore
import httpx
import psycopg
import pytest
import redis
import redis.asyncio
import requests
import urllib3
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_jobs
from otel_jobs.outbound import LIBRARIES
from otel_jobs.outbound.base import call_site, host_of
from tests.outbound import probe
from tests.outbound.conftest import HTTPServer
from tests.support.servers import SilentServer


def _user_function() -> str:
    return call_site(sys._getframe())


def test_call_site_is_module_function_line() -> None:
    expected = probe.here(0).rsplit(":", 1)[0]
    line = sys._getframe().f_lineno + 1
    assert call_site(sys._getframe()) == f"{expected}:{line}"
    assert _user_function().startswith("tests.outbound.test_common:_user_function:")


def test_host_never_has_credentials_path_or_query() -> None:
    assert host_of("https://user:secret@API.example.com:8443/v1/x?token=abc#f") == (
        "api.example.com:8443"
    )
    assert host_of("http://[::1]:8080/?q=1") == "[::1]:8080"
    assert host_of("http://example.com/path") == "example.com"
    assert host_of("not a url") == "unknown"


# The functions each adapter replaces: all must be the originals again after uninstrument().
PATCHED = [
    (httpcore.ConnectionPool, "handle_request"),
    (httpcore.AsyncConnectionPool, "handle_async_request"),
    (requests.adapters.HTTPAdapter, "send"),
    (urllib3.connectionpool.HTTPConnectionPool, "urlopen"),
    (urllib.request.OpenerDirector, "open"),
    (aiohttp.ClientSession, "_request"),
    (redis.client.Redis, "execute_command"),
    (redis.client.Pipeline, "execute"),
    (redis.client.Pipeline, "immediate_execute_command"),
    (redis.asyncio.client.Redis, "execute_command"),
    (redis.asyncio.client.Pipeline, "execute"),
    (redis.asyncio.client.Pipeline, "immediate_execute_command"),
    (psycopg.Connection, "connect"),
    (psycopg.AsyncConnection, "connect"),
    (psycopg, "connect"),
    (psycopg.Cursor, "execute"),
    (psycopg.Cursor, "executemany"),
    (psycopg.AsyncCursor, "execute"),
    (psycopg.AsyncCursor, "executemany"),
]


def _raw(owner: Any, name: str) -> Any:
    return vars(owner).get(name) if isinstance(owner, type) else getattr(owner, name)


def test_instrument_twice_then_uninstrument_restores_every_original(
    instrumented: Any, http_server: HTTPServer
) -> None:
    before = [_raw(owner, name) for owner, name in PATCHED]
    instrumented(frameworks=[])
    from otel_jobs.core import agent

    current = agent.current()
    assert current is not None
    assert sorted(a.name for a in current.adapters) == sorted(LIBRARIES)
    patched = [_raw(owner, name) for owner, name in PATCHED]
    assert all(p is not b for p, b in zip(patched, before, strict=True))
    otel_jobs.instrument(frameworks=[])  # a second call changes nothing
    assert [_raw(owner, name) for owner, name in PATCHED] == patched
    otel_jobs.uninstrument()
    assert all(_raw(o, n) is b for (o, n), b in zip(PATCHED, before, strict=True))
    assert requests.get(http_server.url).text == "ok"  # behaviour restored


def test_policy_off_installs_nothing(instrumented: Any, http_server: HTTPServer) -> None:
    before = [_raw(owner, name) for owner, name in PATCHED]
    instrumented(frameworks=[], missing_timeout="off")
    assert [_raw(owner, name) for owner, name in PATCHED] == before
    httpx.get(http_server.url, timeout=None)
    assert probe.metrics().find(probe.NO_TIMEOUT) == []


def test_one_warning_per_call_site_then_quiet(
    outbound: Any, http_server: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    outbound("requests")
    sites = []
    for _ in range(5):
        sites.append(probe.here())
        requests.get(http_server.url)
    site = sites[0]
    assert set(sites) == {site}
    assert probe.flagged(library="requests", call_site=site) == 5  # every call counted
    assert len(probe.warnings_of(caplog)) == 1  # logged once, the rest rate-limited
    requests.get(http_server.url)  # another call site: its own first warning
    assert len(probe.warnings_of(caplog)) == 2


def test_calls_in_a_run_are_in_flight_and_count_as_heartbeats(
    outbound: Any, silent_server: SilentServer, http_server: HTTPServer
) -> None:
    outbound("httpx")
    runs: list[Any] = []
    sites: list[str] = []
    done = threading.Event()

    def job() -> None:
        with otel_jobs.job_run("sync.invoices", queue="billing") as run:
            runs.append(run)
            with httpx.Client(timeout=3) as client:
                client.get(http_server.url)  # with a timeout: tracked, not probe.flagged
            beat_after_first = run.last_beat
            runs.append(beat_after_first)
            try:
                sites.append(probe.here())
                httpx.get(silent_server.url + "/slow?key=secret", timeout=None)
            except httpx.HTTPError:
                pass
        done.set()

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while (len(runs) < 2 or not runs[0].calls) and time.monotonic() < deadline:
        time.sleep(0.01)
    run = runs[0]
    [call] = list(run.calls)
    assert (call.library, call.method, call.host) == ("httpx", "GET", silent_server.host)
    assert call.missing == ("connect", "read", "write", "pool")
    assert call.call_site == sites[0]
    assert sites[0] in call.describe() and "no connect/read/write/pool timeout" in call.describe()
    assert run.last_beat >= runs[1] > run.start_mono  # the first call was a heartbeat

    silent_server.drop_all()
    assert done.wait(30)
    thread.join(10)
    assert run.calls == []
    assert run.last_beat > runs[1]  # the failed call was a heartbeat too


def test_in_flight_call_site_of_an_unflagged_call_is_looked_up_on_demand(
    outbound: Any, silent_server: SilentServer
) -> None:
    outbound("httpx")
    runs: list[Any] = []
    sites: list[str] = []

    def job() -> None:
        with otel_jobs.job_run("lookup") as run:
            runs.append(run)
            try:
                sites.append(probe.here())
                httpx.get(silent_server.url, timeout=20)
            except httpx.HTTPError:
                pass

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while (not runs or not runs[0].calls) and time.monotonic() < deadline:
        time.sleep(0.01)
    [call] = list(runs[0].calls)
    assert call.missing == ()
    assert call.call_site == sites[0]
    assert "with a timeout" in call.describe()
    silent_server.drop_all()
    thread.join(30)
    assert probe.metrics().find(probe.NO_TIMEOUT) == []


def test_async_calls_in_a_run_are_in_flight(outbound: Any, silent_server: SilentServer) -> None:
    outbound("aiohttp")
    seen: list[Any] = []
    sites: list[str] = []

    async def job() -> None:
        async with otel_jobs.job_run("async.job") as run:
            assert isinstance(run, otel_jobs.Run)

            async def watch() -> None:
                while not run.calls:
                    await asyncio.sleep(0.01)
                [call] = run.calls
                seen.append((call.library, call.host, call.missing, call.call_site))
                await asyncio.to_thread(silent_server.drop_all)

            watcher = asyncio.create_task(watch())
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout()) as session:
                try:
                    sites.append(probe.here())
                    await session.get(silent_server.url)
                except aiohttp.ClientError:
                    pass
            await watcher
            assert run.calls == []

    asyncio.run(asyncio.wait_for(job(), 60))
    assert seen == [("aiohttp", silent_server.host, ("connect", "read"), sites[0])]


def test_flagged_call_in_a_run_adds_one_event_per_site(
    outbound: Any, http_server: HTTPServer, span_exporter: InMemorySpanExporter
) -> None:
    outbound("urllib")
    sites = []
    with otel_jobs.job_run("reports.nightly"):
        for _ in range(3):
            sites.append(probe.here())
            urllib.request.urlopen(http_server.url + "/r?token=abc").read()
    [run_span] = [s for s in span_exporter.get_finished_spans() if s.name == "reports.nightly"]
    [event] = [e for e in run_span.events if e.name == "otel_jobs.outbound.no_timeout"]
    assert dict(event.attributes) == {
        "otel_jobs.outbound.library": "urllib",
        "otel_jobs.outbound.method": "GET",
        "otel_jobs.outbound.host": http_server.host,
        "otel_jobs.timeout.missing": ("connect", "read"),
        "otel_jobs.timeout.policy": "warn",
        "otel_jobs.call_site": sites[0],
    }
    assert probe.flagged(library="urllib", call_site=sites[0]) == 3


def test_no_credentials_or_query_strings_anywhere(
    outbound: Any,
    instrumented: Any,
    http_server: HTTPServer,
    span_exporter: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
) -> None:
    instrumented(frameworks=[], outbound=["httpx", "requests", "urllib3", "urllib", "aiohttp"])
    secret_url = f"http://alice:hunter2@{http_server.host}/v1/items?token=s3cr3t&id=42"
    query_url = f"http://{http_server.host}/v1/items?token=s3cr3t&id=42"

    with otel_jobs.job_run("leaky"):
        httpx.get(secret_url, timeout=None)
        requests.get(secret_url)
        urllib3.PoolManager().request("GET", query_url)
        urllib.request.urlopen(query_url).read()

        async def fetch() -> None:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout()) as session:
                async with session.get(query_url) as response:
                    await response.read()

        asyncio.run(fetch())

    text = probe.metrics().text
    assert text.count('library="') >= 5
    exposed = [text, *probe.warnings_of(caplog)]
    for span in span_exporter.get_finished_spans():
        exposed.extend(str(v) for v in span.attributes.values())
        for event in span.events:
            exposed.extend(str(v) for v in event.attributes.values())
    assert len(probe.warnings_of(caplog)) == 5
    for item in exposed:
        for secret in ("alice", "hunter2", "s3cr3t", "token"):
            assert secret not in item


def test_the_watchdog_says_which_call_a_stuck_run_waits_on(
    outbound: Any, silent_server: SilentServer, caplog: pytest.LogCaptureFixture
) -> None:
    outbound("requests", heartbeat_timeout=0.3, watchdog_interval=0.1)
    sites: list[str] = []

    def job() -> None:
        with otel_jobs.job_run("billing.sync", queue="billing"):
            try:
                sites.append(probe.here())
                requests.get(silent_server.url + "/invoices")
            except requests.RequestException:
                pass

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    stuck: list[str] = []
    while not stuck and time.monotonic() < deadline:
        time.sleep(0.05)
        stuck = [r.getMessage() for r in caplog.records if "billing.sync" in r.getMessage()]
    silent_server.drop_all()
    thread.join(30)
    assert stuck, "the watchdog never reported the stuck run"
    assert (
        f"outbound call GET {silent_server.host} via requests (no connect/read timeout)" in stuck[0]
    )
    assert f"from {sites[0]}" in stuck[0]


def test_calls_made_while_instrumentation_is_suppressed_are_not_checked(
    outbound: Any, http_server: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    # An exporter's own HTTP calls (OTLP over requests) run with OpenTelemetry's suppression set.
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    outbound("requests")
    with suppress_instrumentation():
        requests.get(http_server.url)
    assert probe.flagged(library="requests") == 0 and probe.warnings_of(caplog) == []
    requests.get(http_server.url)  # the same call, not suppressed: probe.flagged
    assert probe.flagged(library="requests") == 1


def test_a_checked_call_leaves_no_reference_cycle(outbound: Any, http_server: HTTPServer) -> None:
    # A cycle through the caller's frame would keep its objects alive until the cyclic GC, which
    # then runs their __del__ at an arbitrary point: redis-py's Pipeline.__del__ taking the pool
    # lock while the same thread holds it is a deadlock.
    import gc
    import weakref

    outbound("requests")

    class Marker:
        pass

    def call_in_a_run() -> weakref.ref[Marker]:
        marker = Marker()
        with otel_jobs.job_run("cycle.check"):
            requests.get(http_server.url, timeout=5)
        return weakref.ref(marker)

    gc.disable()
    try:
        ref = call_in_a_run()
        assert ref() is None  # freed by reference counting alone, no GC pass needed
    finally:
        gc.enable()
