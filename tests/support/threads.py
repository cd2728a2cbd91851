"""Threads in tests: a job running in the background, a call that must not hang the suite, and
the line a job is about to wait on."""

from __future__ import annotations

import queue
import sys
import threading
from collections.abc import Callable
from typing import Any

from .waiting import wait_for

#: A safety net for calls and joins, far above any timeout the tests use.
GUARD = 60.0


def here() -> int:
    """The caller's line number (the line a job is about to wait on is the next one)."""
    return sys._getframe(1).f_lineno


def in_thread(target: Callable[[], Any]) -> threading.Thread:
    """``target`` started in a daemon thread (returned, for a test to join)."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def call_in_thread(function: Callable[[], Any], wait: float = GUARD) -> Any:
    """Run ``function`` in a thread and return what it returned or raised (as the value).

    The wait is a safety net, so that a call that hangs (the bug under test) fails the test
    instead of hanging the suite.
    """
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(function())
        except BaseException as exc:
            outcome.append(exc)

    thread = in_thread(target)
    thread.join(wait)
    assert not thread.is_alive(), f"the call did not return within {wait} s"
    return outcome[0]


def run_named(agent: Any, name: str) -> Any:
    """The run named ``name`` in flight in ``agent`` (waited for)."""
    return wait_for(
        f"run {name} in flight", lambda: next((r for r in agent.runs() if r.name == name), None)
    )


class JobThread:
    """A worker thread running queued jobs one after another (like a framework's worker)."""

    def __init__(self) -> None:
        self.jobs: queue.Queue[Callable[[], Any] | None] = queue.Queue()
        self.results: queue.Queue[tuple[str, Any, int]] = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="test-worker", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            try:
                self.results.put(("ok", job(), threading.get_ident()))
            except BaseException as exc:
                self.results.put(("raised", exc, threading.get_ident()))

    def result(self) -> tuple[str, Any, int]:
        return self.results.get(timeout=GUARD)

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=GUARD)


class TickCounter:
    """Counts the ticks of a watchdog from now on (its thread's and any a test makes), through
    its ``tick`` method: for a test that waits until the watchdog has looked a number of times.

    >>> ticks = TickCounter(agent.watchdog, monkeypatch)
    >>> wait_for("five ticks", lambda: ticks.count >= 5)
    """

    def __init__(self, watchdog: Any, monkeypatch: Any) -> None:
        self.count = 0
        tick = watchdog.tick

        def counted() -> None:
            tick()
            self.count += 1

        monkeypatch.setattr(watchdog, "tick", counted)
