"""The Celery adapter: the app's and worker's signals mapped onto the core's run lifecycle.

Every receiver is guarded (an error is counted, never raised into Celery) and connected with a
strong reference; :meth:`Integration.uninstall` disconnects exactly what :meth:`install`
connected. A run lives on the request of its execution (the same task id may run twice at once
in the solo and threads pools). A pool child never records the end of a run it is stopped in:
its main process does (:mod:`.lost`), so it is counted once.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate

from ...core import errors, providers, shutdown
from ..base import Integration as _BaseIntegration
from ..base import report_findings
from . import leases, shared_files
from .audit import audit
from .beat import BeatHooks
from .contrib import ContribSpans
from .lost import LostRuns, in_pool_child, ran_elsewhere
from .request import (
    FRAMEWORK,
    PUBLISHED_HEADER,
    due_time,
    getter,
    native_limit,
    outcome_of,
    queue_of,
)

if TYPE_CHECKING:
    from ...core.agent import Agent
    from ...core.run import Run

logger = logging.getLogger("otel_jobs")

_RUN = "_otel_jobs_run"  # attribute of a task's request (one execution): its Run
#: How to end a warm shutdown that waits for a stalled task (Celery 5.3-5.6: a second SIGTERM
#: only repeats the warm shutdown; SIGQUIT, or a second Ctrl+C, starts the cold one).
FORCE_SHUTDOWN = (
    "To stop the worker without waiting, send its main process SIGQUIT (or press Ctrl+C "
    "twice): Celery's cold shutdown terminates the running tasks. A second SIGTERM does not."
)


class Integration(_BaseIntegration):
    """Celery's signals mapped onto runs."""

    name = FRAMEWORK

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self._contrib = ContribSpans(agent)
        self._lost = LostRuns(agent, self._contrib)
        self._connected: list[tuple[Any, Any]] = []
        self._beat = BeatHooks(agent)  # beat's entries on the schedule gauges (.beat)

    # --- install / uninstall -------------------------------------------------------------

    def install(self) -> None:
        from celery import signals

        for signal, receiver in (
            (signals.before_task_publish, self._on_publish),
            (signals.task_prerun, self._on_prerun),
            # No task_success receiver: task_postrun follows it at once (the result stored
            # before either) with state SUCCESS, and a signal without receivers costs Celery
            # nothing per task (bench/bench_celery.py).
            (signals.task_failure, self._on_failure),
            (signals.task_retry, self._on_retry),
            (signals.task_internal_error, self._on_internal_error),
            (signals.task_postrun, self._on_postrun),
            (signals.task_received, self._on_received),
            (signals.task_revoked, self._on_revoked),
            (signals.task_unknown, self._on_unknown),
            (signals.task_rejected, self._on_rejected),
            (signals.worker_init, self._on_worker_init),
            (signals.celeryd_after_setup, self._on_after_setup),
            (signals.worker_process_shutdown, self._on_process_shutdown),
            (signals.worker_shutting_down, self._on_shutting_down),
            (signals.beat_init, self._on_beat_init),
        ):
            # Strong references: bound methods would otherwise be dropped by the weak default.
            signal.connect(receiver, weak=False)
            self._connected.append((signal, receiver))
        with errors.guard("integration.celery.postrun_first"):
            _move_first(signals.task_postrun, self._on_postrun)
        self._beat.install()
        if not self.agent.share.in_child:
            # A configured multiprocess_dir outlives the worker: the marker and the notes are
            # this worker's children's to leave (a worker now run without the contrib
            # instrumentation).
            with errors.guard("integration.celery.marker"):
                shared_files.remove_leftovers(self.agent.share)
        if in_pool_child() and not self.agent.share.in_child:
            # instrument() ran inside a pool child (worker_process_init, or a module only
            # the children import): this process is its own owner.
            logger.warning(
                "otel-jobs: instrument() was called inside a Celery pool child process (pid %s). "
                "Each child then serves /metrics on its own (only one can bind the port) and no "
                "process records children killed by the hard time limit. Call it in the app module "
                "or a worker_init handler, so the worker's main process serves all its children.",
                os.getpid(),
            )
            with errors.guard("integration.celery.audit"):
                from celery import current_app

                report_findings(self.agent, audit(current_app))

    def uninstall(self) -> None:
        while self._connected:
            signal, receiver = self._connected.pop()
            signal.disconnect(receiver)
        self._beat.uninstall()

    # --- publisher side ------------------------------------------------------------------

    @errors.guarded("integration.celery")
    def _on_publish(self, headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers is None:
            return
        headers[PUBLISHED_HEADER] = time.time()
        propagate.inject(headers)

    # --- where the task runs -------------------------------------------------------------

    @errors.guarded("integration.celery")
    def _on_prerun(self, task_id: str | None = None, task: Any = None, **_: Any) -> None:
        if task_id is None or task is None:
            return
        agent = self.agent
        request = task.request
        span = self._contrib.span_at_start(task, task_id, request)
        parent = None
        if span is None and getattr(request, "traceparent", None):
            parent = propagate.extract(request, getter=getter)  # type: ignore[arg-type]
        run = agent.start_run(
            task.name,
            queue=queue_of(getattr(request, "delivery_info", None)),
            job_id=task_id,
            attempt=(getattr(request, "retries", 0) or 0) + 1,
            framework=FRAMEWORK,
            native_max_duration=native_limit(task, getattr(request, "timelimit", None)),
            enqueued_at=due_time(request),
            parent=parent,
            span=span,
        )
        run.activate()
        # On the request of this execution: the same task id may run twice at once (a retry
        # picked up by another thread before the first attempt's signals are done).
        setattr(request, _RUN, run)
        leases.started(agent, run, task, request)
        if run.pid != agent.share.owner_pid:  # a pool child (run.pid: no system call per task)
            # A child killed before its next watchdog tick: its main process counts the run's
            # start too (LostRuns.record).
            agent.defer_snapshots_to_watchdog()
            agent.share.flush_or_mark_stale(agent.telemetry.registry)

    def _finish(
        self,
        request: Any,
        task: Any,
        outcome: str,
        exc: BaseException | None = None,
        *,
        expected: bool = False,
    ) -> None:
        run: Run | None = getattr(request, _RUN, None)
        if run is None or run.finished:
            return
        self._contrib.adopt_later(request, task, run)
        run.finish(outcome, exc, expected=expected)

    @errors.guarded("integration.celery")
    def _on_failure(
        self,
        sender: Any = None,
        task_id: str | None = None,
        exception: BaseException | None = None,
        **_: Any,
    ) -> None:
        if task_id is None:
            return
        request = getattr(sender, "request", None)
        if getattr(request, _RUN, None) is None:
            self._lost.failed(task_id, exception)
            return
        outcome = outcome_of(exception)
        throws = getattr(sender, "throws", ()) or ()
        expected = bool(throws) and isinstance(exception, tuple(throws))
        self._finish(request, sender, outcome, exception, expected=expected)

    @errors.guarded("integration.celery")
    def _on_retry(
        self, sender: Any = None, request: Any = None, reason: Any = None, **_: Any
    ) -> None:
        run = getattr(request, _RUN, None)
        if run is not None and reason is not None and run.span.is_recording():
            run.span.set_attribute("job.retry_reason", str(reason)[:500])
        self._finish(request, sender, "retry")

    @errors.guarded("integration.celery")
    def _on_internal_error(
        self, sender: Any = None, request: Any = None, exception: Any = None, **_: Any
    ) -> None:
        self._finish(
            request, sender, "failure", exception if isinstance(exception, BaseException) else None
        )

    @errors.guarded("integration.celery")
    def _on_postrun(
        self,
        task_id: str | None = None,
        task: Any = None,
        retval: Any = None,
        state: str | None = None,
        **_: Any,
    ) -> None:
        request = getattr(task, "request", None)
        run: Run | None = getattr(request, _RUN, None)
        if run is None:
            return
        try:
            if not run.finished and state is None and self.agent.share.in_child:
                # A BaseException escaped the task in a pool child: SIGTERM from the main
                # process after a hard time limit or revoke(terminate=True), or an exit. The
                # main process records this run's end (timeout, cancelled, or WorkerLostError);
                # recording it here too would count it twice. The child is exiting.
                self._contrib.label_ending(request, task, run)
                return
            if not run.finished and state == "SUCCESS":
                self._finish(request, task, "success")  # the common case: no signal before
            elif not run.finished:
                # No failure/retry signal: Ignore, Reject, an escaping BaseException.
                from celery.exceptions import Reject

                escaped = sys.exc_info()[1]  # postrun is sent from a `finally`
                exc = retval if isinstance(retval, BaseException) else escaped
                if isinstance(retval, Reject) and retval.requeue:
                    outcome = "retry"
                elif state in ("IGNORED", "REJECTED"):
                    outcome = "cancelled"
                elif state == "SUCCESS":
                    outcome = "success"
                elif state == "RETRY":
                    outcome = "retry"
                else:
                    outcome = outcome_of(exc)
                    if outcome == "success":
                        outcome = "failure"  # ended in no known state, without an exception
                self._finish(request, task, outcome, exc)
        finally:
            setattr(request, _RUN, None)
            run.deactivate()

    @errors.guarded("integration.celery")
    def _on_process_shutdown(self, **_: Any) -> None:
        # A pool child leaves through os._exit, so no atexit hook exports what a batch span
        # processor still holds: the spans of its last runs, the contrib span of a run stopped
        # by SIGTERM (the run's one span) among them. Bounded: SIGKILL may follow.
        agent = self.agent
        if not agent.share.in_child:
            return
        agent.write_snapshot()  # a lazy child's last counts
        agent.lease.release()  # its last run's end, before os._exit (bounded)
        self._contrib.flush_ending()
        providers.flush(2000)

    @errors.guarded("integration.celery")
    def _on_beat_init(self, **_: Any) -> None:
        self.agent.start_serving()  # celery beat: its entries on /metrics (.beat)

    @errors.guarded("integration.celery")
    def _on_shutting_down(self, how: str | None = None, **_: Any) -> None:
        # Sent from Celery's signal handler in the main process (shutdown.begin only records).
        # A warm shutdown waits for the tasks running in the pool, stalled ones included.
        if how == "Warm":
            shutdown.begin(self.agent, "Celery", FORCE_SHUTDOWN)

    # --- the worker's main process: requests, revokes, skipped messages --------------------

    @errors.guarded("integration.celery")
    def _on_received(self, request: Any = None, **_: Any) -> None:
        self._lost.received(request)

    @errors.guarded("integration.celery")
    def _on_revoked(
        self,
        sender: Any = None,
        request: Any = None,
        terminated: bool = False,
        expired: bool = False,
        **_: Any,
    ) -> None:
        task_id = getattr(request, "id", None)
        if task_id is None:
            return
        worker_request = self._lost.request(task_id)
        if terminated and worker_request is not None and ran_elsewhere(worker_request):
            from celery.exceptions import Terminated

            self._lost.record(worker_request, task_id, "cancelled", Terminated("revoked"))
            return
        if worker_request is not None and getattr(worker_request, "time_start", None) is not None:
            return  # it started here: its run records its own end
        name = getattr(sender, "name", None) or getattr(request, "task", None) or "unknown"
        queue = queue_of(getattr(request, "delivery_info", None)) or "default"
        series = self.agent.telemetry.series(name, queue)
        self.agent.telemetry.record_skipped(series, "expired" if expired else "revoked")

    @errors.guarded("integration.celery")
    def _on_unknown(self, message: Any = None, name: str | None = None, **_: Any) -> None:
        self._skipped(message, name, "unknown_task")

    @errors.guarded("integration.celery")
    def _on_rejected(self, message: Any = None, **_: Any) -> None:
        self._skipped(message, None, "rejected")

    def _skipped(self, message: Any, name: str | None, reason: str) -> None:
        headers = getattr(message, "headers", None) or {}
        name = name or headers.get("task") or "unknown"
        queue = queue_of(getattr(message, "delivery_info", None)) or "default"
        self.agent.telemetry.record_skipped(self.agent.telemetry.series(name, queue), reason)

    # --- configuration audit -------------------------------------------------------------

    @errors.guarded("integration.celery.audit")
    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        # The process becomes a worker (before the prefork pool forks): /metrics and the
        # watchdog start now; a process that only publishes never gets here.
        self.agent.start_serving()
        from celery.apps.worker import Worker as WorkerProgram

        if isinstance(sender, WorkerProgram):
            # `celery worker` sets up logging after worker_init: logged now, the findings
            # would be bare lines on stderr. It sends celeryd_after_setup once it has.
            return
        self._audit(sender)

    @errors.guarded("integration.celery.audit")
    def _on_after_setup(self, instance: Any = None, **_: Any) -> None:
        self._audit(instance)

    def _audit(self, worker: Any) -> None:
        app = getattr(worker, "app", None)
        if app is not None:
            report_findings(self.agent, audit(app))


def _move_first(signal: Any, receiver: Any) -> None:
    """Put ``receiver`` first among ``signal``'s receivers. For ``task_postrun``: a run's
    outcome lands on an adopted contrib span before that instrumentation's receiver ends it,
    and the run is deactivated before that instrumentation detaches its context."""
    receivers = signal.receivers
    for index, (_, connected) in enumerate(receivers):
        if connected == receiver:
            receivers.insert(0, receivers.pop(index))
            signal.sender_receivers_cache.clear()
            return
