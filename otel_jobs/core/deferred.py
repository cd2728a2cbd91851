"""Work the agent does a little later, off the job's thread: nothing is dropped at exit.

An adapter that must wait before it can decide (did a dying pool child export the run's span,
or must this process emit one?) hands a check to :meth:`Deferred.call_later`. Checks run on one
daemon thread, started at the first call; a check returns None when it is done, or the number
of seconds after which to run it again. When the agent stops or the process exits, every
pending check runs at once with ``final=True`` and must decide then.

A forked child starts with no pending checks: its parent's are the parent's to run.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable

from . import errors

#: A check: called with ``final`` (the agent is stopping: decide now); returns None when
#: done, or the delay in seconds before it runs again.
Check = Callable[[bool], "float | None"]


class Deferred:
    """Checks run later on a thread of their own (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Check]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None
        self._closed = False

    def call_later(self, delay: float, check: Check) -> None:
        """Run ``check(False)`` in ``delay`` seconds (and again while it asks to)."""
        with self._lock:
            if self._closed:
                run_now = True
            else:
                run_now = False
                due = time.monotonic() + max(0.0, delay)
                heapq.heappush(self._heap, (due, next(self._order), check))
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._loop, name="otel-jobs-deferred", daemon=True
                    )
                    self._thread.start()
                self._lock.notify()
        if run_now:  # stopping or stopped: decide at once
            self._call(check, final=True)

    def run_all(self) -> None:
        """Run every pending check now with ``final=True``; later calls run at once."""
        with self._lock:
            self._closed = True
            checks = [check for _, _, check in sorted(self._heap)]
            self._heap.clear()
            self._lock.notify()
        for check in checks:
            self._call(check, final=True)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)  # a check it was running when closed: let it decide too

    def after_fork_in_child(self) -> None:
        self._lock = threading.Condition(threading.Lock())
        self._heap = []
        self._thread = None

    def _loop(self) -> None:
        while True:
            with self._lock:
                while not self._closed and (not self._heap or self._heap[0][0] > time.monotonic()):
                    timeout = self._heap[0][0] - time.monotonic() if self._heap else None
                    self._lock.wait(timeout)
                if self._closed:
                    return
                _, _, check = heapq.heappop(self._heap)
            again = self._call(check, final=False)
            if again is not None:
                with self._lock:
                    if not self._closed:
                        due = time.monotonic() + max(0.0, again)
                        heapq.heappush(self._heap, (due, next(self._order), check))
                        continue
                self._call(check, final=True)  # closed while it ran: decide now

    @staticmethod
    def _call(check: Check, *, final: bool) -> float | None:
        try:
            return check(final)
        except Exception as exc:
            errors.record("deferred", exc)
            return None
