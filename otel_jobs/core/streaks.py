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


# --- in snapshots and at the merge (core/multiprocess.py) ----------------------------------

LAST_SUCCESS = "otel_jobs_last_success_timestamp_seconds"
FAILURES = "otel_jobs_consecutive_failures"
EXPECTED_EVERY = "otel_jobs_run_expected_every_seconds"
_HELP = {
    LAST_SUCCESS: "End (Unix time) of the last run of the job that succeeded; absent before the first.",
    FAILURES: "Runs of the job ended in failure or timeout since its last success.",
    EXPECTED_EVERY: "How often the job must succeed (+Inf: not set).",
}

Key = tuple[str, str]  # (job_name, queue)


def encode(series: Iterable[Any]) -> list[list[Any]]:
    """The states worth a snapshot's space: series with an outcome or an expected_every."""
    out = []
    for s in series:
        state: State = s.state()
        if state.last_success is not None or state.failures or not math.isinf(state.expected_every):
            out.append([s.job_name, s.queue, state.to_json()])
    return out


def decode(data: Any, clean: Any) -> dict[Key, State]:
    """A snapshot's states, type-checked (``ValueError`` names what is wrong); ``clean``
    makes a label value valid (core/labels.py)."""
    if not isinstance(data, list):
        raise ValueError("streaks: not a list")
    out: dict[Key, State] = {}
    for item in data:
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[2], list)):
            raise ValueError("streaks: an entry is not [job_name, queue, state]")
        job_name, queue, raw = item
        if not (isinstance(job_name, str) and isinstance(queue, str) and len(raw) == 4):
            raise ValueError("streaks: an entry is not [job_name, queue, state]")
        last, failures, times, every = raw
        if not isinstance(times, list):
            raise ValueError(f"streaks: a state of {job_name!r} is not numbers")
        numbers = [*times, *(v for v in (last, every) if v is not None)]
        if not (
            all(_finite(n) for n in numbers)
            and isinstance(failures, int)
            and not isinstance(failures, bool)
            and 0 <= failures
            and len(numbers) <= KEEP + 2
        ):
            raise ValueError(f"streaks: a state of {job_name!r} is not numbers")
        out[(clean(job_name), clean(queue))] = State.from_json(raw)
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def apply(families: dict[str, Any], states: dict[Key, list[State]]) -> None:
    """Set the three gauges of merged ``families`` (core/multiprocess.py's form) from the
    processes' ``states`` of each series, merged (a series absent from ``states`` keeps its
    samples)."""
    for name in (LAST_SUCCESS, FAILURES, EXPECTED_EVERY):
        if name not in families:
            families[name] = {"name": name, "type": "gauge", "help": _HELP[name], "samples": {}}
    for (job_name, queue), views in states.items():
        merged = merge(views)
        labels = (("job_name", job_name), ("queue", queue))
        last = families[LAST_SUCCESS]["samples"]
        if merged.last_success is None:
            last.pop((LAST_SUCCESS, labels), None)
        else:
            last[(LAST_SUCCESS, labels)] = merged.last_success
        families[FAILURES]["samples"][(FAILURES, labels)] = float(merged.failures)
        families[EXPECTED_EVERY]["samples"][(EXPECTED_EVERY, labels)] = merged.expected_every
