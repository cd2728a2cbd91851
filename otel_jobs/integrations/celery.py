"""Celery: every task execution a run, from the worker's signals, prefork children included.

Where to call ``instrument()``
------------------------------

In the worker's *main* process, before the prefork pool forks its children:

* in the module that defines the Celery app (``proj/celery.py``, the module ``celery -A proj
  worker`` imports), after or before ``app = Celery(...)``; or
* in a ``celery.signals.worker_init`` handler, if the app module is also imported by processes
  that should not be instrumented.

The main process then serves ``/metrics`` (``127.0.0.1:9464`` by default) for itself and every
pool child, each child runs its own watchdog, and a child killed by the hard time limit or lost
(``WorkerLostError``) is recorded by the main process. Processes that only publish tasks (a web
app importing the app module) are instrumented too: that is what stamps each message with its
publish time and trace context; give them ``prometheus=False`` (or
``OTEL_JOBS_PROMETHEUS_ENABLED=false``) if they should not serve ``/metrics``.

**Called in the wrong place.** In a ``worker_process_init`` handler (or in a tasks module only a
child imports) every pool child instruments itself: the first child binds the metrics port and
the others log that they cannot, so Prometheus sees one child out of N, and since the main
process is not instrumented nobody records a child that the hard time limit kills. otel-jobs logs
a WARNING when ``instrument()`` runs inside a pool child. (``worker_process_init`` *is* the place
for ``opentelemetry-instrumentation-celery``'s ``CeleryInstrumentor().instrument()``.) Called only
in the publishing process, no run is recorded: runs are recorded where tasks execute.

How Celery maps onto otel-jobs
------------------------------

One run per execution of a task (a retry is a new run, ``job.attempt`` = retries + 1), named
after the task (``task.name``), labelled with the queue it was delivered from (the message's
routing key, which is the queue name unless you route with distinct keys):

=========================================  =================================================
Celery                                     otel-jobs
=========================================  =================================================
``before_task_publish`` (publisher)        stamps the message with its publish time
                                           (header ``otel_jobs_published_at``) and the
                                           current trace context (W3C ``traceparent``)
``task_prerun`` (where the task runs)      ``agent.start_run(...)``, ``run.activate()``
``task_success``                           outcome ``success``
``task_failure``                           ``failure``; ``timeout`` for
                                           ``SoftTimeLimitExceeded`` / ``TimeLimitExceeded``
exception listed in the task's ``throws``  ``failure`` (Celery's state is FAILURE too), but
                                           the span records it without ERROR status: an
                                           expected exception is not an error
``task_retry`` (``self.retry()``,          ``retry`` (control flow, not a failure)
``autoretry_for``)
``Reject(requeue=True)``                   ``retry`` (the message goes back to the queue)
``Reject(requeue=False)``, ``Ignore``      ``cancelled`` (the task gave up its message: not a
                                           failure, not a success)
``task_internal_error``                    ``failure`` (Celery itself failed around the task)
``task_postrun``                           ``run.deactivate()`` (and the outcome from the
                                           final state if no signal above gave one)
hard time limit, ``WorkerLostError``       recorded by the main process (``task_failure``
(prefork child killed or died)             there): ``timeout`` / ``failure``, exactly once;
                                           the child counted the start and its in-flight
                                           gauges vanish with it
``task_revoked``                           a running task terminated by ``revoke(...,
                                           terminate=True)``: ``cancelled``; a task revoked
                                           or expired before it started:
                                           ``otel_jobs_runs_skipped_total{reason="revoked"
                                           | "expired"}``
``task_unknown``, ``task_rejected``        ``otel_jobs_runs_skipped_total{reason=
                                           "unknown_task" | "rejected"}``
=========================================  =================================================

**Time limits.** The smallest of the task's ``soft_time_limit`` / ``time_limit`` (per call, per
task, or ``task_soft_time_limit`` / ``task_time_limit``) becomes the run's max duration, unless
``instrument(jobs={...})`` sets one. Note that Celery enforces time limits only in the prefork
pool; the watchdog flags an overrun run in every pool.

**Queue wait.** ``otel_jobs_queue_wait_seconds`` measures from the publish time to the start of
the run, or from the due time for a task published with ``countdown``/``eta`` (a retry with a
countdown included): a delayed task is not counted as waiting before it was due. Messages
published by a process without otel-jobs carry no publish time and record no queue wait. Clocks
of publisher and worker are compared, so keep them in sync (NTP); a negative wait is dropped.

**Trace context.** The run's span is a *child* of the span that was current when the task was
published (same trace: a web request and the task it queued appear together); a retry's run is a
child of the attempt that called ``retry()``. A task published with no trace context (beat,
a process without tracing) starts a new trace. The context travels in the message headers with
the globally configured propagator, so it also flows from publishers that use
``opentelemetry-instrumentation-celery`` alone.

**With opentelemetry-instrumentation-celery.** When ``CeleryInstrumentor`` is also enabled (in any
order, including the recommended ``worker_process_init``), a run still has one span: otel-jobs
adopts that instrumentation's ``run/<task>`` span instead of opening its own, adds its ``job.*``
attributes and outcome to it, and leaves making it current, its status and its end to its owner
(so the status of a run that raised an exception listed in ``throws`` is that instrumentation's
choice). otel-jobs' ``task_postrun`` receiver runs first, so the outcome is on the span before
that instrumentation ends it, whichever was enabled first.

A child stopped mid-run by the hard time limit or by ``revoke(terminate=True)`` gets SIGTERM: on
its way out, that instrumentation ends its span, otel-jobs sets the span's ``job.outcome``
(``timeout`` if the run reached its hard time limit, else ``cancelled``), exports it, and leaves a
note for that task in the multiprocess directory. The main process counts the run at once, waits
for the child to exit (at most 30 s), and emits a span of its own only if no note came: a child
killed outright (OOM, SIGKILL, ``revoke(..., signal="SIGKILL")``, ``WorkerLostError``), a child
stuck in C code that does not return to Python within billiard's 0.1 s between SIGTERM and
SIGKILL, or an exporter too slow for that window. So the run has one span either way, the
child's or the main process's, never two and never none (the main process's ends when it
counted the run). When the worker stops, checks still waiting decide at once. The main process
knows the children use that instrumentation, even when it is enabled only in the children, from
a marker file (``celery-contrib-spans``) the first run of a child leaves in the multiprocess
directory. A pool child leaves through ``os._exit``, so otel-jobs flushes the span processors
when it exits (``worker_process_shutdown``, at most 2 s): a batch processor's spans are not left
behind, on this exit or any other.

**Pools.** Prefork: the main process serves ``/metrics``; each child writes its metrics snapshot
from its watchdog (at the tick after a run starts or ends, so ``/metrics`` lags by at most one
``watchdog_interval``) and when it exits, not twice per task: a snapshot holds a series per
task name the child ran and costs about 9 ms with 50 names. A child killed outright loses what
it counted since its last tick, except the killed run: the main process records its end, and
its start too when the child's last snapshot is older than the run (see the README section
*Forking workers*). With the watchdog off, each child writes its snapshot at every run's start
and end instead.
``solo`` and ``threads``: runs are recorded in the worker process itself (the same task id can
run twice at once there, a retry beside its first attempt: each execution keeps its own run on
its request). Celery enforces time limits only in prefork; the watchdog flags an overrun in
every pool. Tested with Celery 5.6 on Redis and RabbitMQ.

Configuration audit
-------------------

When the worker starts (``worker_init``), and with ``otel-jobs doctor --celery-app module:app``
(:func:`audit`), the app's configuration and registered tasks are checked; each finding is logged
once as a WARNING and set as ``otel_jobs_config_finding{framework="celery", finding}``:

* ``no_time_limit``: tasks that can run forever (no ``time_limit`` / ``soft_time_limit``, no
  ``task_time_limit`` / ``task_soft_time_limit``);
* ``time_limit_exceeds_visibility_timeout``: on Redis or SQS, a task allowed to run longer than
  the broker's ``visibility_timeout`` (default one hour): its unacknowledged message is delivered
  again and the task runs twice;
* ``late_ack_without_time_limit``: ``acks_late`` tasks with no time limit: a hung run holds its
  message forever (and on Redis it is redelivered to a second worker after the visibility
  timeout);
* ``no_retry_or_dead_letter``: tasks with no retry (``autoretry_for``, ``self.retry()``) and no
  dead-letter queue (``x-dead-letter-exchange``): a failed or lost run is simply gone;
* ``single_queue``: every task goes to one queue, so a slow or stuck task blocks all the others;
* ``soft_time_limit_above_time_limit``: a soft limit above the hard one (typically an app-wide
  ``task_soft_time_limit`` over a task's ``time_limit``): the prefork pool arms the hard limit
  only when the soft one fires, so the task runs until the soft limit.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import math
import os
import sys
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace

from ..core import errors, providers
from ..core.multiprocess import pid_alive
from .base import Finding, report_findings
from .base import Integration as _BaseIntegration

if TYPE_CHECKING:
    from ..core.run import Run

logger = logging.getLogger("otel_jobs")

FRAMEWORK = "celery"
PUBLISHED_HEADER = "otel_jobs_published_at"

_RUN = "_otel_jobs_run"  # attribute of a task's request (one execution): its Run
_ADOPT_LATER = "_otel_jobs_adopt_later"  # ...: adopt the contrib span when the run ends
_LOST_MEMORY = 4096  # task ids already recorded as lost, so a second signal for one is ignored
# In the shared directory: the pool children's runs have opentelemetry-instrumentation-celery
# spans (it may be enabled in the children only, where the main process cannot see it).
_CONTRIB_MARKER = "celery-contrib-spans"
# ...: a pool child stopped mid-run exported the run's contrib span (one file per task id).
_SPAN_NOTE = "celery-span-"
_CHILD_EXIT_WAIT = 30.0  # how long the main process waits for a stopped child to exit


# --- reading a task's request ---------------------------------------------------------------


def _queue_of(delivery_info: Any) -> str | None:
    if isinstance(delivery_info, dict):
        return delivery_info.get("routing_key") or delivery_info.get("queue") or None
    return None


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 and not math.isinf(number) else None


def _unix_time(eta: Any) -> float | None:
    if eta is None:
        return None
    if isinstance(eta, (int, float)):
        return float(eta)
    if isinstance(eta, str):
        try:
            eta = _dt.datetime.fromisoformat(eta)
        except ValueError:
            return None
    if isinstance(eta, _dt.datetime):
        if eta.tzinfo is None:  # Celery sends aware ETAs; a naive one is taken as UTC
            eta = eta.replace(tzinfo=_dt.timezone.utc)
        return eta.timestamp()
    return None


def _due_time(request: Any) -> float | None:
    """When the message became due: its ETA if later than its publish time, else the publish time."""
    published = _number(getattr(request, PUBLISHED_HEADER, None))
    if published is None:
        return None
    eta = _unix_time(getattr(request, "eta", None))
    return max(published, eta) if eta is not None else published


_native_limits: dict[tuple[str, Any, Any], float | None] = {}


def _native_limit(task: Any, timelimit: Any) -> float | None:
    """The smaller of the hard and soft time limits in force for one execution (per call, task,
    app); None: no limit. Cached per task and per-call limits: reading the app's configuration
    costs more than the rest of a run's start."""
    hard, soft = (
        tuple(timelimit or (None, None)) if isinstance(timelimit, (list, tuple)) else (None, None)
    )
    key = (task.name, hard, soft)
    try:
        return _native_limits[key]
    except KeyError:
        pass
    conf = task.app.conf
    candidates = (
        hard or getattr(task, "time_limit", None) or conf.get("task_time_limit"),
        soft or getattr(task, "soft_time_limit", None) or conf.get("task_soft_time_limit"),
    )
    limits = [n for n in (_number(c) for c in candidates) if n is not None]
    found = min(limits) if limits else None
    if len(_native_limits) < 10_000:  # per-call limits are few; never grow without bound
        _native_limits[key] = found
    return found


