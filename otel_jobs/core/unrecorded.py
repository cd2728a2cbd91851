"""Runs whose end could not be recorded where they ended, for lack of stack, recorded later.

A job that recurses until Python's recursion limit ends its run with hardly any stack left:
recording the end there (the counters, the span's outcome, its end) could fail halfway. So
:meth:`otel_jobs.core.run.Run.finish` leaves such a run here, with the time it ended, and
:func:`record_unrecorded` records it from a shallower frame: the next run's finish, the
watchdog's tick, ``uninstrument()`` or the exit flush.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from . import errors

if TYPE_CHECKING:
    from .run import Run

#: Runs finished without stack left to record them (see Run.finish), recorded later.
_unrecorded: list[tuple[Run, str, BaseException | None, bool, tuple[float, int]]] = []
_recording = threading.RLock()


def record_unrecorded() -> None:
    """Record the runs whose :meth:`Run.finish` ran out of stack, with the time they ended.

    Called by the next run's finish, the watchdog's tick (another thread, every
    ``OTEL_JOBS_WATCHDOG_INTERVAL``), ``uninstrument()`` and the exit flush, so that a
    recursive job that hits the recursion limit leaves no span unended and no run in flight.
    """
    # One thread at a time, so that a finish that returns has every earlier one recorded, also
    # those the watchdog's thread was recording meanwhile.
    with _recording:
        while _unrecorded:
            item = _unrecorded.pop()
            try:
                item[0]._agent.finish_run(*item)
            except RecursionError:
                _unrecorded.append(item)
                return
            except Exception as err:
                errors.record("run.finish", err)


def _after_fork_in_child() -> None:
    global _recording
    _recording = threading.RLock()
    _unrecorded.clear()  # the parent's runs, recorded by the parent


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
