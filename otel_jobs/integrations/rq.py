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
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..core import errors, imports, providers, shutdown
from ..core.patching import Patches
from . import base, rq_audit, rq_cron, rq_horse, rq_leases
from .base import report_findings
from .rq_audit import audit

__all__ = ["Integration", "WorkHorseLost", "audit"]

if TYPE_CHECKING:
    from ..core.agent import Agent
    from ..core.run import Run

logger = logging.getLogger("otel_jobs")

FRAMEWORK = "rq"
#: How to end a warm shutdown that waits for a stalled job (RQ ignores a second signal that
#: comes within a second of the first).
FORCE_SHUTDOWN = (
    "To stop the worker without waiting, send it SIGTERM or SIGINT (Ctrl+C) again, a second "
    "or more after the first: RQ's cold shutdown kills the work horse."
)


class WorkHorseLost(Exception):
    """The work horse running a job ended without finishing it (the span's recorded exception)."""


@dataclass
class _Execution:
    """What the horse learns about the job it is running, for the outcome."""

    run: Run
    exc: BaseException | None = None
    retry_returned: bool = False
    helper: rq_horse.Helper | None = None  # in a work horse


@dataclass
class _Watch:
    """What the worker knows about the horse it is waiting for."""

    job_id: str
    started: float
    time_limit: float | None
    ret_val: int | None = None
    killed: bool = False
    record: rq_horse.Record | None = None  # where its horse leaves the run's end
    span: Any = None  # the run's span, opened before the fork, ended by the horse
    name: str = ""
    queue: str = "default"
    enqueued_at: float | None = None