def _hard_limit(task: Any, timelimit: Any) -> float | None:
    """The hard time limit in force for one execution (per call, task, app); None: none."""
    hard = timelimit[0] if isinstance(timelimit, (list, tuple)) and timelimit else None
    if task is None:
        return _number(hard)
    return _number(
        hard or getattr(task, "time_limit", None) or task.app.conf.get("task_time_limit")
    )


class _RequestGetter:
    """Reads propagation headers from a task's request (headers become request attributes)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = getattr(carrier, key, None)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return []


_getter = _RequestGetter()


# --- opentelemetry-instrumentation-celery, when it is enabled ---------------------------------


def _contrib_active() -> bool:
    module = sys.modules.get("opentelemetry.instrumentation.celery")
    instance = getattr(getattr(module, "CeleryInstrumentor", None), "_instance", None)
    return bool(getattr(instance, "is_instrumented_by_opentelemetry", False))


def _contrib_span(task: Any, task_id: str) -> trace.Span | None:
    try:
        from opentelemetry.instrumentation.celery import utils
    except ImportError:
        return None
    found = utils.retrieve_context(task, task_id)
    return found[0] if found else None


def _in_pool_child() -> bool:
    """Whether this process is a child of a Celery prefork pool."""
    prefork = sys.modules.get("celery.concurrency.prefork")
    if prefork is None:
        return False
    if getattr(prefork, "_process_hostname", None) is not None:  # set in children (Celery 5.7)
        return True
    process = sys.modules.get("billiard.process")
    current = process.current_process() if process is not None else None
    # billiard's main process has no parent pid; a pool child has its parent's.
    return getattr(current, "_parent_pid", None) not in (None, os.getpid())


# --- the adapter ------------------------------------------------------------------------------


class Integration(_BaseIntegration):
    """Celery's signals mapped onto runs (see the module docstring)."""

    name = FRAMEWORK

    def __init__(self, agent: Any) -> None:
        super().__init__(agent)
        self._requests: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._lost: OrderedDict[str, None] = OrderedDict()
        self._connected: list[tuple[Any, Any]] = []
        self._marked_pid: int | None = None  # the process that left the contrib marker
        self._ending: list[str] = []  # a stopped child: task ids whose contrib span it ends

    # --- install / uninstall -------------------------------------------------------------

    def install(self) -> None:
        from celery import signals

        for signal, receiver in (
            (signals.before_task_publish, self._on_publish),
            (signals.task_prerun, self._on_prerun),
            (signals.task_success, self._on_success),
            (signals.task_failure, self._on_failure),
            (signals.task_retry, self._on_retry),
            (signals.task_internal_error, self._on_internal_error),
            (signals.task_postrun, self._on_postrun),
            (signals.task_received, self._on_received),
            (signals.task_revoked, self._on_revoked),
            (signals.task_unknown, self._on_unknown),
            (signals.task_rejected, self._on_rejected),
            (signals.worker_init, self._on_worker_init),
            (signals.worker_process_shutdown, self._on_process_shutdown),
        ):
            # Strong references: bound methods would otherwise be dropped by the weak default.
            signal.connect(receiver, weak=False)
            self._connected.append((signal, receiver))
        with errors.guard("integration.celery.postrun_first"):
            _move_first(signals.task_postrun, self._on_postrun)
        if not self.agent.share.in_child:
            # A configured multiprocess_dir outlives the worker: the marker and the notes are
            # this worker's children's to leave (a worker now run without the contrib
            # instrumentation).
            with errors.guard("integration.celery.marker"):
                directory = self.agent.share.directory
                for name in os.listdir(directory):
                    if name == _CONTRIB_MARKER or name.startswith(_SPAN_NOTE):
                        try:
                            os.unlink(os.path.join(directory, name))
                        except FileNotFoundError:
                            pass
        if _in_pool_child() and not self.agent.share.in_child:
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
        span: trace.Span | None = None
        if _contrib_active():
            # Before the task runs, not when its span is adopted (at its end, below): a first
            # run stopped by the hard time limit must already tell the main process.
            self._mark_contrib()
            # One span per run: adopt the contrib instrumentation's span. If its receiver runs
            # after ours (connected later, e.g. in worker_process_init), adopt it at the end.
            span = _contrib_span(task, task_id)
            if span is None:
                span = trace.INVALID_SPAN
                setattr(request, _ADOPT_LATER, True)
        parent = None
        if span is None and getattr(request, "traceparent", None):
            parent = propagate.extract(request, getter=_getter)  # type: ignore[arg-type]
        run = agent.start_run(
            task.name,
            queue=_queue_of(getattr(request, "delivery_info", None)),
            job_id=task_id,
            attempt=(getattr(request, "retries", 0) or 0) + 1,
            framework=FRAMEWORK,
            native_max_duration=_native_limit(task, getattr(request, "timelimit", None)),
            enqueued_at=_due_time(request),
            parent=parent,
            span=span,
        )
        run.activate()
        # On the request of this execution: the same task id may run twice at once (a retry
        # picked up by another thread before the first attempt's signals are done).
        setattr(request, _RUN, run)
        if agent.share.in_child:
            # A child killed before its next watchdog tick: its main process counts the run's
            # start too (_record_lost).
            agent.pool_child()
            agent.share.changed(agent.telemetry.registry)

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
        self._adopt_later(request, task, run)
        run.finish(outcome, exc, expected=expected)

    def _adopt_later(self, request: Any, task: Any, run: Run) -> None:
        """Adopt the contrib span that was not there yet when the run started."""
        task_id = run.job_id
        if not getattr(request, _ADOPT_LATER, False) or task_id is None:
            return
        setattr(request, _ADOPT_LATER, False)
        span = _contrib_span(task, task_id) if task is not None else None
        if span is None:
            return
        run.span = span
        if span.is_recording():
            span.set_attributes(
                {
                    "job.name": run.name,
                    "job.queue": run.queue,
                    "job.attempt": run.attempt,
                    "job.framework": FRAMEWORK,
                    "job.id": task_id,
                }
            )

    def _mark_contrib(self) -> None:
        share = self.agent.share
        pid = os.getpid()
        if self._marked_pid == pid or not share.in_child:
            return
        self._marked_pid = pid
        with errors.guard("integration.celery.marker"):
            with open(os.path.join(share.directory, _CONTRIB_MARKER), "a"):
                pass

    def _contrib_spans(self) -> bool:
        """Whether the runs of this worker have contrib spans (main process or children)."""
        if _contrib_active():
            return True
        return os.path.exists(os.path.join(self.agent.share.directory, _CONTRIB_MARKER))

    @errors.guarded("integration.celery")
    def _on_success(self, sender: Any = None, **_: Any) -> None:
        self._finish(getattr(sender, "request", None), sender, "success")

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
            self._maybe_lost(sender, task_id, exception)
            return
        outcome = _outcome_of(exception)
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
                self._label_ending_contrib_span(request, task, run)
                return
            if not run.finished:
                # No success/failure/retry signal: Ignore, Reject, an escaping BaseException.
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
                    outcome = _outcome_of(exc)
                    if outcome == "success":
                        outcome = "failure"  # ended in no known state, without an exception
                self._finish(request, task, outcome, exc)
        finally:
            setattr(request, _RUN, None)
            run.deactivate()

    def _label_ending_contrib_span(self, request: Any, task: Any, run: Run) -> None:
        # The contrib span is ended by its owner on the way out, and the main process emits
        # no span of its own for this run (see _record_lost): give that one span the outcome
        # the main process counts. Nothing is counted here.
        self._adopt_later(request, task, run)
        if run.owns_span or run.job_id is None:
            return  # no contrib span: the main process emits the run's span
        self._ending.append(run.job_id)
        if not run.span.is_recording():
            return
        elapsed = time.monotonic() - run.start_mono
        hard = _hard_limit(task, getattr(request, "timelimit", None))
        # The pool's clock starts when the child accepts the job, a little before this run's
        # start: a small tolerance, so that a run stopped by the hard limit is never cancelled.
        timeout = hard is not None and elapsed >= hard - min(0.5, hard / 10)
        run.span.set_attribute("job.outcome", "timeout" if timeout else "cancelled")

    @errors.guarded("integration.celery")
    def _on_process_shutdown(self, **_: Any) -> None:
        # A pool child leaves through os._exit, so no atexit hook exports what a batch span
        # processor still holds: the spans of its last runs, the contrib span of a run stopped
        # by SIGTERM (the run's one span) among them. Bounded: SIGKILL may follow.
        agent = self.agent
        if not agent.share.in_child:
            return
        agent.write_snapshot()  # a lazy child's last counts
        ending, self._ending = self._ending, []
        if ending and providers.flush(2000, spans_only=True):
            # Exported: tell the main process not to emit a span of its own for these runs.
            for task_id in ending:
                with errors.guard("integration.celery.note"):
                    with open(self._note_path(task_id), "a"):
                        pass
        providers.flush(2000)

    def _note_path(self, task_id: str) -> str:
        digest = hashlib.sha1(task_id.encode("utf-8", "replace")).hexdigest()[:24]
        return os.path.join(self.agent.share.directory, _SPAN_NOTE + digest)

    def _child_span_check(self, task_id: str, pid: int) -> Callable[[bool], bool | float]:
        """For :meth:`Agent.record_lost_run`: whether the stopped child exported the run's
        contrib span (True), did not (False), or may still (seconds to wait)."""
        note = self._note_path(task_id)
        deadline = time.monotonic() + _CHILD_EXIT_WAIT

        def check(final: bool) -> bool | float:
            # Alive first, then the note: a child seen dead wrote its note (or never will).
            now = time.monotonic()
            alive = pid_alive(pid)
            if os.path.exists(note):
                with errors.guard("integration.celery.note"):
                    os.unlink(note)
                return True
            if final or not alive or now >= deadline:
                return False
            return 0.2

        return check

    # --- the worker's main process: children that never report -----------------------------

    @errors.guarded("integration.celery")
    def _on_received(self, request: Any = None, **_: Any) -> None:
        # Kept weakly: the worker holds each request while it is reserved or running.
        task_id = getattr(request, "id", None)
        if task_id is not None:
            self._requests[task_id] = request

    def _remember_lost(self, task_id: str) -> bool:
        """True the first time ``task_id`` is recorded as lost."""
        if task_id in self._lost:
            return False
        self._lost[task_id] = None
        if len(self._lost) > _LOST_MEMORY:
            self._lost.popitem(last=False)
        return True

    def _maybe_lost(self, task: Any, task_id: str, exception: BaseException | None) -> None:
        from billiard.exceptions import WorkerLostError
        from celery.exceptions import TimeLimitExceeded

        if not isinstance(exception, (WorkerLostError, TimeLimitExceeded)):
            return  # reported by the process that ran it (or never started)
        request = self._requests.get(task_id)
        if request is None or not self._ran_elsewhere(request):
            return
        timeout = isinstance(exception, TimeLimitExceeded)
        self._record_lost(request, task_id, "timeout" if timeout else "failure", exception)

    def _ran_elsewhere(self, request: Any) -> bool:
        # Started (accepted by a pool child) in another process than this one.
        pid = getattr(request, "worker_pid", None)
        return getattr(request, "time_start", None) is not None and pid not in (None, os.getpid())

    def _record_lost(
        self,
        request: Any,
        task_id: str,
        outcome: str,
        exc: BaseException | None,
    ) -> None:
        """Record a run its pool child did not finish: counted now. Its span: with the contrib
        instrumentation, a child stopped by SIGTERM ends the contrib span on its way out (the
        run's one span) and leaves a note once it is exported; the main process waits for the
        child to exit and emits a span of its own only when no note came (SIGKILL, a child
        stuck in C code, an exporter slower than billiard's 0.1 s before SIGKILL)."""
        if not self._remember_lost(task_id):
            return
        request_dict = getattr(request, "request_dict", None) or {}
        task = getattr(request, "task", None)
        limit = _native_limit(task, getattr(request, "time_limits", None)) if task else None
        parent = None
        if request_dict.get("traceparent"):
            parent = propagate.extract(request_dict)
        # The child counted the start in its snapshot, unless it took none since the run began.
        pid: int = request.worker_pid  # set: the callers checked _ran_elsewhere
        written = self.agent.share.written_at(pid)
        self.agent.record_lost_run(
            request.name,
            queue=_queue_of(getattr(request, "delivery_info", None)),
            job_id=task_id,
            attempt=int(request_dict.get("retries") or 0) + 1,
            framework=FRAMEWORK,
            started_at=request.time_start,
            count_start=written is None or written < request.time_start,
            outcome=outcome,
            exc=exc,
            parent=parent,
            native_max_duration=limit,
            span_unless=(self._child_span_check(task_id, pid) if self._contrib_spans() else None),
        )

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
        worker_request = self._requests.get(task_id)
        if terminated and worker_request is not None and self._ran_elsewhere(worker_request):
            from celery.exceptions import Terminated

            self._record_lost(worker_request, task_id, "cancelled", Terminated("revoked"))
            return
        if worker_request is not None and getattr(worker_request, "time_start", None) is not None:
            return  # it started here: its run records its own end
        name = getattr(sender, "name", None) or getattr(request, "task", None) or "unknown"
        queue = _queue_of(getattr(request, "delivery_info", None)) or "default"
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
        queue = _queue_of(getattr(message, "delivery_info", None)) or "default"
        self.agent.telemetry.record_skipped(self.agent.telemetry.series(name, queue), reason)

    # --- configuration audit -------------------------------------------------------------

    @errors.guarded("integration.celery.audit")
    def _on_worker_init(self, sender: Any = None, **_: Any) -> None:
        app = getattr(sender, "app", None)
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


