"""The client libraries' internals that the outbound checks read, against the installed versions.

Each test names the library and the name it reads: when a new version renames one, this file
fails, with that name, instead of an adapter that half-works (otel_jobs/outbound/_internals.py).
The installed versions must also be inside the bounds ``pyproject.toml`` declares for them.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis
import redis.asyncio
from packaging.requirements import Requirement

from otel_jobs.core import errors
from otel_jobs.outbound import _internals
from tests.support import require_redis

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _declared() -> dict[str, Requirement]:
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    requirements = [Requirement(text) for text in extras["outbound"]]
    return {r.name: r for r in requirements}


@pytest.mark.parametrize("library", ["urllib3", "aiohttp", "redis", "psycopg"])
def test_installed_versions_are_inside_the_declared_bounds(library: str) -> None:
    requirement = _declared()[library]
    assert requirement.specifier, f"pyproject.toml declares no bound for {library}"
    installed = version(library)
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{library} {installed} is outside {requirement}: check otel_jobs/outbound/_internals.py "
        "against it, then move the bound"
    )


# --- aiohttp -----------------------------------------------------------------------------------


def test_aiohttp_is_verified_compatible() -> None:
    _internals.verify_aiohttp()  # raises IncompatibleVersion naming what changed


def test_aiohttp_private_names() -> None:
    request = getattr(aiohttp.ClientSession, _internals.AIOHTTP_REQUEST)
    timeout = inspect.signature(request).parameters["timeout"]
    assert timeout.default is _internals.aiohttp_session_timeout_marker()

    async def sessions() -> tuple[Any, Any]:
        async with aiohttp.ClientSession(base_url="http://api.example.com:8080") as based:
            async with aiohttp.ClientSession() as plain:
                return _internals.aiohttp_base_url(based), _internals.aiohttp_base_url(plain)

    based, plain = asyncio.run(sessions())
    assert str(based) == "http://api.example.com:8080" and plain is None
    original = aiohttp.ClientTimeout(total=None, sock_connect=3)
    changed = _internals.aiohttp_timeout_with(original, sock_read=7)
    assert (changed.sock_connect, changed.sock_read, original.sock_read) == (3, 7, None)


@pytest.mark.internal_errors("outbound.aiohttp")
def test_an_incompatible_aiohttp_is_refused_at_install_not_half_checked(
    instrumented: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a future aiohttp without a coroutine ClientSession._request looks like to otel-jobs.
    def _request(self: Any, method: str, str_or_url: Any, **kwargs: Any) -> None:
        pass

    monkeypatch.setattr(aiohttp.ClientSession, _internals.AIOHTTP_REQUEST, _request)
    with pytest.raises(_internals.IncompatibleVersion) as refused:
        _internals.verify_aiohttp()
    message = str(refused.value)
    assert f"aiohttp {aiohttp.__version__} is not supported" in message
    assert "ClientSession._request is not a coroutine function" in message
    assert "aiohttp>=3.8,<4" in message
    before = errors.counts().get("outbound.aiohttp", 0)
    agent = instrumented(frameworks=[], outbound=["aiohttp"])
    assert [a.name for a in agent.adapters] == []  # not installed
    assert vars(aiohttp.ClientSession)[_internals.AIOHTTP_REQUEST] is _request  # not patched
    assert errors.counts().get("outbound.aiohttp", 0) == before + 1  # counted (and logged once)


# --- redis-py ----------------------------------------------------------------------------------


@pytest.mark.broker
def test_redis_pool_connections_and_sockets() -> None:
    require_redis()
    for pool_class in (redis.ConnectionPool, redis.BlockingConnectionPool):
        client = redis.Redis(connection_pool=pool_class(host="127.0.0.1", port=6379))
        client.ping()
        held = list(_internals.redis_pool_connections(client.connection_pool))
        assert len(held) == 1, f"{pool_class.__name__}: {held}"
        sock = _internals.redis_connection_socket(held[0])
        assert sock is not None and sock.fileno() >= 0, pool_class.__name__
        client.close()

    async def async_pool() -> list[Any]:
        client = redis.asyncio.Redis(host="127.0.0.1", port=6379)
        await client.ping()
        held = list(_internals.redis_pool_connections(client.connection_pool))
        await client.aclose()
        return held

    assert len(asyncio.run(async_pool())) == 1


# --- the public seams otel-jobs relies on ------------------------------------------------------


def test_contrib_httpx_entry_points_otel_jobs_steps_aside_for() -> None:
    from opentelemetry.instrumentation import httpx as contrib

    instrument_client = inspect.getattr_static(contrib.HTTPXClientInstrumentor, "instrument_client")
    assert isinstance(instrument_client, (classmethod, staticmethod))
    for transport in (contrib.SyncOpenTelemetryTransport, contrib.AsyncOpenTelemetryTransport):
        assert callable(transport.__init__)
    assert isinstance(
        inspect.getattr_static(contrib.HTTPXClientInstrumentor, "is_instrumented_by_opentelemetry"),
        property,
    )


def test_urllib3_default_timeout_marker_is_urlopens_default() -> None:
    from urllib3.connectionpool import HTTPConnectionPool
    from urllib3.util.timeout import Timeout

    timeout = inspect.signature(HTTPConnectionPool.urlopen).parameters["timeout"]
    assert timeout.default is Timeout.DEFAULT_TIMEOUT


def test_urllib_unset_marker_is_urlopens_default() -> None:
    import urllib.request

    timeout = inspect.signature(urllib.request.OpenerDirector.open).parameters["timeout"]
    assert timeout.default is _internals.URLLIB_UNSET
