"""urllib3 (``PoolManager``, ``HTTPConnectionPool``, ``HTTPSConnectionPool``): calls with no connect or read timeout.

Checked in ``HTTPConnectionPool.urlopen``, which every request reaches (a ``PoolManager``
routes each request to a pool). The effective timeout is the call's ``timeout=``, else the
pool's (``PoolManager(timeout=...)``), else ``socket.getdefaulttimeout()``; a ``Timeout`` with
a ``total`` bounds both parts. urllib3's default is no timeout at all, so
``urllib3.request("GET", url)`` is flagged unless ``socket.setdefaulttimeout()`` was called.

* ``enforce`` passes a ``Timeout`` whose unset parts are ``OTEL_JOBS_DEFAULT_TIMEOUT`` (the
  set ones, and ``total``, unchanged); an exceeded timeout raises urllib3's own
  ``ConnectTimeoutError`` / ``ReadTimeoutError`` (wrapped in ``MaxRetryError`` after retries).
* ``raise`` refuses the call with :class:`otel_jobs.MissingTimeoutError` before a connection
  is taken from the pool.

Requests made by ``requests`` are checked once, by the requests adapter; retries and
redirects that urllib3 makes inside one call are not counted again.
"""

from __future__ import annotations

from typing import Any

from .base import (
    Args,
    CallCheck,
    Kwargs,
    MethodAdapter,
    argument,
    fill,
    format_host,
    with_argument,
)

LIBRARY = "urllib3"
HINT = "pass timeout=urllib3.Timeout(connect=..., read=...) to the call or to the PoolManager"
# HTTPConnectionPool.urlopen(self, method, url, body, headers, retries, redirect,
# assert_same_host, timeout, ...)
_TIMEOUT_AT = 8


def timeout_missing(timeout: Any) -> tuple[str, ...]:
    """The parts of a ``urllib3.Timeout`` that resolve to no timeout at all."""
    from urllib3.util.timeout import Timeout

    if timeout.total is not None:
        return ()
    connect = Timeout.resolve_default_timeout(timeout.connect_timeout)
    read = timeout.read_timeout  # resolves the default; no total, so no clock involved
    if connect is not None and read is not None:
        return ()
    missing = ("connect",) if connect is None else ()
    return missing + ("read",) if read is None else missing


def enforced(timeout: Any, default: float) -> Any:
    """``timeout`` with its unset parts set to ``default``."""
    from urllib3.util.timeout import Timeout

    connect = Timeout.resolve_default_timeout(timeout.connect_timeout)
    read = timeout.read_timeout
    return Timeout(connect=fill(connect, default), read=fill(read, default), total=timeout.total)


def _timeout(args: Args, kwargs: Kwargs) -> tuple[Any, tuple[str, ...]]:
    from urllib3.util.timeout import _DEFAULT_TIMEOUT, Timeout

    raw = argument(args, kwargs, _TIMEOUT_AT, "timeout", _DEFAULT_TIMEOUT)
    if raw is _DEFAULT_TIMEOUT:
        timeout = args[0].timeout  # the pool's
    elif isinstance(raw, Timeout):
        timeout = raw
    else:
        timeout = Timeout.from_float(raw)
    return timeout, timeout_missing(timeout)


def _describe(args: Args, kwargs: Kwargs) -> tuple[str, str]:
    pool = args[0]
    method = argument(args, kwargs, 1, "method", None)
    return str(method), format_host(pool.host, pool.port)


def _enforce(args: Args, kwargs: Kwargs, timeout: Any, default: float) -> tuple[Args, Kwargs]:
    return with_argument(args, kwargs, _TIMEOUT_AT, "timeout", enforced(timeout, default))


class Adapter(MethodAdapter):
    """Checks ``HTTPConnectionPool.urlopen`` (see the module docstring)."""

    name = LIBRARY
    hint = HINT
    check = CallCheck(_timeout, _describe, _enforce)

    def target(self) -> tuple[type, str]:
        from urllib3.connectionpool import HTTPConnectionPool

        return HTTPConnectionPool, "urlopen"