def _outcome_of(exc: BaseException | None) -> str:
    from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded

    if exc is None:
        return "success"
    if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)):
        return "timeout"
    if isinstance(exc, Retry):
        return "retry"
    if isinstance(exc, Reject):
        return "retry" if exc.requeue else "cancelled"
    from ..core.run import classify

    return classify(exc)


# --- the audit (also used by ``otel-jobs doctor``) -------------------------------------------

_VISIBILITY_BROKERS = ("redis", "rediss", "sqs", "redis+socket")
_DEFAULT_VISIBILITY_TIMEOUT = 3600.0


def _user_tasks(app: Any) -> list[Any]:
    return [t for name, t in sorted(app.tasks.items()) if not name.startswith("celery.")]


def _names(tasks: Iterable[Any], limit: int = 5) -> str:
    names = [t.name for t in tasks]
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _hard_soft(task: Any, conf: Any) -> tuple[float | None, float | None]:
    hard = _number(getattr(task, "time_limit", None) or conf.get("task_time_limit"))
    soft = _number(getattr(task, "soft_time_limit", None) or conf.get("task_soft_time_limit"))
    return hard, soft


def _soft_above_hard(task: Any, conf: Any) -> bool:
    hard, soft = _hard_soft(task, conf)
    return hard is not None and soft is not None and soft > hard


