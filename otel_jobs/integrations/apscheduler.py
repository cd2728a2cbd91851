"""APScheduler 3.x: every execution of a scheduled job becomes one otel-jobs run, and every
run that never started (missed, or skipped at ``max_instances``) is counted.

For users (where to call ``instrument()``, what a run records, thresholds, the skips, limits):
docs/frameworks/apscheduler.md; the schedule gauges: docs/scheduled-jobs.md. For a code reader:

How it hooks APScheduler, and why: schedulers are created by your code, so otel-jobs patches one
method shared by every executor, ``apscheduler.executors.base.BaseExecutor.submit_job``, and the
loop method of every scheduler, ``BaseScheduler._process_jobs``: after each call (at start, at
each due time, and whenever a job is added, changed or paused) otel-jobs reads that scheduler's
jobs, in its own thread, for the next collections of the schedule gauges
(:mod:`otel_jobs.core.schedules`; recurring triggers only). On a scheduler's first submission it
adds a listener (``add_listener``) for the missed and max-instances events, so schedulers
started before ``instrument()`` are covered too. Each submission hands the executor a thin view
of the job whose ``func`` is wrapped (the stored ``Job`` is not modified); the executor calls it
in the thread, or for a coroutine function in the asyncio task, that runs the job, so the run is
current there for ``otel_jobs.heartbeat()``, the watchdog and the outbound-call checks.
``uninstrument()`` restores ``submit_job`` and ``_process_jobs`` and removes the listeners.
A ``ProcessPoolExecutor`` pickles the job to another process: its executions are not runs.
APScheduler 4 (a different API) is not hooked: ``instrument()`` logs a warning.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import weakref
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

import apscheduler

from ..core import errors
from ..core.patching import Patches
from ..core.run import Run, classify
from ..core.schedules import Entry, gap, unix
from .base import Integration as _Base

if TYPE_CHECKING:
    from ..core.agent import Agent

logger = logging.getLogger("otel_jobs")

_MAX_REMEMBERED_JOBS = 10_000


class Integration(_Base):
    """The APScheduler adapter (see the module docstring)."""

    name = "apscheduler"

    def __init__(self, agent: Any) -> None:
        super().__init__(agent)
        self._patches = Patches()
        self._schedulers: weakref.WeakSet[Any] = weakref.WeakSet()
        # job id -> (job name, executor alias): the events only carry the job id, and a missed
        # date-triggered job has already left its job store when its event arrives.
        self._jobs: dict[str, tuple[str, str]] = {}
        self._lock = threading.Lock()
        # scheduler -> the function that stops reading its jobs for the schedule gauges
        self._sources: weakref.WeakKeyDictionary[Any, Callable[[], None]] = (
            weakref.WeakKeyDictionary()
        )
        self._last_due: dict[str, float] = {}  # job id -> due time of its last submitted run
        self._snapshots: weakref.WeakKeyDictionary[Any, list[Entry]] = weakref.WeakKeyDictionary()

    def install(self) -> None:
        if int(apscheduler.version_info[0]) >= 4:
            logger.warning(
                "otel-jobs: APScheduler %s is installed; only APScheduler 3.x is hooked, so its "
                "jobs are not recorded (mark them with @otel_jobs.job instead)",
                apscheduler.__version__,
            )
            return
        from apscheduler.executors.base import BaseExecutor
        from apscheduler.schedulers.base import BaseScheduler

        self._patches.wrap(BaseExecutor, "submit_job", self._patch_submit_job)
        self._patches.wrap(BaseScheduler, "_process_jobs", self._patch_process_jobs)

    def uninstall(self) -> None:
        self._patches.undo()
        for scheduler in list(self._schedulers):
            with errors.guard("integration.apscheduler"):
                scheduler.remove_listener(self._on_event)
        self._schedulers = weakref.WeakSet()
        self._jobs.clear()
        for remove in list(self._sources.values()):
            remove()
        self._sources = weakref.WeakKeyDictionary()
        self._snapshots = weakref.WeakKeyDictionary()
        self._last_due.clear()

    def _patch_process_jobs(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def _process_jobs(scheduler: Any) -> Any:
            wait = original(scheduler)
            if self.active:
                with errors.guard("integration.apscheduler"):
                    self.agent.start_serving()  # a running scheduler: this process runs jobs
                    # Read in the scheduler's own thread, once per wakeup (a job added, changed
                    # or due): the collection never waits on the scheduler's lock or job store.
                    self._snapshots[scheduler] = self._entries(scheduler)
                    if scheduler not in self._sources:
                        ref = weakref.ref(scheduler)
                        self._sources[scheduler] = self.agent.telemetry.schedules.add_source(
                            lambda: self._snapshots.get(ref(), []) if ref() is not None else []
                        )
            return wait

        return _process_jobs

    def _entries(self, scheduler: Any) -> list[Entry]:
        """The scheduler's recurring jobs as the schedule gauges show them (core.schedules)."""
        from apscheduler.triggers.date import DateTrigger

        if scheduler is None:
            return []
        out = []
        for job in scheduler.get_jobs():
            if isinstance(job.trigger, DateTrigger):
                continue
            next_run = job.next_run_time
            out.append(
                Entry(
                    str(job.name or job.id),
                    str(job.id),
                    unix(next_run),
                    _interval(job.trigger, next_run, self._last_due.get(job.id)),
                )
            )
        return out

    def _patch_submit_job(self, original: Callable[..., None]) -> Callable[..., None]:
        def submit_job(executor: Any, job: Any, run_times: list[datetime]) -> None:
            if not self.active:
                return original(executor, job, run_times)
            execution = job
            with errors.guard("integration.apscheduler"):
                execution = self._prepare(executor, job, run_times)
            return original(executor, execution, run_times)

        return submit_job

    def _prepare(self, executor: Any, job: Any, run_times: list[datetime]) -> Any:
        scheduler = executor._scheduler
        if scheduler is not None and scheduler not in self._schedulers:
            from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

            scheduler.add_listener(self._on_event, EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
            self._schedulers.add(scheduler)
        name, queue = str(job.name or job.id), str(job.executor)
        with self._lock:
            self._jobs.pop(job.id, None)
            self._jobs[job.id] = (name, queue)
            if len(self._jobs) > _MAX_REMEMBERED_JOBS:
                del self._jobs[next(iter(self._jobs))]
            if run_times:
                self._last_due[job.id] = run_times[-1].timestamp()
                if len(self._last_due) > _MAX_REMEMBERED_JOBS:
                    del self._last_due[next(iter(self._last_due))]
        self.agent.telemetry.schedules.sent(name, str(job.id))
        from apscheduler.executors.pool import ProcessPoolExecutor

        if isinstance(executor, ProcessPoolExecutor):
            return job  # pickled to another process: see the module docstring
        return _Execution(self.agent, job, name, queue, run_times)

    def _on_event(self, event: Any) -> None:
        with errors.guard("integration.apscheduler"):
            from apscheduler.events import EVENT_JOB_MISSED

            if not self.active:
                return
            agent = self.agent
            name, queue = self._jobs.get(event.job_id) or (str(event.job_id), "default")
            reason = "missed" if event.code == EVENT_JOB_MISSED else "max_instances"
            agent.telemetry.record_skipped(agent.telemetry.series(name, queue), reason)


class _Execution:
    """The job as one executor submission sees it: the same job, with ``func`` wrapped."""

    __slots__ = ("_agent", "_job", "_name", "_queue", "_pending", "func")

    def __init__(
        self, agent: Agent, job: Any, name: str, queue: str, run_times: list[datetime]
    ) -> None:
        self._agent = agent
        self._job = job
        self._name = name
        self._queue = queue
        self._pending = list(run_times)
        self.func = _wrap(job.func, self._start)

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self._job, attribute)

    def __str__(self) -> str:
        return str(self._job)

    def __repr__(self) -> str:
        return repr(self._job)

    def _scheduled_time(self) -> datetime | None:
        """The run time this call executes (APScheduler calls ``func`` once per run time kept)."""
        # Run times already missed were skipped without a call; skip them the same way.
        grace = self._job.misfire_grace_time
        now = datetime.now(timezone.utc)
        pending = self._pending
        while len(pending) > 1:
            run_time = pending.pop(0)
            if grace is None or now - run_time <= timedelta(seconds=grace):
                return run_time
        return pending.pop(0) if pending else None

    def _start(self) -> Run | None:
        agent = self._agent
        if agent.stopped:  # uninstrumented since the job was submitted
            return None
        scheduled = self._scheduled_time()
        run = agent.start_run(
            self._name,
            queue=self._queue,
            job_id=str(self._job.id),
            framework="apscheduler",
            enqueued_at=scheduled.timestamp() if scheduled is not None else None,
            expected_every=_interval(self._job.trigger, scheduled, None),
        )
        run.activate()
        return run


