"""aiohttp (``ClientSession``): calls whose ``ClientTimeout`` leaves the connect or the read unbounded.

Checked in ``ClientSession._request``, which every request method goes through. The
effective timeout is the call's ``timeout=``, else the session's (aiohttp's default,
``ClientTimeout(total=300, sock_connect=30)``, is bounded). A part is missing when nothing
bounds it: ``connect`` when ``total``, ``connect`` and ``sock_connect`` are all None, ``read``
when ``total`` and ``sock_read`` are both None. ``ClientTimeout()`` or ``timeout=None``
miss both.

* ``enforce`` passes the same ``ClientTimeout`` with ``sock_connect`` / ``sock_read`` set to
  ``OTEL_JOBS_DEFAULT_TIMEOUT`` for the missing parts only; an exceeded timeout raises
  aiohttp's own ``ConnectionTimeoutError`` / ``SocketTimeoutError`` (both
  ``asyncio.TimeoutError``).
* ``raise`` refuses the call with :class:`otel_jobs.MissingTimeoutError` before a connection
  is opened.

The request's span from opentelemetry-instrumentation-aiohttp-client, if you use it, is not
the current span while the request is made, so the ``otel_jobs.timeout.*`` attributes go
only on the run's event, the log and the metric.
"""

from __future__ import annotations

from typing import Any

from .base import Args, CallCheck, Kwargs, MethodAdapter, argument, host_of

LIBRARY = "aiohttp"
HINT = "pass timeout=aiohttp.ClientTimeout(total=..., sock_connect=..., sock_read=...) to the session or the call"


def _missing(timeout: Any) -> tuple[str, ...]:
    if timeout.total is not None:
        return ()
    connect = timeout.connect is None and timeout.sock_connect is None
    read = timeout.sock_read is None
    if connect:
        return ("connect", "read") if read else ("connect",)
    return ("read",) if read else ()


def _timeout(args: Args, kwargs: Kwargs) -> tuple[Any, tuple[str, ...]]:
    from aiohttp import ClientTimeout
    from aiohttp.helpers import sentinel

    raw = kwargs.get("timeout", sentinel)  # keyword-only in ClientSession._request
    if raw is sentinel:
        timeout = args[0].timeout  # the session's
    elif isinstance(raw, ClientTimeout):
        timeout = raw
    else:
        timeout = ClientTimeout(total=raw)
    return timeout, _missing(timeout)


def _describe(args: Args, kwargs: Kwargs) -> tuple[str, str]:
    session = args[0]
    method = argument(args, kwargs, 1, "method", None)
    url = argument(args, kwargs, 2, "str_or_url", None)
    if session._base_url is not None and "://" not in str(url):
        url = session._base_url
    return str(method).upper(), host_of(url)


def _enforce(args: Args, kwargs: Kwargs, timeout: Any, default: float) -> tuple[Args, Kwargs]:
    import attr

    missing = _missing(timeout)
    changes = {}
    if "connect" in missing:
        changes["sock_connect"] = default
    if "read" in missing:
        changes["sock_read"] = default
    return args, {**kwargs, "timeout": attr.evolve(timeout, **changes)}


class Adapter(MethodAdapter):
    """Checks ``ClientSession._request`` (see the module docstring)."""

    name = LIBRARY
    hint = HINT
    check = CallCheck(_timeout, _describe, _enforce)
    is_async = True

    def target(self) -> tuple[type, str]:
        from aiohttp import ClientSession

        return ClientSession, "_request"
