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

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import errors
from ..core.patching import Patches
from ..core.run import current_run
from .base import Checker, MissingTimeoutError, fill, format_host, nested

if TYPE_CHECKING:
    from ..core.agent import Agent

LIBRARY = "urllib3"
HINT = "pass timeout=urllib3.Timeout(connect=..., read=...) to the call or to the PoolManager"


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


class Adapter:
    """Checks ``HTTPConnectionPool.urlopen`` (see the module docstring)."""

    name = LIBRARY

    def __init__(self, agent: Agent) -> None:
        self.checker = Checker(agent, LIBRARY, HINT)
        self.patches = Patches()

    def install(self) -> None:
        from urllib3.connectionpool import HTTPConnectionPool
        from urllib3.util.timeout import _DEFAULT_TIMEOUT, Timeout

        checker = self.checker

        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def urlopen(pool: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
                if nested.get():
                    return original(pool, method, url, *args, **kwargs)
                run = current_run()
                checked = False
                token = nested.set(True)
                try:
                    try:
                        if (
                            len(args) >= 6
                        ):  # body, headers, retries, redirect, assert_same_host, timeout
                            raw = args[5]
                        else:
                            raw = kwargs.get("timeout", _DEFAULT_TIMEOUT)
                        if raw is _DEFAULT_TIMEOUT:
                            timeout = pool.timeout
                        elif isinstance(raw, Timeout):
                            timeout = raw
                        else:
                            timeout = Timeout.from_float(raw)
                        missing = timeout_missing(timeout)
                        if missing or run is not None:
                            host = format_host(pool.host, pool.port)
                            call = checker.begin(run, str(method), host, missing, sys._getframe())
                            checked = True
                            if missing and checker.enforce:
                                new = enforced(timeout, checker.default_timeout)
                                if len(args) >= 6:
                                    args = (*args[:5], new, *args[6:])
                                else:
                                    kwargs["timeout"] = new
                    except MissingTimeoutError:
                        raise
                    except Exception as exc:
                        errors.record("outbound.urllib3", exc)
                    if not checked:
                        return original(pool, method, url, *args, **kwargs)
                    try:
                        return original(pool, method, url, *args, **kwargs)
                    finally:
                        checker.end(run, call)
                finally:
                    nested.reset(token)

            return urlopen

        self.patches.wrap(HTTPConnectionPool, "urlopen", wrap)

    def uninstall(self) -> None:
        self.patches.undo()
