"""urllib (``urllib.request.urlopen``, any ``OpenerDirector``): calls with no socket timeout.

Checked in ``OpenerDirector.open``, which ``urlopen`` and every ``build_opener()`` opener go
through. The effective timeout is the call's ``timeout=``, else ``socket.getdefaulttimeout()``
(None unless ``socket.setdefaulttimeout()`` was called), and it bounds both the connect and
every read, so a call without one is flagged as missing ``connect/read``. ``file:`` and
``data:`` URLs make no network call and are never flagged.

* ``enforce`` passes ``timeout=OTEL_JOBS_DEFAULT_TIMEOUT``; an exceeded timeout raises
  ``TimeoutError`` (or ``URLError`` wrapping it while connecting).
* ``raise`` refuses the call with :class:`otel_jobs.MissingTimeoutError` before a connection
  is opened.

Redirects followed inside one call are not counted again.
"""

from __future__ import annotations

import socket
from typing import Any

from ..core.redaction import host_of
from . import _internals
from .adapter import CallCheck, MethodAdapter, Target, argument, replace_argument
from .base import Args, Kwargs, Missing

LIBRARY = "urllib"
HINT = "pass timeout= to urlopen() / opener.open(), or call socket.setdefaulttimeout() at start-up"
_LOCAL_SCHEMES = ("file", "data")
_MISSING = ("connect", "read")
_TIMEOUT_AT = 3  # OpenerDirector.open(self, fullurl, data, timeout)
_UNSET = _internals.URLLIB_UNSET


def _timeout(args: Args, kwargs: Kwargs) -> tuple[Any, Missing]:
    timeout = argument(args, kwargs, _TIMEOUT_AT, "timeout", _UNSET)
    if timeout is _UNSET:
        timeout = socket.getdefaulttimeout()
    return timeout, _MISSING if timeout is None else ()


def _describe(args: Args, kwargs: Kwargs, timeout: Any) -> tuple[str, str] | None:
    """The method and host of ``open(fullurl, data=None, ...)``; None for a local URL."""
    fullurl = argument(args, kwargs, 1, "fullurl", None)
    if isinstance(fullurl, str):
        url = fullurl
        method = "GET" if argument(args, kwargs, 2, "data", None) is None else "POST"
    else:
        url, method = fullurl.full_url, fullurl.get_method()
    if url.partition(":")[0].lower() in _LOCAL_SCHEMES:
        return None
    return method, host_of(url)


def _enforce(
    args: Args, kwargs: Kwargs, timeout: Any, missing: Missing, default: float
) -> tuple[Args, Kwargs]:
    return replace_argument(args, kwargs, _TIMEOUT_AT, "timeout", default)


class Adapter(MethodAdapter):
    """Checks ``OpenerDirector.open`` (see the module docstring)."""

    name, hint = LIBRARY, HINT

    def targets(self) -> list[Target]:
        import urllib.request

        check = CallCheck(_timeout, _describe, _enforce, outermost_only=True)
        return [Target(urllib.request.OpenerDirector, "open", check)]
