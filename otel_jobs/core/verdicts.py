"""The watchdog's decisions, as functions of a run's recorded times and a ``now``: no thread, no
clock of their own, no I/O, so that ``tests/core/test_verdicts.py`` drives them with a
controlled clock, as dramatiq tests its time limits.

* :func:`reason_of`: the verdict a run deserves now (``max_duration`` first, then
  ``no_heartbeat``, then ``loop_blocked``), or None;
* :func:`blocked_loops`: which run of a blocked event loop gets the ``loop_blocked`` verdict;
* :func:`split_nested`: new verdicts of runs stuck inside other runs (nested ``@job`` runs, a
  recursive job) apart from the innermost ones, which alone are diagnosed and logged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop_probe import Blocked
    from .run import Run


def reason_of(run: Run, now: float, loop_blocked: bool = False) -> str | None:
    """The verdict ``run`` deserves at monotonic time ``now``: a deadline first (a run already
    stalled keeps that verdict while its loop is blocked too), else its blocked loop, else None."""
    if now - run.start_mono > run.max_duration:
        return "max_duration"
    if now - run.last_beat > run.heartbeat_timeout:
        return "no_heartbeat"
    if loop_blocked:
        return "loop_blocked"
    return None


def due_before(run: Run, horizon: float) -> bool:
    """Whether a deadline of ``run`` passes before monotonic time ``horizon`` (the next tick)."""
    return (
        run.start_mono + run.max_duration <= horizon
        or run.last_beat + run.heartbeat_timeout <= horizon
    )


def blocked_loops(
    blocked: dict[int, Blocked], timeout: float, task_running: Callable[[Any], bool]
) -> tuple[dict[int, Blocked], dict[int, Blocked]]:
    """``(run key -> its blocked loop, for every run on one; run key -> the loop it gets a
    loop_blocked verdict for)``: the run whose task holds the loop (``task_running(task)``), else
    the oldest on it."""
    on_blocked: dict[int, Blocked] = {}
    verdicts: dict[int, Blocked] = {}
    for entry in blocked.values():
        entry.threshold = timeout
        entry.culprit = next(
            (r for r in entry.runs if r.task is not None and task_running(r.task)), None
        )
        for run in entry.runs:
            on_blocked[run.key] = entry
        if entry.seconds > timeout and entry.runs:
            chosen = entry.culprit or min(entry.runs, key=lambda r: r.start_mono)
            verdicts[chosen.key] = entry
    return on_blocked, verdicts


#: Verdicts that an enclosing run shares with the run stuck inside it.
_NESTABLE = ("no_heartbeat", "max_duration")


def split_nested(
    fresh: list[tuple[Run, str]],
) -> tuple[list[tuple[Run, str]], list[tuple[Run, str, Run]]]:
    """Split new verdicts: those of innermost runs, and those of runs that enclose one of them
    (``run.parent``, within one thread or task), each with the innermost run it encloses.

    In start order, an inner run comes after the runs enclosing it: walked from the last, each
    chain of parents is visited once (a recursive job 500 runs deep costs 500 steps).
    """
    candidates = {run.key for run, reason in fresh if reason in _NESTABLE}
    if len(candidates) < 2:
        return fresh, []
    cover_of: dict[int, Run] = {}
    visited: set[int] = set()
    for run, _ in reversed(fresh):
        if run.key not in candidates or run.key in cover_of:
            continue
        parent = run.parent
        while parent is not None and parent.key not in visited:
            visited.add(parent.key)
            if parent.key in candidates:
                cover_of[parent.key] = run
            parent = parent.parent
    if not cover_of:
        return fresh, []
    inner = [(run, reason) for run, reason in fresh if run.key not in cover_of]
    outer = [(run, reason, cover_of[run.key]) for run, reason in fresh if run.key in cover_of]
    return inner, outer
