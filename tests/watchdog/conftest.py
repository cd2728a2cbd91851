"""Fixtures of the watchdog tests: the agent, its watchdog ticking every 0.1 s, and an asyncio
loop running in a thread of its own (``LOOP_THREAD``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.watchdog.support import LOOP_THREAD, loop_in_thread


@pytest.fixture
def agent(instrumented: Callable[..., Any]) -> Any:
    """The agent, instrumented for the test, its watchdog thread ticking every 0.1 s."""
    return instrumented(watchdog_interval=0.1)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """A new asyncio loop running in the thread ``LOOP_THREAD``, stopped after the test."""
    with loop_in_thread(LOOP_THREAD) as (loop, _):
        yield loop
