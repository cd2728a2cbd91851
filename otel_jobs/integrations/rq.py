"""RQ: every job a run, recorded in the work horse, and a horse that dies seen by its worker.

RQ's ``Worker`` forks a *work horse* per job (``execute_job`` → ``fork_work_horse`` →
``main_work_horse`` → ``perform_job``) that ends with ``os._exit``. The worker classes are patched
(undone by ``uninstall``) when the application imports ``rq``
(:func:`otel_jobs.core.imports.when_imported`): never imported here, since RQ reads
``RQ_KEY_PREFIX`` at import.

* ``perform_job`` (the horse, or ``SimpleWorker`` itself): one run per execution, its name, queue,
  attempt, max duration (the job's timeout; ``-1``: the global one) and queue wait read from the
  job; outcome ``success`` / ``timeout`` (``JobTimeoutException``) / ``retry`` (RQ requeued or
  scheduled it again) / ``failure``; a job RQ cannot deserialize is ``<unreadable>``. The horse
  exports its span before it exits (2 s at most) and builds instruments only if it records
  something; the worker counts the run from what the horse left in shared memory
  (:mod:`.rq_horse`, :mod:`otel_jobs.core.forked_runs`).
* ``monitor_work_horse``, ``handle_work_horse_killed``, ``handle_job_failure`` (the worker): a
  horse that died mid-job is recorded once (``failure``; ``timeout`` when the worker killed it
  for overrunning; ``cancelled`` when stopped by ``send_stop_job_command``), only when the horse
  left no end of its run: a run is never counted twice.
* ``bootstrap``: the serving starts, and the configuration audit (:mod:`.rq_audit`) runs.
* ``request_stop``: a warm shutdown waiting for a stalled job is told
  (:mod:`otel_jobs.core.shutdown`).

A call to ``instrument()`` inside a running RQ job is detected and warned about (it would
instrument one horse). ``SpawnWorker`` horses inherit nothing and are not recorded (warned at
start-up). Tested with RQ 1.16 (``.ci/test.sh``), 2.0 and 3.0. What users read: the RQ page of
the docs.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core import errors, imports, providers, shutdown
from ..core.patching import Patches
from . import base, rq_audit, rq_cron, rq_horse, rq_leases
from .base import report_findings
from .rq_audit import audit
from .rq_jobs import (
    UNREADABLE,
    attempt,
    is_spawn_worker,
    job_name,
    queue_of,
    time_limit,
    unix_time,
)
from .rq_watch import FRAMEWORK, HorseWatch, WorkHorseLost, before

__all__ = ["UNREADABLE", "Integration", "WorkHorseLost", "audit"]

if TYPE_CHECKING:
    from ..core.agent import Agent
    from ..core.run import Run

logger = logging.getLogger("otel_jobs")

#: How to end a warm shutdown that waits for a stalled job (RQ ignores a second signal that
#: comes within a second of the first).
FORCE_SHUTDOWN = (
    "To stop the worker without waiting, send it SIGTERM or SIGINT (Ctrl+C) again, a second "
    "or more after the first: RQ's cold shutdown kills the work horse."
)


@dataclass
class _Execution:
    """What the horse learns about the job it is running, for the outcome."""

    run: Run
    exc: BaseException | None = None
    retry_returned: bool = False
    helper: rq_horse.Helper | None = None  # in a work horse


class Integration(HorseWatch, base.Integration):
    """Patches RQ's worker classes (see the module docstring); ``uninstall`` restores them."""

    name = FRAMEWORK

    def __init__(self, agent: Agent) -> None:
        base.Integration.__init__(self, agent)
        HorseWatch.__init__(self)  # the worker's side of its horses (rq_watch)
        self._patches = Patches()
        self._executions: dict[str, _Execution] = {}  # by job id, in the process running it
        self._cancel_hook: Callable[[], None] | None = None
        self._cancel_cron: Callable[[], None] | None = None

    def install(self) -> None:
        # RQ is patched when the application imports it, not imported here: RQ reads
        # RQ_KEY_PREFIX when it is imported, which an application may set after instrument().
        if "rq" in sys.modules and _inside_rq_job():
            logger.warning(
                "otel-jobs: instrument() was called inside a running RQ job (pid %d). That run is "
                "not recorded, and in a forking worker this work horse exits after the job, taking "
                "its /metrics endpoint and watchdog with it. Call otel_jobs.instrument() where the "
                "worker starts: in the settings module of `rq worker -c`, in the module of a custom "
                "worker class (`rq worker -w`), or in your worker script before Worker.work().",
                os.getpid(),
            )
        self._cancel_hook = imports.when_imported("rq", self._patch, "integration.rq")

    def _patch(self, module: Any) -> None:
        if self.agent.stopped:
            return
        from rq.worker import Worker

        hooks = {
            "perform_job": self._perform_job,
            "handle_exception": before(self._handle_exception),
            # RQ after 2.0: a job may return Retry
            "handle_job_retry": before(self._handle_job_retry),
            "bootstrap": self._bootstrap,
            "request_stop": before(self._request_stop),  # SIGTERM/SIGINT: the warm shutdown
            **self.watch_hooks(),
        }
        for attribute, make_wrapper in hooks.items():
            # Patch the class that defines it (BaseWorker or Worker, depending on the RQ
            # version): every worker class inherits the wrapper.
            owner = next((c for c in Worker.__mro__ if attribute in vars(c)), None)
            if owner is not None:
                self._patches.wrap(owner, attribute, make_wrapper)
        # RQ's CronScheduler (RQ 2.5 and later) once rq.cron is imported (`rq cron` does):
        # importing it here would load croniter and dateutil into every worker and horse.
        self._cancel_cron = imports.when_imported(
            "rq.cron", lambda _: rq_cron.patch(self._patches, self.agent), "integration.rq"
        )
        try:  # rq worker-pool: the pool process serves /metrics for its workers' processes
            from rq.worker_pool import WorkerPool
        except ImportError:  # RQ before 1.14
            pass
        else:
            serve = before(lambda pool, *args, **kwargs: self.agent.start_serving())
            self._patches.wrap(WorkerPool, "start", serve)  # before it forks its workers

    def uninstall(self) -> None:
        for cancel in (self._cancel_hook, self._cancel_cron):
            if cancel is not None:
                cancel()
        self._cancel_hook = self._cancel_cron = None
        self._patches.undo()
        base.unfollow_worker_logging()
        self._executions.clear()
        self._watching.clear()

    # --- in the process that runs the job (the horse, or a SimpleWorker) -----------------

    def _perform_job(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def perform_job(worker: Any, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
            execution = self._begin(worker, job, queue)
            if execution is None:
                return original(worker, job, queue, *args, **kwargs)
            try:
                result = original(worker, job, queue, *args, **kwargs)
            except BaseException as exc:
                self._end(worker, job, execution, result=None, escaped=exc)
                raise
            self._end(worker, job, execution, result=result, escaped=None)
            return result

        return perform_job

    @errors.guarded("integration.rq")
    def _begin(self, worker: Any, job: Any, queue: Any) -> _Execution | None:
        agent = self.agent
        if agent.stopped:
            return None
        if not worker.is_horse:
            self._check_job(job)  # SimpleWorker: this is the worker process itself
        name = job_name(job)
        queue_name = queue_of(job, queue)
        watch = self._watching.get(id(worker)) if agent.one_run_child else None
        series: Any = None
        span = None
        enqueued_at = unix_time(job.enqueued_at)
        if watch is not None and watch.record is not None and watch.job_id == job.id:
            # A work horse: its worker counts the run once it has exited, and opened its span.
            series = rq_horse.RemoteSeries(
                name, queue_name, watch.record, enqueued_at, started_at=time.time()
            )
            enqueued_at, span = None, watch.span
        run = agent.start_run(
            name,
            queue=queue_name,
            job_id=job.id,
            attempt=attempt(job),
            framework=FRAMEWORK,
            native_max_duration=time_limit(job, worker),
            enqueued_at=enqueued_at,
            series=series,
            span=span,
            own_span=span is not None,
        )
        run.activate()
        execution = self._executions[job.id] = _Execution(run)
        rq_leases.started(agent, run, job)
        if series is not None:
            execution.helper = rq_horse.Helper(agent, series)
        elif run.pid != agent.share.owner_pid:
            # A horse of a worker that does not count it: its start on /metrics now, matching
            # the failure its worker records if it is killed.
            agent.share.flush(agent.telemetry.registry)
        return execution

    @errors.guarded("integration.rq")
    def _end(
        self,
        worker: Any,
        job: Any,
        execution: _Execution,
        result: Any,
        escaped: BaseException | None,
    ) -> None:
        from rq.job import JobStatus
        from rq.timeouts import JobTimeoutException

        self._executions.pop(job.id, None)
        run = execution.run
        exc = escaped or execution.exc
        try:
            if (
                escaped is None
                and result is not False
                and exc is None
                and not execution.retry_returned
            ):
                outcome = "success"
            elif isinstance(exc, JobTimeoutException):
                outcome = "timeout"
            else:
                status = job.get_status(refresh=False)
                if status in (JobStatus.QUEUED, JobStatus.SCHEDULED) and escaped is None:
                    outcome = "retry"  # RQ put the job back: an attempt, not the job's failure
                elif status == JobStatus.STOPPED:
                    outcome = "cancelled"
                else:
                    outcome = "failure"
            run.finish(outcome, exc)
        finally:
            run.deactivate()
        if worker.is_horse:
            # The horse leaves through os._exit: export its spans now or never, and take its
            # run out of its lease.
            rq_leases.ended(self.agent)
            if execution.helper is not None:
                rq_horse.run_ended(self.agent, execution.helper)
            else:
                providers.flush(2000)

    def _handle_exception(self, worker: Any, job: Any, *exc_info: Any, **kwargs: Any) -> None:
        execution = self._executions.get(job.id)
        if execution is not None and len(exc_info) > 1:
            execution.exc = exc_info[1]

    def _handle_job_retry(self, worker: Any, job: Any, *args: Any, **kwargs: Any) -> None:
        execution = self._executions.get(job.id)
        if execution is not None:
            execution.retry_returned = True

    # --- the worker ------------------------------------------------------------------------

    def _request_stop(self, worker: Any, *args: Any, **kwargs: Any) -> None:
        # RQ's signal handler (shutdown.begin only records): the worker now waits for the job
        # in flight, then its next SIGTERM/SIGINT is the cold shutdown.
        shutdown.begin(self.agent, "RQ", FORCE_SHUTDOWN)

    def _bootstrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def bootstrap(worker: Any, *args: Any, **kwargs: Any) -> Any:
            with errors.guard("integration.rq"):
                self.agent.start_serving()  # the process becomes a worker (see core.agent)
            result = original(worker, *args, **kwargs)
            with errors.guard("integration.rq.logging"):
                base.follow_worker_logging(worker.log)  # set up by RQ's bootstrap
            with errors.guard("integration.rq.audit"):
                if is_spawn_worker(worker):
                    logger.warning(
                        "otel-jobs: %s starts each work horse as a new interpreter (posix_spawn), "
                        "which otel-jobs cannot follow: its job runs are not recorded. Use "
                        "rq.Worker (fork) or rq.SimpleWorker.",
                        type(worker).__name__,
                    )
                report_findings(self.agent, rq_audit.audit_connection(worker.connection, worker))
            return result

        return bootstrap

    def _check_job(self, job: Any) -> None:
        """Per-job audit, in the worker process (where the finding gauge lives)."""
        if rq_audit.no_time_limit(job.timeout):
            report_findings(
                self.agent, [rq_audit.no_time_limit_finding([job.description or job.id])]
            )


def _inside_rq_job() -> bool:
    """Whether the caller runs inside RQ's ``perform_job`` (instrument() in the wrong place)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "perform_job" and str(
            frame.f_globals.get("__name__", "")
        ).startswith("rq."):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False
