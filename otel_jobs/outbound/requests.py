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

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import errors
from ..core.patching import Patches
from ..core.run import current_run
from .base import Checker, MissingTimeoutError, host_of, nested
from .urllib3 import enforced, timeout_missing

if TYPE_CHECKING:
    from ..core.agent import Agent

LIBRARY = "requests"
HINT = "pass timeout=(connect, read) to every call, e.g. requests.get(url, timeout=(3.05, 30))"


class Adapter:
    """Checks ``HTTPAdapter.send`` (see the module docstring)."""

    name = LIBRARY

    def __init__(self, agent: Agent) -> None:
        self.checker = Checker(agent, LIBRARY, HINT)
        self.patches = Patches()

    def install(self) -> None:
        from requests.adapters import HTTPAdapter
        from urllib3.util.timeout import Timeout

        checker = self.checker

        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def send(adapter: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
                if nested.get():
                    return original(adapter, request, *args, **kwargs)
                run = current_run()
                checked = False
                token = nested.set(True)
                try:
                    try:
                        raw = args[1] if len(args) >= 2 else kwargs.get("timeout")
                        if raw is None:
                            timeout = None
                            missing: tuple[str, ...] = ("connect", "read")
                        else:
                            if isinstance(raw, tuple):
                                timeout = Timeout(connect=raw[0], read=raw[1])
                            elif isinstance(raw, Timeout):
                                timeout = raw
                            else:
                                timeout = Timeout(connect=raw, read=raw)
                            missing = timeout_missing(timeout)
                        if missing or run is not None:
                            host = host_of(request.url)
                            call = checker.begin(
                                run, str(request.method), host, missing, sys._getframe()
                            )
                            checked = True
                            if missing and checker.enforce:
                                default = checker.default_timeout
                                new = (
                                    (default, default)
                                    if timeout is None
                                    else enforced(timeout, default)
                                )
                                if len(args) >= 2:
                                    args = (args[0], new, *args[2:])
                                else:
                                    kwargs["timeout"] = new
                    except MissingTimeoutError:
                        raise
                    except Exception as exc:
                        errors.record("outbound.requests", exc)
                    if not checked:
                        return original(adapter, request, *args, **kwargs)
                    try:
                        return original(adapter, request, *args, **kwargs)
                    finally:
                        checker.end(run, call)
                finally:
                    nested.reset(token)

            return send

        self.patches.wrap(HTTPAdapter, "send", wrap)

    def uninstall(self) -> None:
        self.patches.undo()
