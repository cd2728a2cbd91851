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
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core import errors
from ..core.patching import Patches
from ..core.run import current_run
from .base import Checker, MissingTimeoutError, host_of, nested

if TYPE_CHECKING:
    from ..core.agent import Agent

LIBRARY = "urllib"
HINT = "pass timeout= to urlopen() / opener.open(), or call socket.setdefaulttimeout() at start-up"
_LOCAL_SCHEMES = ("file", "data")
_MISSING = ("connect", "read")


def _describe(fullurl: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
    """The URL and method of ``open(fullurl, data=None, ...)``."""
    if isinstance(fullurl, str):
        data = args[0] if args else kwargs.get("data")
        return fullurl, "GET" if data is None else "POST"
    return fullurl.full_url, fullurl.get_method()


class Adapter:
    """Checks ``OpenerDirector.open`` (see the module docstring)."""

    name = LIBRARY

    def __init__(self, agent: Agent) -> None:
        self.checker = Checker(agent, LIBRARY, HINT)
        self.patches = Patches()

    def install(self) -> None:
        import urllib.request

        checker = self.checker
        default_sentinel = socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]

        def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
            def open(opener: Any, fullurl: Any, *args: Any, **kwargs: Any) -> Any:
                if nested.get():
                    return original(opener, fullurl, *args, **kwargs)
                run = current_run()
                checked = False
                token = nested.set(True)
                try:
                    try:
                        timeout = (
                            args[1] if len(args) >= 2 else kwargs.get("timeout", default_sentinel)
                        )
                        if timeout is default_sentinel:
                            timeout = socket.getdefaulttimeout()
                        missing = _MISSING if timeout is None else ()
                        if missing or run is not None:
                            url, method = _describe(fullurl, args, kwargs)
                            if url.partition(":")[0].lower() not in _LOCAL_SCHEMES:
                                call = checker.begin(
                                    run, method, host_of(url), missing, sys._getframe()
                                )
                                checked = True
                            if checked and missing and checker.enforce:
                                if len(args) >= 2:
                                    args = (args[0], checker.default_timeout, *args[2:])
                                else:
                                    kwargs["timeout"] = checker.default_timeout
                    except MissingTimeoutError:
                        raise
                    except Exception as exc:
                        errors.record("outbound.urllib", exc)
                    if not checked:
                        return original(opener, fullurl, *args, **kwargs)
                    try:
                        return original(opener, fullurl, *args, **kwargs)
                    finally:
                        checker.end(run, call)
                finally:
                    nested.reset(token)

            return open

        self.patches.wrap(urllib.request.OpenerDirector, "open", wrap)

    def uninstall(self) -> None:
        self.patches.undo()
