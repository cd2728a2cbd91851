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

from ..core.redaction import host_of
from . import _internals
from .adapter import CallCheck, MethodAdapter, Target, argument
from .base import Args, Kwargs, Missing

LIBRARY = "aiohttp"
HINT = "pass timeout=aiohttp.ClientTimeout(total=..., sock_connect=..., sock_read=...) to the session or the call"


def _missing(timeout: Any) -> Missing:
    if timeout.total is not None:
        return ()
    connect = timeout.connect is None and timeout.sock_connect is None
    read = timeout.sock_read is None
    if connect:
        return ("connect", "read") if read else ("connect",)
    return ("read",) if read else ()


def _timeout(args: Args, kwargs: Kwargs) -> tuple[Any, Missing]:
    from aiohttp import ClientTimeout

    unset = _internals.aiohttp_session_timeout_marker()
    raw = kwargs.get("timeout", unset)  # keyword-only in ClientSession._request
    if raw is unset:
        timeout = args[0].timeout  # the session's
    elif isinstance(raw, ClientTimeout):
        timeout = raw
    else:
        timeout = ClientTimeout(total=raw)
    return timeout, _missing(timeout)


def _describe(args: Args, kwargs: Kwargs, timeout: Any) -> tuple[str, str]:
    session = args[0]
    method = argument(args, kwargs, 1, "method", None)
    url = argument(args, kwargs, 2, "str_or_url", None)
    base_url = _internals.aiohttp_base_url(session)
    if base_url is not None and "://" not in str(url):
        url = base_url
    return str(method).upper(), host_of(url)


def _enforce(
    args: Args, kwargs: Kwargs, timeout: Any, missing: Missing, default: float
) -> tuple[Args, Kwargs]:
    changes = {}
    if "connect" in missing:
        changes["sock_connect"] = default
    if "read" in missing:
        changes["sock_read"] = default
    return args, {**kwargs, "timeout": _internals.aiohttp_timeout_with(timeout, **changes)}


class Adapter(MethodAdapter):
    """Checks ``ClientSession._request`` (see the module docstring)."""

    name, hint = LIBRARY, HINT

    def targets(self) -> list[Target]:
        from aiohttp import ClientSession

        _internals.verify_aiohttp()
        check = CallCheck(_timeout, _describe, _enforce, outermost_only=True)
        return [Target(ClientSession, _internals.AIOHTTP_REQUEST, check, is_async=True)]