def _task_limit(task: Any, conf: Any) -> float | None:
    """The longest a task may run; None: forever."""
    hard, soft = _hard_soft(task, conf)
    if hard is not None and soft is not None:
        return max(hard, soft)  # the prefork pool arms the hard limit when the soft one fires
    return hard or soft


def _acks_late(task: Any, conf: Any) -> bool:
    value = getattr(task, "acks_late", None)
    return bool(conf.get("task_acks_late") if value is None else value)


def _calls_retry(task: Any) -> bool:
    code = getattr(getattr(task, "run", None), "__code__", None)
    return code is not None and "retry" in code.co_names


def _queue_name(app: Any, task: Any) -> str:
    queue = getattr(task, "queue", None)
    if queue:
        return str(getattr(queue, "name", queue))
    try:
        routed = app.amqp.router.route({}, task.name, (), {})
        routed_queue = routed.get("queue")
        return str(getattr(routed_queue, "name", routed_queue))
    except Exception:  # a router that needs real arguments: fall back to the default queue
        return str(app.conf.get("task_default_queue") or "celery")


def _has_dead_letter(app: Any, queue: str) -> bool:
    queues = app.conf.get("task_queues") or ()
    for q in queues:
        if getattr(q, "name", None) == queue:
            arguments = getattr(q, "queue_arguments", None) or {}
            return "x-dead-letter-exchange" in arguments
    return False


