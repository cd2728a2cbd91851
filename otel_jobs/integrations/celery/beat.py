"""Celery beat on the schedule gauges: ``celery beat``, and beat embedded in ``worker -B``.

Call ``otel_jobs.instrument()`` where the app is defined (both ``celery -A proj beat`` and the
workers import it): the beat process then serves ``/metrics`` with, per beat entry
(:mod:`otel_jobs.core.schedules`; ``job_name`` is the entry's task, as the workers name its
runs, ``schedule`` the entry's name):

* next run: when the entry is due next, as beat computes it (``schedule.remaining_estimate``
  from the entry's ``last_run_at``); it stays in the past while beat is stuck;
* last sent: when beat's ``apply_async`` last returned for the entry (the message was sent);
* interval: a ``schedule``'s ``run_every``; for a ``crontab`` (or any other schedule) the gap
  between its next two due times.

Beat's schedule lives in a store (a shelve file for the default ``PersistentScheduler``) that
only beat's own thread may touch, so the entries are read in that thread: after every
``Scheduler.tick`` (a few reads per entry, once per tick) into a snapshot that the collection
reads. ``Scheduler.tick`` and ``Scheduler.apply_async`` are patched on beat's base class, so
custom schedulers that inherit them (django-celery-beat's) are covered; one that overrides
``tick`` is read only when it calls the base method. Embedded with ``worker -B`` under the
prefork pool, beat is a process of its own, forked from the worker: its gauges reach the
worker's ``/metrics`` like a pool child's. The workers' runs of beat's tasks carry no
``expected_every``: the alerts take the entry's interval.
"""

from __future__ import annotations

import time
import weakref
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ...core import errors
from ...core.patching import Patches
from ...core.schedules import Entry, Schedules, gap

if TYPE_CHECKING:
    from ...core.agent import Agent


class BeatHooks:
    """The two patches of beat's ``Scheduler``, recording into ``agent`` while it runs;
    :meth:`uninstall` undoes them."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._patches = Patches()
        # scheduler -> (the agent's Schedules it feeds, its entries as of its last tick)
        self._beats: weakref.WeakKeyDictionary[Any, tuple[Schedules, list[Entry]]] = (
            weakref.WeakKeyDictionary()
        )

    def install(self) -> None:
        from celery.beat import Scheduler

        self._patches.wrap(Scheduler, "tick", self._patch_tick)
        self._patches.wrap(Scheduler, "apply_async", self._patch_apply_async)

    def uninstall(self) -> None:
        self._patches.undo()
        self._beats.clear()

    def _patch_tick(self, original: Any) -> Any:
        def tick(scheduler: Any, *args: Any, **kwargs: Any) -> Any:
            delay = original(scheduler, *args, **kwargs)
            if not self.agent.stopped:
                with errors.guard("integration.celery.beat"):
                    self._snapshot(scheduler, self.agent.telemetry.schedules)
            return delay

        return tick

    def _patch_apply_async(self, original: Any) -> Any:
        def apply_async(scheduler: Any, entry: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(scheduler, entry, *args, **kwargs)
            if not self.agent.stopped:
                with errors.guard("integration.celery.beat"):
                    self.agent.telemetry.schedules.sent(str(entry.task), str(entry.name))
            return result

        return apply_async

    def _snapshot(self, scheduler: Any, schedules: Schedules) -> None:
        """Read beat's entries (in beat's thread) for the next collections."""
        now = time.time()
        entries = [_entry(entry, now) for entry in list(scheduler.schedule.values())]
        beats = self._beats
        held = beats.get(scheduler)
        if held is None or held[0] is not schedules:
            ref = weakref.ref(scheduler)

            def source() -> list[Entry]:
                found = beats.get(ref()) if ref() is not None else None
                return found[1] if found is not None else []

            schedules.add_source(source)
        beats[scheduler] = (schedules, entries)


def _entry(entry: Any, now: float) -> Entry:
    schedule = entry.schedule
    remaining = schedule.remaining_estimate(entry.last_run_at)
    due = now + remaining.total_seconds()
    run_every = getattr(schedule, "run_every", None)
    if isinstance(run_every, timedelta) and type(schedule).__name__ == "schedule":
        interval: float | None = run_every.total_seconds()
    else:
        # remaining_estimate(X) is "the next due time after X" minus now; a second past the
        # next due time (crontabs have minutes, beat's own clock reads drift by microseconds).
        after = schedule.now() + remaining + timedelta(seconds=1)
        following = now + schedule.remaining_estimate(after).total_seconds()
        interval = gap(due, None, following)
        if interval is not None:  # calendar schedules have minutes: drop the clock reads' drift
            interval = float(round(interval))
    return Entry(str(entry.task), str(entry.name), due, interval)
