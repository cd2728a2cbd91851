"""RQ: every job a run, recorded in the work horse, and a horse that dies seen by its worker.

Where to call ``instrument()``
------------------------------

In the worker process, before it starts working, so that the work horses it forks inherit it:

* ``rq worker -c myapp.rq_settings``: the settings module is imported by the worker at start-up;
  put ``import otel_jobs; otel_jobs.instrument()`` in it (next to ``REDIS_URL``, ``QUEUES``...);
* a worker script: ``otel_jobs.instrument()`` before ``Worker(...).work()``;
* a custom worker class (``rq worker -w myapp.workers.Worker``): call it at the top of that
  module, which the worker imports before it starts.

The worker serves ``/metrics`` (``127.0.0.1:9464`` by default) for itself and all its horses.

**Called in the wrong place.** In a module that only your jobs import (``tasks.py``), the call
runs inside the work horse, after the job has started: that run is not recorded, and the horse
serves ``/metrics`` and runs the watchdog only until it exits at the end of the job; the next
horse starts uninstrumented and instruments itself again. otel-jobs detects a call made inside a
running RQ job and logs a WARNING saying so. Called only in the process that *enqueues* jobs (a
web app), it instruments that process, not the worker: no job run is recorded.

How RQ maps onto otel-jobs
--------------------------

RQ's ``Worker`` forks a *work horse* per job (``Worker.execute_job`` → ``fork_work_horse`` →
``main_work_horse`` → ``perform_job``), and the horse ends with ``os._exit``. otel-jobs patches
RQ's worker classes (the patches are undone by ``uninstrument()``, so any worker class, yours
included, is covered without changing its base class). It patches them when the application
imports ``rq`` (:func:`otel_jobs.core.imports.when_imported`), never importing RQ itself: RQ
reads ``RQ_KEY_PREFIX`` at import, which code may set after ``instrument()``.

* ``perform_job`` (in the horse, or in the worker itself for ``SimpleWorker``): one run per
  execution, named after ``job.func_name`` (``<unreadable>`` for a job whose data RQ cannot
  deserialize: RQ fails it, and the run's outcome is ``failure``), labelled with the job's queue (``job.origin``), with
  ``job.id``, the attempt (1 + ``job.number_of_retries``), the max duration from the job's
  timeout (``job_timeout=``, else the queue's ``default_timeout``, else RQ's 180 s; ``-1``
  means none, so the global ``max_duration`` applies) and the queue wait from
  ``job.enqueued_at`` (for a scheduled job or a retry, the time RQ put it back in the queue).
  The outcome: ``success``; ``timeout`` for ``JobTimeoutException`` (RQ's time limit fired);
  ``retry`` when RQ requeued or scheduled the job again (an exception with ``Retry(max=...)``
  attempts left, or the job returned a ``Retry``); ``failure`` otherwise. The horse emits the
  run's span and exports it before it exits (waiting at most 2 s for the exporter); the worker
  counts the run once the horse has exited, from what the horse left in memory shared with it
  (:mod:`otel_jobs.integrations.rq_horse`). The horse builds no instruments and writes no
  metrics snapshot unless it records something; one thread of its own ticks the watchdog while
  the run goes on: verdicts, and from the first tick on the run's start and in-flight gauges on
  the worker's ``/metrics`` (see ``docs/forking.md``).
* ``monitor_work_horse``, ``handle_work_horse_killed`` and ``handle_job_failure`` (in the worker):
  a horse that dies mid-job (``SIGKILL``, the OOM killer, a crash in C code) never finishes its
  run, so the worker records it, exactly once: outcome ``failure``, ``timeout`` when the worker
  killed it for overrunning its job timeout, ``cancelled`` when it was stopped with
  ``rq.command.send_stop_job_command``. Its start was counted by the horse at its first watchdog
  tick, else by the worker with the dead children's counts; its in-flight gauges vanish with
  it. A run is never counted twice: the worker records a lost horse only when the horse left no
  end of its run, and the horse ends its run after RQ saved the job's result (a kill in that
  very instant counts the run's end nowhere).
* ``bootstrap`` (in the worker, when it starts working): the configuration audit below.

``SimpleWorker`` (no fork) is supported the same way, in the worker process, and so is
``rq worker-pool`` (call ``instrument()`` in its ``-c`` settings module: the pool process serves
``/metrics`` for its workers and their horses). Tested with RQ 1.16, 2.0 and 3.0; a job that
returns ``Retry`` needs an RQ that supports it (after 2.0). ``SpawnWorker``
starts each horse as a new interpreter (``posix_spawn``), which inherits nothing: its runs are
not recorded (a WARNING says so at start-up); use ``Worker`` or ``SimpleWorker``. Jobs run
synchronously by a ``Queue(is_async=False)`` are not runs of a worker and are not recorded.

Configuration audit
-------------------

When the worker starts, and with ``otel-jobs doctor --rq-redis-url URL`` (:func:`audit`), the
queues and the jobs waiting, scheduled or running in Redis are checked for known mistakes; each
finding is logged once (WARNING) and set in ``otel_jobs_config_finding{framework="rq", finding}``.
The worker reads the queues of its own queue class (``--queue-class``, a ``Queue`` subclass with
a key prefix of its own) and the doctor those of ``rq.Queue``; the keys of other queue classes
in the shared ``rq:queues`` set are skipped, not an error:

* ``no_time_limit``: jobs enqueued with ``job_timeout=-1`` (or a queue ``default_timeout=-1``):
  RQ never stops them, so a hung call holds the worker for good;
* ``no_retry_or_dead_letter``: jobs without a ``Retry`` whose failures are forgotten within a
  day (``failure_ttl``), or a worker started with ``--disable-default-exception-handler`` and no
  handler of its own: a failed job leaves no trace to requeue;
* ``single_queue``: one queue for everything: one slow or stuck kind of job delays all others.

The broker-side checks of other frameworks (a time limit beyond a visibility timeout, late
acknowledgement) do not apply to RQ: a job is moved to the ``StartedJobRegistry`` when it starts
and to the ``FailedJobRegistry`` when its worker is lost; it is never run twice by redelivery.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..core import errors, imports, providers, shutdown
from ..core.patching import Patches
from . import base, rq_cron, rq_horse, rq_leases
from .base import Finding, report_findings

if TYPE_CHECKING:
    from ..core.agent import Agent
    from ..core.run import Run

logger = logging.getLogger("otel_jobs")

FRAMEWORK = "rq"
#: Jobs sampled per queue and registry by the audit (the audit only reads).
AUDIT_SAMPLE = 200
#: Failures kept for less than this (``failure_ttl``, seconds) count as forgotten.
MIN_FAILURE_TTL = 86400
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
        rq_cron.patch(self._patches)  # RQ's CronScheduler, where the installed RQ has one
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
                report_findings(self.agent, _audit_connection(worker.connection, worker))
            return result

        return bootstrap

    def _check_job(self, job: Any) -> None:
        """Per-job audit, in the worker process (where the finding gauge lives)."""
        if _no_time_limit(job.timeout):
            report_findings(self.agent, [_no_time_limit_finding([job.description or job.id])])


def audit(redis_url: str) -> list[Finding]:
    """Check the RQ queues and jobs stored in the Redis at ``redis_url`` for known mistakes.

    >>> for finding in audit("redis://127.0.0.1:6379/0"):
    ...     print(finding.finding, finding.message)

    Read-only: nothing is dequeued, cleaned up or changed. See the module docstring for the
    findings. Raises ``redis.exceptions.ConnectionError`` when Redis cannot be reached.
    """
    from redis import Redis

    connection = Redis.from_url(redis_url, socket_timeout=10, socket_connect_timeout=10)
    try:
        return _audit_connection(connection)
    finally:
        connection.close()


def _audit_connection(connection: Any, worker: Any = None) -> list[Finding]:
    from rq.job import Job
    from rq.queue import Queue

    # The worker's own classes: a Queue subclass keeps its queues under a key prefix of its own
    # (and a Job subclass its jobs), in the same rq:queues set as every other class's.
    queue_class = getattr(worker, "queue_class", None) or Queue
    job_class = getattr(worker, "job_class", None) or Job
    queues: dict[str, Any] = {
        q.name: q
        for q in _registered_queues(
            connection, queue_class, job_class, getattr(worker, "serializer", None)
        )
    }
    if worker is not None:
        for q in worker.queues:
            queues.setdefault(q.name, q)

    job_ids: list[str] = []
    for q in queues.values():
        job_ids.extend(q.get_job_ids(0, AUDIT_SAMPLE))
        for registry in (q.scheduled_job_registry, q.started_job_registry, q.deferred_job_registry):
            job_ids.extend(_registry_ids(registry))
    fields = ("timeout", "retries_left", "failure_ttl", "description")
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(job_class.key_for(job_id), fields)
        rows = pipe.execute() if job_ids else []

    no_limit: list[str] = []
    forgotten: list[str] = []
    for job_id, row in zip(job_ids, rows, strict=True):
        timeout, retries_left, failure_ttl, description = (_text(v) for v in row)
        label = description or job_id
        if timeout is not None and _no_time_limit(timeout):
            no_limit.append(label)
        if not _int(retries_left) and failure_ttl is not None:
            ttl = _int(failure_ttl)
            if ttl is not None and 0 <= ttl < MIN_FAILURE_TTL:
                forgotten.append(f"{label} (failure_ttl={ttl})")

    findings: list[Finding] = []
    if no_limit:
        findings.append(_no_time_limit_finding(no_limit))
    dead_letter_off = (
        worker is not None
        and getattr(worker, "disable_default_exception_handler", False)
        and not getattr(worker, "_exc_handlers", None)
    )
    if forgotten or dead_letter_off:
        reasons = []
        if forgotten:
            reasons.append(
                f"{len(forgotten)} job(s) without a Retry keep their failure for less than a day "
                f"({_examples(forgotten)})"
            )
        if dead_letter_off:
            reasons.append(
                "this worker runs with --disable-default-exception-handler and no exception "
                "handler of its own, so failed jobs are not kept in the FailedJobRegistry"
            )
        findings.append(
            Finding(
                FRAMEWORK,
                "no_retry_or_dead_letter",
                "no retry or dead-letter path: "
                + "; ".join(reasons)
                + ". A failed job leaves no trace to requeue. Fix: enqueue with "
                "retry=Retry(max=3, interval=[10, 60, 300]) and keep failures "
                "(failure_ttl of days, the default is a year) so they can be requeued from the "
                "FailedJobRegistry.",
            )
        )
    if len(queues) == 1:
        (only,) = queues
        findings.append(
            Finding(
                FRAMEWORK,
                "single_queue",
                f"a single queue ({only!r}) for everything: one slow or stuck kind of job delays "
                "every other. Fix: give long and short jobs their own queues (enqueue to "
                "Queue('slow'), Queue('fast')) and their own workers (`rq worker fast`).",
            )
        )
    return findings


def _no_time_limit_finding(examples: list[str]) -> Finding:
    return Finding(
        FRAMEWORK,
        "no_time_limit",
        f"no execution time limit: job(s) enqueued with job_timeout=-1 ({_examples(examples)}). "
        "RQ never stops them, so a call that hangs holds the worker for good. Fix: give every "
        "job a timeout (Queue(default_timeout=600), or enqueue(..., job_timeout=60)) longer "
        "than its slowest normal run.",
    )


# --- helpers ----------------------------------------------------------------------------


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


def _registered_queues(
    connection: Any, queue_class: Any, job_class: Any, serializer: Any
) -> list[Any]:
    """The queues of ``queue_class`` in its ``rq:queues`` set (RQ's ``Queue.all``), skipping
    the keys of other queue classes, which ``Queue.all`` refuses with a ValueError."""
    found = []
    for key in connection.smembers(queue_class.redis_queues_keys):
        text = _text(key)
        if not text or not text.startswith(queue_class.redis_queue_namespace_prefix):
            continue
        found.append(
            queue_class.from_queue_key(
                text, connection=connection, job_class=job_class, serializer=serializer
            )
        )
    return found


def _attempt(job: Any) -> int:
    return (getattr(job, "number_of_retries", None) or 0) + 1


def _registry_ids(registry: Any) -> list[str]:
    """Job ids of a registry, without the clean-up that ``get_job_ids`` does by default."""
    try:
        ids: list[str] = registry.get_job_ids(0, AUDIT_SAMPLE - 1, cleanup=False)
        return ids
    except TypeError:  # RQ before 2.0 always cleans up: read the sorted set itself
        return [
            _text(i) or "" for i in registry.connection.zrange(registry.key, 0, AUDIT_SAMPLE - 1)
        ]


def _is_spawn_worker(worker: Any) -> bool:
    try:
        from rq.worker import SpawnWorker
    except ImportError:
        return False
    return isinstance(worker, SpawnWorker)


def _time_limit(job: Any, worker: Any) -> float | None:
    """The time limit RQ enforces on the job (as in ``perform_job``); None for none."""
    timeout = job.timeout or getattr(worker.queue_class, "DEFAULT_TIMEOUT", None)
    if timeout is None or _no_time_limit(timeout):
        return None
    return float(timeout)


def _no_time_limit(timeout: Any) -> bool:
    try:
        value = float(timeout)
    except (TypeError, ValueError):
        return False
    return value < 0 or math.isinf(value)


def _unix_time(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)  # RQ stores UTC
    return moment.timestamp()


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def _examples(items: Iterable[str], limit: int = 3) -> str:
    items = list(items)
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
