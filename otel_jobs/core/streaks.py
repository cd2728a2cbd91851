"""When a job last succeeded and how many times it has failed since, across forked processes.

Each :class:`~otel_jobs.core.telemetry.Series` keeps, for its ``(job_name, queue)`` in this
process, the Unix time of the last run that ended in success and the failures (outcomes
``failure`` and ``timeout``; a ``retry`` is an attempt, not the job's failure) since then, with
the end times of the latest :data:`KEEP` of them. They are exported as
``otel_jobs_last_success_timestamp_seconds`` and ``otel_jobs_consecutive_failures``.

A worker whose runs happen in forked children (RQ forks a work horse per job, Celery's prefork
pool) must show the streak of the job, not of one child: a horse that fails once and exits
holds a streak of one, and the next horse starts from nothing. Each child's snapshot therefore
carries its :class:`State` per series (see :mod:`otel_jobs.core.multiprocess`), and the process
serving ``/metrics`` combines them with :func:`merge`: the last success is the latest of all,
and the streak counts the failures, of any process, that ended after it. A dead child's state is
folded into an archive the same way (its gauges would otherwise vanish with it).

Exact while no process has more than :data:`KEEP` failures in a row that straddle another
process's success (their older failures are then counted as if they came after it). The values
are only read and merged at collection, never on a run's path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

#: Failure end times kept per series and per process, for merging streaks across processes.
KEEP = 16

#: Outcomes that extend a streak; ``success`` ends it; ``retry`` and ``cancelled`` leave it.
STREAK_OUTCOMES = frozenset(("failure", "timeout"))


class State(NamedTuple):
    """One process's view of a series: last success, failures since, their latest end times."""

    last_success: float | None
    failures: int
    times: tuple[float, ...]
    expected_every: float = math.inf

    def to_json(self) -> list[Any]:
        inf = math.isinf(self.expected_every)
        return [
            self.last_success,
            self.failures,
            list(self.times),
            None if inf else self.expected_every,
        ]

    @classmethod
    def from_json(cls, data: Any) -> State:
        last, failures, times, every = data
        return cls(
            float(last) if last is not None else None,
            int(failures),
            tuple(float(t) for t in times),
            float(every) if every is not None else math.inf,
        )


def merge(states: Iterable[State]) -> State:
    """The combined state of several processes' views of one series (module docstring)."""
    states = list(states)
    successes = [s.last_success for s in states if s.last_success is not None]
    last = max(successes) if successes else None
    after: list[float] = []
    hidden = 0
    for s in states:
        kept = [t for t in s.times if last is None or t > last]
        after.extend(kept)
        older = s.failures - len(s.times)  # failures before its oldest kept one
        if older > 0 and (last is None or s.last_success == last or (kept and s.times[0] > last)):
            hidden += older
    after.sort()
    every = min((s.expected_every for s in states), default=math.inf)
    return State(last, len(after) + hidden, tuple(after[-KEEP:]), every)