def _interval(trigger: Any, due: datetime | None, previous: float | None) -> float | None:
    """A trigger's interval; for a calendar trigger, the gap to ``due`` from ``previous`` (the
    due time before it, if known) or else from ``due`` to the fire time after it."""
    from apscheduler.triggers.interval import IntervalTrigger

    if isinstance(trigger, IntervalTrigger):
        return float(trigger.interval_length)
    if due is None:
        return None
    try:
        following = trigger.get_next_fire_time(due, due + timedelta(microseconds=1))
    except Exception:  # a trigger of the application's own that cannot say
        following = None
    return gap(due.timestamp(), previous, unix(following))


def _wrap(func: Callable[..., Any], start: Callable[[], Run | None]) -> Callable[..., Any]:
    """``func`` as one run, in the thread or task that executes it."""

    def begin() -> Run | None:
        with errors.guard("integration.apscheduler"):
            return start()
        return None

    def end(run: Run, exc: BaseException | None) -> None:
        with errors.guard("integration.apscheduler"):
            try:
                run.finish(classify(exc), exc)
            finally:
                run.deactivate()

    target = func
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target):

        async def run_async(*args: Any, **kwargs: Any) -> Any:
            run = begin()
            if run is None:
                return await func(*args, **kwargs)
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                end(run, exc)
                raise
            end(run, None)
            return result

        return run_async

    def run_sync(*args: Any, **kwargs: Any) -> Any:
        run = begin()
        if run is None:
            return func(*args, **kwargs)
        try:
            result = func(*args, **kwargs)
        except BaseException as exc:
            end(run, exc)
            raise
        end(run, None)
        return result

    return run_sync