class Integration(base.Integration):
    """Patches RQ's worker classes (see the module docstring); ``uninstall`` restores them."""

    name = FRAMEWORK

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self._patches = Patches()
        self._executions: dict[str, _Execution] = {}  # by job id, in the process running it
        self._watching: dict[int, _Watch] = {}  # by id(worker), in a forking worker
        self._cancel_hook: Callable[[], None] | None = None
        self._record: rq_horse.Record | None = None  # this worker process's (rq_horse)
        self._record_pid = 0

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
            "handle_exception": self._handle_exception,
            "handle_job_retry": self._handle_job_retry,  # RQ after 2.0: a job may return Retry
            "handle_job_failure": self._handle_job_failure,
            "handle_work_horse_killed": self._handle_work_horse_killed,
            "bootstrap": self._bootstrap,
            "monitor_work_horse": self._monitor_work_horse,
            "fork_work_horse": self._fork_work_horse,
            "request_stop": self._request_stop,  # SIGTERM/SIGINT: the warm shutdown
        }
        for attribute, make_wrapper in hooks.items():
            # Patch the class that defines it (BaseWorker or Worker, depending on the RQ
            # version): every worker class inherits the wrapper.
            owner = next((c for c in Worker.__mro__ if attribute in vars(c)), None)
            if owner is not None:
                self._patches.wrap(owner, attribute, make_wrapper)
        rq_cron.patch(self._patches, self.agent)  # RQ's CronScheduler, where RQ has one
        try:  # rq worker-pool: the pool process serves /metrics for its workers' processes
            from rq.worker_pool import WorkerPool
        except ImportError:  # RQ before 1.14
            pass
        else:
            self._patches.wrap(WorkerPool, "start", self._pool_start)

    def uninstall(self) -> None:
        if self._cancel_hook is not None:
            self._cancel_hook()
            self._cancel_hook = None
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
        name = _job_name(job)
        queue_name = job.origin or getattr(queue, "name", None) or "default"
        watch = self._watching.get(id(worker)) if agent.one_run_child else None
        series: Any = None
        span = None
        enqueued_at = _unix_time(job.enqueued_at)
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
            attempt=_attempt(job),
            framework=FRAMEWORK,
            native_max_duration=_time_limit(job, worker),
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

    def _handle_exception(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def handle_exception(worker: Any, job: Any, *exc_info: Any) -> Any:
            with errors.guard("integration.rq"):
                execution = self._executions.get(job.id)
                if execution is not None and len(exc_info) > 1:
                    execution.exc = exc_info[1]
            return original(worker, job, *exc_info)

        return handle_exception

    def _handle_job_retry(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def handle_job_retry(worker: Any, job: Any, *args: Any, **kwargs: Any) -> Any:
            with errors.guard("integration.rq"):
                execution = self._executions.get(job.id)
                if execution is not None:
                    execution.retry_returned = True
            return original(worker, job, *args, **kwargs)

        return handle_job_retry

    # --- in a forking worker, watching its horse ----------------------------------------

    def _fork_work_horse(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def fork_work_horse(worker: Any, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
            counted = False
            with errors.guard("integration.rq"):
                counted = self._count_start(worker, job, queue)
            if not counted:
                return original(worker, job, queue, *args, **kwargs)
            with self.agent.forking_one_run():
                return original(worker, job, queue, *args, **kwargs)

        return fork_work_horse

    def _count_start(self, worker: Any, job: Any, queue: Any) -> bool:
        """In the worker, about to fork a horse for ``job``: the record its horse leaves the
        run's end in, cleared (rq_horse); the run is counted once the horse has exited."""
        agent = self.agent
        if agent.stopped or _is_spawn_worker(worker):
            return False
        pid = os.getpid()
        if self._record is None or self._record_pid != pid:  # one per worker process
            self._record, self._record_pid = rq_horse.Record(), pid
        record = self._record
        record.next_horse()
        name = _job_name(job)
        queue_name = job.origin or getattr(queue, "name", None) or "default"
        span = agent.open_span(
            name, queue=queue_name, job_id=job.id, attempt=_attempt(job), framework=FRAMEWORK
        )
        self._watching[id(worker)] = _Watch(
            job.id,
            time.time(),
            _time_limit(job, worker),
            record=record,
            span=span,
            name=name,
            queue=queue_name,
            enqueued_at=_unix_time(job.enqueued_at),
        )
        return True

    def _monitor_work_horse(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def monitor_work_horse(worker: Any, job: Any, *args: Any, **kwargs: Any) -> Any:
            watching = False
            with errors.guard("integration.rq"):
                if not _is_spawn_worker(worker):
                    self._check_job(job)
                    watch = self._watching.get(id(worker))
                    if watch is None or watch.job_id != job.id:  # forked without our wrapper
                        self._watching[id(worker)] = _Watch(
                            job.id, time.time(), _time_limit(job, worker)
                        )
                    watching = True
            try:
                return original(worker, job, *args, **kwargs)
            finally:
                if watching:
                    watch = self._watching.pop(id(worker), None)
                    with errors.guard("integration.rq"):
                        self._count_end(watch)

        return monitor_work_horse

    def _count_end(self, watch: _Watch | None) -> None:
        """In the worker, its horse gone: the run the horse left the end of, counted here (its
        start too, unless the horse counted it). A horse that left none was recorded as lost by
        _record_lost_horse, or was killed in the instant after RQ saved its job's result."""
        if watch is None or watch.record is None:
            return
        ended = watch.record.read()
        if ended is None:
            return
        agent = self.agent
        series = agent.series_for(watch.name, watch.queue, watch.time_limit)
        if not watch.record.read_start_counted():
            agent.count_start(series, watch.started, watch.enqueued_at)
        agent.count_finish(series, *ended)

    def _handle_work_horse_killed(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def handle_work_horse_killed(
            worker: Any, job: Any, retpid: Any, ret_val: Any, *args: Any, **kwargs: Any
        ) -> Any:
            with errors.guard("integration.rq"):
                watch = self._watching.get(id(worker))
                if watch is not None and watch.job_id == job.id:
                    watch.killed = True
                    watch.ret_val = ret_val
            return original(worker, job, retpid, ret_val, *args, **kwargs)

        return handle_work_horse_killed

    def _handle_job_failure(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def handle_job_failure(worker: Any, job: Any, *args: Any, **kwargs: Any) -> Any:
            with errors.guard("integration.rq"):
                self._record_lost_horse(worker, job, kwargs.get("exc_string", ""))
            return original(worker, job, *args, **kwargs)

        return handle_job_failure

    def _record_lost_horse(self, worker: Any, job: Any, exc_string: str) -> None:
        # Inside monitor_work_horse, RQ calls handle_job_failure only for a horse that ended
        # without finishing its job (killed, crashed, or stopped on request).
        if worker.is_horse:
            return  # a failure inside the horse: its own run records it
        watch = self._watching.get(id(worker))
        if watch is None or watch.job_id != job.id:
            return
        if watch.record is not None:
            if watch.record.read() is not None:
                return  # the horse ended its run (counted by _count_end, its span emitted)
            if not watch.record.read_start_counted():  # killed before its first tick
                rq_horse.count_lost_start(
                    self.agent, watch.name, watch.queue, watch.enqueued_at, watch.started
                )
        else:
            ret_val = watch.ret_val
            if watch.killed and ret_val is not None and os.WIFEXITED(ret_val):
                if os.WEXITSTATUS(ret_val) == 1:
                    return  # RQ's horse exits with 1 after an error escaped perform_job
        self._watching.pop(id(worker), None)
        elapsed = time.time() - watch.started
        if getattr(worker, "_stopped_job_id", None) == job.id:
            outcome = "cancelled"
        elif watch.time_limit is not None and elapsed > watch.time_limit:
            outcome = "timeout"
        else:
            outcome = "failure"
        message = (exc_string or "work horse ended without finishing the job").strip()
        self.agent.record_lost_run(
            _job_name(job),
            queue=job.origin,
            job_id=job.id,
            attempt=_attempt(job),
            framework=FRAMEWORK,
            started_at=watch.started,
            outcome=outcome,
            exc=WorkHorseLost(message),
        )

    # --- configuration audit -------------------------------------------------------------

    def _pool_start(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def start(pool: Any, *args: Any, **kwargs: Any) -> Any:
            with errors.guard("integration.rq"):
                self.agent.start_serving()  # before it forks its workers
            return original(pool, *args, **kwargs)

        return start

    def _request_stop(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def request_stop(worker: Any, *args: Any, **kwargs: Any) -> Any:
            # RQ's signal handler (shutdown.begin only records): the worker now waits for
            # the job in flight, then its next SIGTERM/SIGINT is the cold shutdown.
            with errors.guard("integration.rq"):
                shutdown.begin(self.agent, "RQ", FORCE_SHUTDOWN)
            return original(worker, *args, **kwargs)

        return request_stop

    def _bootstrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def bootstrap(worker: Any, *args: Any, **kwargs: Any) -> Any:
            with errors.guard("integration.rq"):
                self.agent.start_serving()  # the process becomes a worker (see core.agent)
            result = original(worker, *args, **kwargs)
            with errors.guard("integration.rq.logging"):
                base.follow_worker_logging(worker.log)  # set up by RQ's bootstrap
            with errors.guard("integration.rq.audit"):
                if _is_spawn_worker(worker):
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


#: The job name of a run whose job data cannot be deserialized (RQ fails such a job).
UNREADABLE = "<unreadable>"


def _job_name(job: Any) -> str:
    """``job.func_name``, or :data:`UNREADABLE` when RQ cannot deserialize the job's data."""
    try:
        name = job.func_name
    except Exception:  # rq.exceptions.DeserializationError, or whatever a serializer raises
        return UNREADABLE
    return str(name) if name else UNREADABLE


def _attempt(job: Any) -> int:
    return (getattr(job, "number_of_retries", None) or 0) + 1


def _is_spawn_worker(worker: Any) -> bool:
    try:
        from rq.worker import SpawnWorker
    except ImportError:
        return False
    return isinstance(worker, SpawnWorker)


def _time_limit(job: Any, worker: Any) -> float | None:
    """The time limit RQ enforces on the job (as in ``perform_job``); None for none."""
    timeout = job.timeout or getattr(worker.queue_class, "DEFAULT_TIMEOUT", None)
    if timeout is None or rq_audit.no_time_limit(timeout):
        return None
    return float(timeout)


def _unix_time(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # RQ stores UTC
    return moment.timestamp()
