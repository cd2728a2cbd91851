"""Every private name of a client library that the outbound checks read, in one place.

The adapters use public API wherever the library has one. Where it has none, the private name
is read here and nowhere else, for the version range that ``pyproject.toml`` declares (the
``outbound`` extra) and ``tests/outbound/test_internals.py`` checks against the installed
version: a library that renames one of them fails that test by name, instead of an adapter
that half-works. ``verify_*`` run before an adapter patches anything, so an incompatible
version is refused at install (counted as ``outbound.<library>`` and logged once) rather than
failing on every call.

* aiohttp (``>=3.8,<4``): ``ClientSession._request`` is the one method every request goes
  through (``get``, ``post``, ``request`` and ``ws_connect`` call it), with ``method`` and
  ``str_or_url`` first and ``timeout`` keyword-only, defaulting to ``aiohttp.helpers.sentinel``
  (the session's timeout); ``ClientSession._base_url`` is the ``base_url`` given to the session;
  ``ClientTimeout`` is a frozen attrs class.
* redis-py (``>=4.2,<9``): a connection pool keeps its connections in
  ``_available_connections`` / ``_in_use_connections`` (``ConnectionPool``, sync and asyncio)
  or ``_connections`` (``BlockingConnectionPool``); a sync connection's socket is ``_sock``.
  Read only by ``enforce``, to give the connections a pool already holds the timeout it applies.
* The standard library: ``socket._GLOBAL_DEFAULT_TIMEOUT`` is what ``urlopen`` is given when
  no ``timeout=`` is passed (unchanged since Python 2.6).
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator
from typing import Any

#: ``urllib.request.urlopen``'s "no timeout given" marker.
URLLIB_UNSET: Any = socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]

#: The method of ``aiohttp.ClientSession`` that every request goes through.
AIOHTTP_REQUEST = "_request"


class IncompatibleVersion(RuntimeError):
    """A library no longer has a private name an adapter reads: the adapter is not installed."""


def _library_version(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown"


def verify_aiohttp() -> None:
    """Raise :class:`IncompatibleVersion` unless aiohttp has what the aiohttp adapter reads."""
    import aiohttp
    from aiohttp import helpers

    request = getattr(aiohttp.ClientSession, AIOHTTP_REQUEST, None)
    problem = None
    if request is None or not inspect.iscoroutinefunction(request):
        problem = f"ClientSession.{AIOHTTP_REQUEST} is not a coroutine function"
    else:
        parameters = list(inspect.signature(request).parameters.values())
        names = [p.name for p in parameters[1:3]]
        timeout = inspect.signature(request).parameters.get("timeout")
        if names != ["method", "str_or_url"]:
            problem = f"ClientSession.{AIOHTTP_REQUEST} takes {names} first"
        elif timeout is None or timeout.kind is not inspect.Parameter.KEYWORD_ONLY:
            problem = f"ClientSession.{AIOHTTP_REQUEST} has no keyword-only timeout"
        elif timeout.default is not getattr(helpers, "sentinel", object()):
            problem = f"ClientSession.{AIOHTTP_REQUEST}'s timeout default is not helpers.sentinel"
        elif "_base_url" not in getattr(aiohttp.ClientSession, "ATTRS", ()):
            problem = "ClientSession has no _base_url"
        elif not hasattr(aiohttp.ClientTimeout, "__attrs_attrs__"):
            problem = "ClientTimeout is not an attrs class"
    if problem is not None:
        raise IncompatibleVersion(
            f"aiohttp {_library_version('aiohttp')} is not supported by otel-jobs' outbound "
            f"check ({problem}); supported: aiohttp>=3.8,<4"
        )


def aiohttp_session_timeout_marker() -> Any:
    """What ``ClientSession._request`` gets as ``timeout`` when the call passed none."""
    from aiohttp.helpers import sentinel

    return sentinel


def aiohttp_base_url(session: Any) -> Any:
    """The ``base_url`` the session was created with, or None."""
    return session._base_url


def aiohttp_timeout_with(timeout: Any, **changes: float) -> Any:
    """A copy of the frozen ``ClientTimeout`` with ``changes``."""
    import attr

    return attr.evolve(timeout, **changes)


def redis_pool_connections(pool: Any) -> Iterator[Any]:
    """The connections a redis-py pool (sync or asyncio, blocking or not) holds now."""
    yield from getattr(pool, "_available_connections", ())
    yield from getattr(pool, "_in_use_connections", ())
    yield from getattr(pool, "_connections", ())


def redis_connection_socket(connection: Any) -> socket.socket | None:
    """The open socket of a sync redis-py connection, or None (closed, or asyncio)."""
    return getattr(connection, "_sock", None)
