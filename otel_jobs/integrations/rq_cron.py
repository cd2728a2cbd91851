"""RQ's cron scheduler (``rq cron``, ``rq.cron.CronScheduler``, RQ 2.5 and later) on the schedule gauges.

Installed by the RQ integration (:mod:`otel_jobs.integrations.rq`) when the installed RQ has a
``rq.cron`` module; with an older RQ it does nothing. Call ``otel_jobs.instrument()`` in the
configuration file ``rq cron`` loads (or before ``CronScheduler.start()`` in your own script):
that process then serves ``/metrics`` with, per registered cron job (:mod:`otel_jobs.core.schedules`;
``job_name`` is the function's ``module.name``, as the worker names its runs, ``schedule`` the
cron job's ``name``):

* next run: the cron job's ``next_enqueue_time`` as the scheduler holds it (an interval job that
  never ran is due at once: no series until its first enqueue);
* last sent: its ``latest_enqueue_time``, which RQ keeps itself;
* interval: ``interval=``, or for ``cron=`` the gap between its next two due times (croniter, as
  RQ computes them).

How: ``CronScheduler.enqueue_jobs`` (called at every turn of the scheduler's loop) is patched to
make the scheduler's cron jobs readable when the metrics are collected; the patch is undone with
the RQ integration's. The scheduler's state is read, never changed.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..core import errors
from ..core.patching import Patches
from ..core.schedules import Entry, Schedules, gap, unix

if TYPE_CHECKING:
    from ..core.agent import Agent

# scheduler -> the Schedules (of the agent in force) that reads it
_registered: weakref.WeakKeyDictionary[Any, Schedules] = weakref.WeakKeyDictionary()


def patch(patches: Patches, agent: Agent) -> None:
    """Patch RQ's ``CronScheduler`` if the installed RQ has one, to record into ``agent`` while it
    runs (undone with ``patches``)."""
    try:
        from rq.cron import CronScheduler
    except ImportError:  # RQ before 2.5
        return

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def enqueue_jobs(scheduler: Any, *args: Any, **kwargs: Any) -> Any:
            if not agent.stopped and _registered.get(scheduler) is not agent.telemetry.schedules:
                with errors.guard("integration.rq"):
                    agent.start_serving()  # rq cron: its entries on /metrics
                    ref = weakref.ref(scheduler)
                    agent.telemetry.schedules.add_source(lambda: _entries(ref()))
                    _registered[scheduler] = agent.telemetry.schedules
            return original(scheduler, *args, **kwargs)

        return enqueue_jobs

    patches.wrap(CronScheduler, "enqueue_jobs", wrap)


def _entries(scheduler: Any) -> list[Entry]:
    if scheduler is None:
        return []
    out = []
    for cron_job in scheduler.get_jobs():
        next_run = cron_job.next_enqueue_time
        if next_run is not None and next_run.year == datetime.max.year:  # "never" to RQ
            next_run = None
        out.append(
            Entry(
                cron_job.func_name,
                cron_job.name,
                unix(next_run),
                _interval(cron_job, next_run),
                unix(cron_job.latest_enqueue_time),
            )
        )
    return out


def _interval(cron_job: Any, next_run: datetime | None) -> float | None:
    if cron_job.interval:
        return float(cron_job.interval)
    if not cron_job.cron or next_run is None:
        return None
    from croniter import croniter

    # RQ matches cron fields in local time: so does this.
    local = next_run.astimezone().replace(tzinfo=None)
    following = croniter(cron_job.cron, local).get_next(datetime)
    after = datetime.fromtimestamp(following.timestamp(), timezone.utc)
    return gap(next_run.timestamp(), None, after.timestamp())
