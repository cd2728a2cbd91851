"""arq: every job an arq worker runs becomes one otel-jobs run.

For users (where to call ``instrument()``, what a run records, outcomes, queue wait, cron jobs,
what is not a run): docs/frameworks/arq.md. For a code reader:

How it hooks arq, and why: arq runs each job's coroutine in an asyncio task of its own, and that
task is where the run must be current, so that ``otel_jobs.heartbeat()`` inside the job finds
it and the watchdog can read the job's coroutine stack from ``run.task``. arq's
``on_job_start`` / ``on_job_end`` hooks run in a different task (the one that awaits the job)
and never see the job's exception, so they can neither activate the run nor tell a failure
from a timeout. otel-jobs therefore patches one method, ``arq.worker.Worker.run_job``: on a
worker's first job it swaps each entry of ``worker.functions`` for a copy whose coroutine is
wrapped (your ``Function`` / ``CronJob`` objects are not modified). The wrapper runs inside the
job's task, starts and activates the run, and finishes it with the outcome. ``uninstrument()``
restores ``Worker.run_job`` and puts each worker's original functions back; a wrapper still held
by a running job calls straight through once otel-jobs is uninstrumented.

Cron jobs: the worker is their scheduler, so it also exports the schedule gauges
(:mod:`otel_jobs.core.schedules`): ``Worker.run_cron`` is patched (a cron job whose
``next_run`` moved on was sent), and the gap between two due times is also each run's
``expected_every``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import functools
import weakref
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from arq.cron import CronJob
from arq.worker import Retry, RetryJob, Worker

from ..core import errors, shutdown
from ..core.patching import Patches
from ..core.run import classify
from ..core.schedules import Entry, gap, unix
from . import leases
from .base import Integration as _Base

if TYPE_CHECKING:
    from ..core.agent import Agent

_WRAPPED = "__otel_jobs_arq_original__"

# Set by the patched ``run_job`` in the task that runs one job; the job's own task inherits a copy
# of that context, so the wrapped coroutine finds the loop time at which ``run_job`` began.
_run_job_started: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "otel_jobs_arq_run_job_started", default=None
)


#: How to end arq's shutdown when a cancelled job does not end (a blocking call holds the event
#: loop or an executor thread, or the job swallows CancelledError): another signal only cancels
#: again.
FORCE_SHUTDOWN = (
    "arq cancels it (at once, or after job_completion_wait) and waits for it to end; a stalled run "
    "that does not end when cancelled keeps the worker from exiting, and another signal only "
    "cancels again: end the process with SIGKILL (another worker takes the job again once its "
    "in-progress key expires)."
)


class Integration(_Base):
    """The arq adapter (see the module docstring)."""

    name = "arq"

    def __init__(self, agent: Any) -> None:
        super().__init__(agent)
        self._patches = Patches()
        self._workers: weakref.WeakSet[Worker] = weakref.WeakSet()
        # worker -> the function that stops reading its cron jobs for the schedule gauges
        self._cron_sources: weakref.WeakKeyDictionary[Worker, Callable[[], None]] = (
            weakref.WeakKeyDictionary()
        )

    def install(self) -> None:
        self._patches.wrap(Worker, "run_job", self._patch_run_job)
        self._patches.wrap(Worker, "run_cron", self._patch_run_cron)
        self._patches.wrap(Worker, "main", self._patch_main)
        for handler in ("handle_sig", "handle_sig_wait_for_completion"):
            if hasattr(Worker, handler):
                self._patches.wrap(Worker, handler, self._patch_signal_handler)

    def uninstall(self) -> None:
        self._patches.undo()
        for worker in list(self._workers):
            with errors.guard("integration.arq"):
                _unwrap_functions(worker)
        self._workers = weakref.WeakSet()
        for remove in list(self._cron_sources.values()):
            remove()
        self._cron_sources = weakref.WeakKeyDictionary()

    def _patch_main(
        self, original: Callable[..., Awaitable[None]]
    ) -> Callable[..., Awaitable[None]]:
        # The worker's main coroutine (Worker.run and async_run): the process is a worker now.
        async def main(worker: Worker, *args: Any, **kwargs: Any) -> None:
            with errors.guard("integration.arq"):
                self.agent.start_serving()
            return await original(worker, *args, **kwargs)

        return main

    def _patch_signal_handler(self, original: Callable[..., Any]) -> Callable[..., Any]:
        # arq's SIGINT/SIGTERM handlers (run by its event loop): they cancel the jobs in
        # flight, now or after job_completion_wait, and the worker then waits for them to end.
        def handle_sig(worker: Worker, *args: Any, **kwargs: Any) -> Any:
            with errors.guard("integration.arq"):
                shutdown.begin(self.agent, "arq", FORCE_SHUTDOWN)
            return original(worker, *args, **kwargs)

        return handle_sig

    def _patch_run_cron(
        self, original: Callable[..., Awaitable[None]]
    ) -> Callable[..., Awaitable[None]]:
        async def run_cron(worker: Worker, *args: Any, **kwargs: Any) -> None:
            agent = self.agent
            if not self.active or not worker.cron_jobs:
                return await original(worker, *args, **kwargs)
            due = {}
            with errors.guard("integration.arq"):
                if worker not in self._cron_sources:
                    ref = weakref.ref(worker)
                    self._cron_sources[worker] = agent.telemetry.schedules.add_source(
                        lambda: _cron_entries(ref())
                    )
                due = {id(cj): cj.next_run for cj in worker.cron_jobs}
            await original(worker, *args, **kwargs)
            with errors.guard("integration.arq"):
                for cron_job in worker.cron_jobs:
                    before = due.get(id(cron_job))
                    if before is not None and cron_job.next_run != before:
                        agent.telemetry.schedules.sent(cron_job.name, cron_job.name)
                        setattr(cron_job, _PREVIOUS_DUE, before)

        return run_cron

    def _patch_run_job(
        self, original: Callable[..., Awaitable[None]]
    ) -> Callable[..., Awaitable[None]]:
        workers, agent = self._workers, self.agent

        async def run_job(worker: Worker, job_id: str, score: int) -> None:
            if agent.stopped:
                return await original(worker, job_id, score)
            with errors.guard("integration.arq"):
                if worker not in workers:
                    _wrap_functions(worker, agent)
                    workers.add(worker)
                _run_job_started.set(asyncio.get_running_loop().time())
            # run_job runs in a task of its own, so the value set above never leaks out of it.
            return await original(worker, job_id, score)

        return run_job


def _wrap_functions(worker: Worker, agent: Agent) -> None:
    for name, function in list(worker.functions.items()):
        if getattr(function.coroutine, _WRAPPED, None) is not None:
            continue
        traced: Any = _traced(worker, function, agent)
        worker.functions[name] = dataclasses.replace(function, coroutine=traced)


def _unwrap_functions(worker: Worker) -> None:
    for name, function in list(worker.functions.items()):
        original = getattr(function.coroutine, _WRAPPED, None)
        if original is not None:
            worker.functions[name] = original


def _traced(worker: Worker, function: Any, agent: Agent) -> Callable[..., Awaitable[Any]]:
    """The job coroutine, run as one otel-jobs run in the job's own task."""
    coroutine = function.coroutine
    name: str = function.name

    @functools.wraps(coroutine)
    async def job(ctx: dict[Any, Any], *args: Any, **kwargs: Any) -> Any:
        if agent.stopped:  # uninstrumented: the worker keeps its functions until unwrapped
            return await coroutine(ctx, *args, **kwargs)
        run = None
        with errors.guard("integration.arq"):
            timeout = worker.job_timeout_s if function.timeout_s is None else function.timeout_s
            score = ctx.get("score")
            run = agent.start_run(
                name,
                queue=worker.queue_name,
                job_id=ctx.get("job_id"),
                attempt=int(ctx.get("job_try") or 1),
                framework="arq",
                native_max_duration=float(timeout) if timeout else None,
                enqueued_at=score / 1000.0 if score else None,
                expected_every=_cron_every(function, score),
            )
            run.activate()
            leases.arq_started(agent, run, worker)
        if run is None:
            return await coroutine(ctx, *args, **kwargs)
        try:
            result = await coroutine(ctx, *args, **kwargs)
        except BaseException as exc:
            with errors.guard("integration.arq"):
                outcome, recorded = _outcome(worker, function, ctx, timeout, exc)
                run.finish(outcome, recorded)
            raise
        else:
            with errors.guard("integration.arq"):
                run.finish("success")
            return result
        finally:
            with errors.guard("integration.arq"):
                run.deactivate()

    setattr(job, _WRAPPED, function)
    return job


