"""What the outbound tests read back, as one namespace (``from tests.outbound import probe``):
the call site a test's next line is (``probe.here()``), the agent's ``/metrics``, the
no-timeout counter (``probe.flagged(**labels)``), otel-jobs' timeout WARNINGs, whether a call
reached the silent server, and ``probe.in_thread(fn)``."""

from __future__ import annotations

import inspect
import logging
import socket
import time

import pytest

import otel_jobs
from tests.support import Samples, scrape
from tests.support.servers import SilentServer
from tests.support.threads import call_in_thread as in_thread

__all__ = [
    "NO_TIMEOUT",
    "flagged",
    "here",
    "in_thread",
    "metrics",
    "nothing_reached",
    "warnings_of",
]

NO_TIMEOUT = "otel_jobs_outbound_calls_without_timeout_total"


def here(offset: int = 1) -> str:
    """``module:function:line`` of the caller's line plus ``offset`` (the call under test)."""
    frame = inspect.currentframe()
    assert frame is not None and frame.f_back is not None
    caller = frame.f_back
    code = caller.f_code
    function = getattr(code, "co_qualname", code.co_name)
    return f"{caller.f_globals['__name__']}:{function}:{caller.f_lineno + offset}"


def metrics() -> Samples:
    url = otel_jobs.metrics_url()
    assert url is not None
    return scrape(url)


def flagged(**labels: str) -> float:
    """The no-timeout counter summed over the series matching ``labels``."""
    return metrics().total(NO_TIMEOUT, **labels)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "otel_jobs" and r.levelno == logging.WARNING and "timeout" in r.getMessage()
    ]


def nothing_reached(server: SilentServer) -> bool:
    """Whether no connection reached ``server`` before this check (it accepts in order)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10):
        deadline = time.monotonic() + 30
        while server.connections == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
    return server.connections == 1 and server.received == 0