def audit(app: Any) -> list[Finding]:
    """Check a Celery app's configuration and its registered tasks for known queue mistakes.

    >>> from proj.celery import app
    >>> for finding in otel_jobs.integrations.celery.audit(app):
    ...     print(finding.finding, finding.message)

    Imports the app's task modules (``include`` / ``imports``) the way a worker does (an
    import error propagates: the tasks could not be checked); starts nothing and connects to
    nothing.
    """
    app.loader.import_default_modules()
    conf = app.conf
    tasks = _user_tasks(app)
    findings: list[Finding] = []
    if not tasks:
        return findings

    unlimited = [t for t in tasks if _task_limit(t, conf) is None]
    if unlimited:
        findings.append(
            Finding(
                FRAMEWORK,
                "no_time_limit",
                f"{len(unlimited)} task(s) have no time limit and can run forever: "
                f"{_names(unlimited)}. Set task_time_limit / task_soft_time_limit in the app "
                "configuration, or time_limit= / soft_time_limit= on the task.",
            )
        )

    broker = str(conf.get("broker_url") or "")
    scheme = broker.split("://", 1)[0].lower() if "://" in broker else ""
    if scheme in _VISIBILITY_BROKERS:
        options = conf.get("broker_transport_options") or {}
        visibility = _number(options.get("visibility_timeout")) or _DEFAULT_VISIBILITY_TIMEOUT
        too_long = [
            t for t in tasks if (limit := _task_limit(t, conf)) is not None and limit > visibility
        ]
        if too_long:
            findings.append(
                Finding(
                    FRAMEWORK,
                    "time_limit_exceeds_visibility_timeout",
                    f"task(s) {_names(too_long)} may run longer than the broker's visibility "
                    f"timeout ({visibility:g}s): their unacknowledged message is delivered again "
                    "while they run, so the task runs twice. Raise "
                    "broker_transport_options['visibility_timeout'] above the longest time limit, "
                    "or lower the time limit.",
                )
            )

    inverted = [t for t in tasks if _soft_above_hard(t, conf)]
    if inverted:
        findings.append(
            Finding(
                FRAMEWORK,
                "soft_time_limit_above_time_limit",
                f"task(s) {_names(inverted)} have a soft time limit above their hard one (often "
                "an app-wide task_soft_time_limit over a task's time_limit): the prefork pool arms "
                "the hard limit only when the soft one fires, so they run until the soft limit. "
                "Keep soft_time_limit below time_limit.",
            )
        )

    late_unlimited = [t for t in tasks if _acks_late(t, conf) and _task_limit(t, conf) is None]
    if late_unlimited:
        findings.append(
            Finding(
                FRAMEWORK,
                "late_ack_without_time_limit",
                f"task(s) {_names(late_unlimited)} acknowledge late (acks_late) but have no time "
                "limit: a hung run holds its message forever (on Redis or SQS it is delivered "
                "again to another worker after the visibility timeout). Give them a time limit.",
            )
        )

    no_path = [
        t
        for t in tasks
        if not getattr(t, "autoretry_for", None)
        and not _calls_retry(t)
        and not _has_dead_letter(app, _queue_name(app, t))
    ]
    if no_path:
        findings.append(
            Finding(
                FRAMEWORK,
                "no_retry_or_dead_letter",
                f"task(s) {_names(no_path)} neither retry (autoretry_for=, self.retry()) nor go "
                "to a queue with a dead-letter exchange (x-dead-letter-exchange): a failed or "
                "lost run is simply gone. Add autoretry_for=(...) with retry_backoff, or a "
                "dead-letter queue.",
            )
        )

    queues = {_queue_name(app, t) for t in tasks}
    if len(tasks) > 1 and len(queues) == 1:
        findings.append(
            Finding(
                FRAMEWORK,
                "single_queue",
                f"all {len(tasks)} tasks go to one queue ({next(iter(queues))}): a slow or stuck "
                "task delays every other one. Route slow or bulk tasks to their own queue "
                "(task_routes, or queue= on the task) and run workers per queue.",
            )
        )
    return findings
