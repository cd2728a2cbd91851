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

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import errors
from ..core.patching import Patches
from ..core.run import current_run
from .base import Checker, InFlightCall, MissingTimeoutError, host_of

if TYPE_CHECKING:
    from ..core.agent import Agent

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


class Adapter:
    """Checks ``ClientSession._request`` (see the module docstring)."""

    name = LIBRARY

    def __init__(self, agent: Agent) -> None:
        self.checker = Checker(agent, LIBRARY, HINT)
        self.patches = Patches()

    def install(self) -> None:
        import attr
        from aiohttp import ClientSession, ClientTimeout
        from aiohttp.helpers import sentinel

        checker = self.checker

        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            async def _request(session: Any, method: str, str_or_url: Any, **kwargs: Any) -> Any:
                run = current_run()
                checked = False
                call: InFlightCall | None
                try:
                    raw = kwargs.get("timeout", sentinel)
                    if raw is sentinel:
                        timeout = session.timeout
                    elif isinstance(raw, ClientTimeout):
                        timeout = raw
                    else:
                        timeout = ClientTimeout(total=raw)
                    missing = _missing(timeout)
                    if missing or run is not None:
                        url = str_or_url
                        if session._base_url is not None and "://" not in str(url):
                            url = session._base_url
                        call = checker.begin(
                            run, str(method).upper(), host_of(url), missing, sys._getframe(),
                            lazy_site=False,
                        )  # fmt: skip
                        checked = True
                        if missing and checker.enforce:
                            default = checker.default_timeout
                            changes = {}
                            if "connect" in missing:
                                changes["sock_connect"] = default
                            if "read" in missing:
                                changes["sock_read"] = default
                            kwargs["timeout"] = attr.evolve(timeout, **changes)
                except MissingTimeoutError:
                    raise
                except Exception as exc:
                    errors.record("outbound.aiohttp", exc)
                if not checked:
                    return await original(session, method, str_or_url, **kwargs)
                try:
                    return await original(session, method, str_or_url, **kwargs)
                finally:
                    checker.end(run, call)

            return _request

        self.patches.wrap(ClientSession, "_request", wrap)

    def uninstall(self) -> None:
        self.patches.undo()