_PREVIOUS_DUE = "_otel_jobs_previous_due"  # on a CronJob: the due time of its last send


def _following(cron_job: CronJob, after: datetime) -> datetime | None:
    """The cron job's due time after ``after`` (arq's own calculation, on a copy)."""
    copy = dataclasses.replace(cron_job)
    copy.calculate_next(after)
    return copy.next_run


def _cron_entries(worker: Worker | None) -> list[Entry]:
    if worker is None:
        return []
    out = []
    for cron_job in worker.cron_jobs:
        next_run = cron_job.next_run
        previous = getattr(cron_job, _PREVIOUS_DUE, None)
        following = _following(cron_job, next_run) if next_run is not None else None
        out.append(
            Entry(
                cron_job.name,
                cron_job.name,
                unix(next_run),
                gap(unix(next_run), unix(previous), unix(following)),
            )
        )
    return out


def _cron_every(function: Any, score: int | None) -> float | None:
    """A cron job's gap between the two due times that follow this run's (its score)."""
    if not isinstance(function, CronJob) or not score:
        return None
    first = _following(function, datetime.fromtimestamp(score / 1000.0, tz=timezone.utc))
    if first is None:
        return None
    return gap(unix(first), None, unix(_following(function, first)))


def _outcome(
    worker: Worker, function: Any, ctx: dict[Any, Any], timeout: float | None, exc: BaseException
) -> tuple[str, BaseException]:
    """Map how the job's coroutine ended onto an outcome, the way arq itself treats it."""
    if isinstance(exc, (Retry, RetryJob)):
        # A retry arq will never run (no retries, or tries used up) ends the job: a failure.
        max_tries = worker.max_tries if function.max_tries is None else function.max_tries
        if worker.retry_jobs and int(ctx.get("job_try") or 1) < max_tries:
            return "retry", exc
        return "failure", exc
    if not isinstance(exc, asyncio.CancelledError):
        return classify(exc), exc
    if ctx.get("job_id") in worker.aborting_tasks:
        return "cancelled", exc
    # arq's timeout cancels the task once ``timeout`` seconds have passed since its wait began,
    # which is after run_job began: a cancellation that late is the timeout. Earlier ones are
    # the worker's shutdown (or the watchdog, whose cancel Run.finish records as a timeout).
    started = _run_job_started.get()
    if timeout and started is not None:
        if asyncio.get_running_loop().time() - started >= timeout:
            return "timeout", asyncio.TimeoutError(f"arq job_timeout of {timeout:g}s expired")
    return "cancelled", exc
