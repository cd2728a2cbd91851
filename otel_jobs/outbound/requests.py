"""requests (``requests.get``, ``Session``, any ``HTTPAdapter``): calls with no connect or read timeout.

Checked in ``HTTPAdapter.send``, where the timeout that will actually be used arrives: the
call's ``timeout=`` (requests has no session-wide timeout, and ``None``, its default, means
no timeout at all, whatever ``socket.setdefaulttimeout()`` says). Calls through a
``Session``, a mounted adapter subclass or a library built on requests are all seen. A
``(connect, read)`` tuple with one part None is flagged for that part.

* ``enforce`` sends ``(connect, read)`` with the unset parts set to
  ``OTEL_JOBS_DEFAULT_TIMEOUT``; an exceeded timeout raises requests' own
  ``ConnectTimeout`` / ``ReadTimeout``.
* ``raise`` refuses the call with :class:`otel_jobs.MissingTimeoutError` before a connection
  is opened.

The urllib3 check underneath does not count the same call again.
"""

from __future__ import annotations

from typing import Any

from ..core.redaction import host_of
from .adapter import CallCheck, MethodAdapter, Target, argument, replace_argument
from .base import Args, Kwargs, Missing
from .urllib3 import missing_parts, with_defaults

LIBRARY = "requests"
HINT = "pass timeout=(connect, read) to every call, e.g. requests.get(url, timeout=(3.05, 30))"
_TIMEOUT_AT = 3  # HTTPAdapter.send(self, request, stream, timeout, ...)


def _timeout(args: Args, kwargs: Kwargs) -> tuple[Any, Missing]:
    from urllib3.util.timeout import Timeout

    raw = argument(args, kwargs, _TIMEOUT_AT, "timeout", None)
    if raw is None:
        return None, ("connect", "read")
    if isinstance(raw, tuple):
        timeout = Timeout(connect=raw[0], read=raw[1])
    elif isinstance(raw, Timeout):
        timeout = raw
    else:
        timeout = Timeout(connect=raw, read=raw)
    return timeout, missing_parts(timeout)


def _describe(args: Args, kwargs: Kwargs, timeout: Any) -> tuple[str, str]:
    request = argument(args, kwargs, 1, "request", None)
    return str(request.method), host_of(request.url)


def _enforce(
    args: Args, kwargs: Kwargs, timeout: Any, missing: Missing, default: float
) -> tuple[Args, Kwargs]:
    new = (default, default) if timeout is None else with_defaults(timeout, default)
    return replace_argument(args, kwargs, _TIMEOUT_AT, "timeout", new)


CHECK = CallCheck(_timeout, _describe, _enforce, outermost_only=True)


class Adapter(MethodAdapter):
    """Checks ``HTTPAdapter.send`` (see the module docstring)."""

    name, hint = LIBRARY, HINT

    def targets(self) -> list[Target]:
        from requests.adapters import HTTPAdapter

        return [Target(HTTPAdapter, "send", CHECK)]
