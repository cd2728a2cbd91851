"""Helpers of the watchdog tests: an asyncio loop in a thread of its own, a port forwarder; the
polling (``wait_for``), ``here`` and ``run_named`` are tests.support's, importable from here
too."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from tests.support.threads import here, run_named
from tests.support.waiting import wait_for

__all__ = [
    "DEADLINE",
    "LOOP_THREAD",
    "here",
    "loop_in_thread",
    "run_named",
    "wait_for",
]

DEADLINE = 60.0
#: The name of the thread running the ``loop`` fixture's asyncio loop.
LOOP_THREAD = "test-loop"


@contextmanager
def loop_in_thread(name: str) -> Iterator[tuple[asyncio.AbstractEventLoop, threading.Thread]]:
    """A new asyncio loop running forever in a daemon thread named ``name`` (for the runs a
    test starts on it with ``run_coroutine_threadsafe``); stopped and closed at the end."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name=name, daemon=True)
    thread.start()
    try:
        yield loop, thread
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(DEADLINE)
        loop.close()
