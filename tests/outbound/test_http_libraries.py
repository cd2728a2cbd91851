"""requests, urllib3, urllib and aiohttp against real local servers, under each policy."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest
import requests
import urllib3

import otel_jobs
from tests.outbound import probe
from tests.outbound.conftest import HTTPServer
from tests.support.servers import SilentServer

# --- requests ------------------------------------------------------------------------------


def test_requests_warn_through_a_session(
    outbound: Any, http_server: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    outbound("requests")
    with requests.Session() as session:
        site = probe.here()
        response = session.post(http_server.url + "/s", data=b"x")
    assert response.text == "ok"
    assert probe.flagged(library="requests", host=http_server.host, call_site=site) == 1
    [message] = probe.warnings_of(caplog)
    assert f"POST {http_server.host} via requests has no connect/read timeout" in message


def test_requests_tuple_with_one_part_missing(outbound: Any, http_server: HTTPServer) -> None:
    outbound("requests")
    site = probe.here()
    requests.get(http_server.url, timeout=(3, None))
    assert probe.flagged(library="requests", call_site=site) == 1


def test_requests_with_a_timeout_is_never_flagged(
    outbound: Any, http_server: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    outbound("requests")
    requests.get(http_server.url, timeout=3)
    requests.get(http_server.url, timeout=(2, 5))
    with requests.Session() as session:
        session.get(http_server.url, timeout=urllib3.Timeout(total=5))
    assert len(http_server.requests) == 3
    assert probe.metrics().find(probe.NO_TIMEOUT) == []
    assert probe.warnings_of(caplog) == []


def test_requests_enforce_turns_a_hang_into_read_timeout(
    outbound: Any, silent_server: SilentServer
) -> None:
    outbound("requests", "enforce", default_timeout=0.5)
    result = probe.in_thread(lambda: requests.get(silent_server.url))
    assert isinstance(result, requests.exceptions.ReadTimeout)
    assert probe.flagged(library="requests") == 1  # not counted again by urllib3 underneath


def test_requests_raise_sends_nothing(outbound: Any, silent_server: SilentServer) -> None:
    outbound("requests", "raise")
    with pytest.raises(otel_jobs.MissingTimeoutError) as caught:
        site = probe.here()
        requests.get(silent_server.url + "/?token=x")
    assert (caught.value.library, caught.value.call_site) == ("requests", site)
    assert probe.nothing_reached(silent_server)


# --- urllib3 -------------------------------------------------------------------------------


def test_urllib3_warn_for_pool_manager_and_pool(outbound: Any, http_server: HTTPServer) -> None:
    outbound("urllib3")
    manager = urllib3.PoolManager()
    site = probe.here()
    assert manager.request("GET", http_server.url).data == b"ok"
    pool = urllib3.HTTPConnectionPool(
        "127.0.0.1", http_server.port, timeout=urllib3.Timeout(connect=2)
    )
    pool_site = probe.here()
    assert pool.request("GET", "/").data == b"ok"
    assert probe.flagged(library="urllib3", host=http_server.host, call_site=site) == 1
    assert probe.flagged(library="urllib3", call_site=pool_site) == 1


def test_urllib3_timeouts_are_resolved_like_urllib3_does(
    outbound: Any, http_server: HTTPServer
) -> None:
    outbound("urllib3")
    urllib3.request("GET", http_server.url)  # urllib3.request's own default: 3 s
    urllib3.PoolManager(timeout=4).request("GET", http_server.url)
    urllib3.PoolManager().request("GET", http_server.url, timeout=urllib3.Timeout(total=5))
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        urllib3.PoolManager().request("GET", http_server.url)  # falls back to the socket default
    finally:
        socket.setdefaulttimeout(previous)
    assert probe.metrics().find(probe.NO_TIMEOUT) == []


def test_urllib3_enforce_keeps_the_connect_timeout_set(
    outbound: Any, silent_server: SilentServer
) -> None:
    outbound("urllib3", "enforce", default_timeout=0.5)
    manager = urllib3.PoolManager(timeout=urllib3.Timeout(connect=5), retries=False)
    result = probe.in_thread(lambda: manager.request("GET", silent_server.url))
    assert isinstance(result, urllib3.exceptions.ReadTimeoutError)
    assert "read timeout=0.5" in str(result)


def test_urllib3_raise_sends_nothing(outbound: Any, silent_server: SilentServer) -> None:
    outbound("urllib3", "raise")
    with pytest.raises(otel_jobs.MissingTimeoutError):
        urllib3.PoolManager().request("GET", silent_server.url)
    assert probe.nothing_reached(silent_server)


# --- urllib --------------------------------------------------------------------------------


def test_urllib_warn_and_fallback_to_socket_default(
    outbound: Any, http_server: HTTPServer, tmp_path: Any
) -> None:
    outbound("urllib")
    site = probe.here()
    assert urllib.request.urlopen(http_server.url).read() == b"ok"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(10)
    try:
        urllib.request.urlopen(http_server.url).read()  # the socket default is a timeout
    finally:
        socket.setdefaulttimeout(previous)
    urllib.request.build_opener().open(http_server.url, timeout=5).read()
    local = tmp_path / "f.txt"
    local.write_text("x")
    urllib.request.urlopen(local.as_uri()).read()  # no network: never probe.flagged
    assert probe.metrics().total(probe.NO_TIMEOUT) == 1
    assert probe.flagged(library="urllib", call_site=site) == 1


def test_urllib_enforce_turns_a_hang_into_timeout(
    outbound: Any, silent_server: SilentServer
) -> None:
    outbound("urllib", "enforce", default_timeout=0.5)
    result = probe.in_thread(lambda: urllib.request.urlopen(silent_server.url).read())
    assert isinstance(result, TimeoutError | urllib.error.URLError)
    assert "timed out" in str(result)


def test_urllib_raise_sends_nothing(outbound: Any, silent_server: SilentServer) -> None:
    outbound("urllib", "raise")
    request = urllib.request.Request(silent_server.url, data=b"payload", method="PUT")
    with pytest.raises(otel_jobs.MissingTimeoutError) as caught:
        urllib.request.urlopen(request)
    assert caught.value.method == "PUT"
    assert probe.nothing_reached(silent_server)


# --- aiohttp -------------------------------------------------------------------------------


def test_aiohttp_warn_session_without_timeout(
    outbound: Any, http_server: HTTPServer, caplog: pytest.LogCaptureFixture
) -> None:
    outbound("aiohttp")
    sites = []

    async def main() -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(sock_connect=3)) as session:
            sites.append(probe.here())
            async with session.get(http_server.url) as response:
                assert await response.text() == "ok"

    asyncio.run(main())
    assert probe.flagged(library="aiohttp", host=http_server.host, call_site=sites[0]) == 1
    [message] = probe.warnings_of(caplog)
    assert "has no read timeout" in message


def test_aiohttp_with_a_timeout_is_never_flagged(outbound: Any, http_server: HTTPServer) -> None:
    outbound("aiohttp")

    async def main() -> None:
        async with aiohttp.ClientSession() as session:  # aiohttp's default: total=300
            async with session.get(http_server.url) as response:
                await response.read()
        timeout = aiohttp.ClientTimeout(sock_connect=2, sock_read=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async with session.get(http_server.url) as response:
                await response.read()

    asyncio.run(main())
    assert probe.metrics().find(probe.NO_TIMEOUT) == []


def test_aiohttp_enforce_turns_a_hang_into_timeout(
    outbound: Any, silent_server: SilentServer
) -> None:
    outbound("aiohttp", "enforce", default_timeout=0.5)

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await session.get(silent_server.url, timeout=aiohttp.ClientTimeout(sock_connect=5))

    with pytest.raises(aiohttp.ServerTimeoutError):  # aiohttp's own, not wait_for's
        asyncio.run(asyncio.wait_for(main(), 60))


def test_aiohttp_raise_sends_nothing(outbound: Any, silent_server: SilentServer) -> None:
    outbound("aiohttp", "raise")

    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await session.get(silent_server.url, timeout=None)

    with pytest.raises(otel_jobs.MissingTimeoutError) as caught:
        asyncio.run(main())
    assert caught.value.missing == ("connect", "read")
    assert probe.nothing_reached(silent_server)
