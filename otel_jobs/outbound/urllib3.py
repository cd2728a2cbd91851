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

from ..core.redaction import format_host
from .adapter import CallCheck, MethodAdapter, Target, argument, replace_argument, value_or_default
from .base import Args, Kwargs, Missing

LIBRARY = "urllib3"
HINT = "pass timeout=urllib3.Timeout(connect=..., read=...) to the call or to the PoolManager"
# HTTPConnectionPool.urlopen(self, method, url, body, headers, retries, redirect,
# assert_same_host, timeout, ...)
_TIMEOUT_AT = 8


def missing_parts(timeout: Any) -> Missing:
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


def with_defaults(timeout: Any, default: float) -> Any:
    """``timeout`` with its unset parts set to ``default``."""
    from urllib3.util.timeout import Timeout

    connect = Timeout.resolve_default_timeout(timeout.connect_timeout)
    return Timeout(
        connect=value_or_default(connect, default),
        read=value_or_default(timeout.read_timeout, default),
        total=timeout.total,
    )


def _timeout(args: Args, kwargs: Kwargs) -> tuple[Any, Missing]:
    from urllib3.util.timeout import Timeout

    # Timeout.DEFAULT_TIMEOUT: urlopen's "not given" default (urllib3 2), the pool's then applies.
    raw = argument(args, kwargs, _TIMEOUT_AT, "timeout", Timeout.DEFAULT_TIMEOUT)
    if raw is Timeout.DEFAULT_TIMEOUT:
        timeout = args[0].timeout  # the pool's
    elif isinstance(raw, Timeout):
        timeout = raw
    else:
        timeout = Timeout.from_float(raw)
    return timeout, missing_parts(timeout)


def _describe(args: Args, kwargs: Kwargs, timeout: Any) -> tuple[str, str]:
    pool = args[0]
    method = argument(args, kwargs, 1, "method", None)
    return str(method), format_host(pool.host, pool.port)


def _enforce(
    args: Args, kwargs: Kwargs, timeout: Any, missing: Missing, default: float
) -> tuple[Args, Kwargs]:
    new = with_defaults(timeout, default)
    return replace_argument(args, kwargs, _TIMEOUT_AT, "timeout", new)


class Adapter(MethodAdapter):
    """Checks ``HTTPConnectionPool.urlopen`` (see the module docstring)."""

    name, hint = LIBRARY, HINT

    def targets(self) -> list[Target]:
        from urllib3.connectionpool import HTTPConnectionPool

        check = CallCheck(_timeout, _describe, _enforce, outermost_only=True)
        return [Target(HTTPConnectionPool, "urlopen", check)]
