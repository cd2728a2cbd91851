"""Huey: every task execution becomes one run, from Huey's own signals.

For users (where to call ``instrument()``, worker types, what a run records, the signal to
outcome table, time limits, queue wait): docs/frameworks/huey.md. For a code reader:

* :class:`Integration` connects one receiver (``huey.signal()``) to every Huey instance: those
  created afterwards (it wraps ``Huey.__init__``) and those bound to a module-level name,
  directly or through one of their tasks (:func:`_existing_hueys`). ``uninstrument()``
  disconnects the receivers and restores ``Huey.__init__``.
* ``executing`` starts the run in the worker thread or process; the other signals end it with
  their outcome. ``locked`` and ``rate-limited`` also count a skip; ``revoked`` and ``expired``
  are no run, only a skip.
* Periodic tasks: ``Huey.read_periodic`` is patched (what the scheduler is about to enqueue is
  the task's last send), and the schedule gauges (:mod:`otel_jobs.core.schedules`) take the
  next periodic check at which the task's ``validate_datetime`` holds. With ``-k process`` the
  scheduler is a process of its own, whose gauges reach the consumer's ``/metrics`` like a
  worker process's. A periodic task's run carries no ``expected_every``.
"""

from __future__ import annotations

import datetime
import functools
import logging
import signal
import sys
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

import huey as huey_module
from huey import signals as S
from huey.api import Huey, TaskWrapper

from ..core import errors, shutdown
from ..core.patching import Patches
from ..core.schedules import Entry
from . import leases
from .base import Integration as BaseIntegration

if TYPE_CHECKING:
    from ..core.agent import Agent
    from ..core.run import Run

logger = logging.getLogger("otel_jobs")

_RUN_ATTR = "_otel_jobs_run"

# The signals the receiver is connected to (Huey's names; some are missing in old versions).
_SIGNALS = tuple(
    getattr(S, name)
    for name in (
        "SIGNAL_EXECUTING", "SIGNAL_COMPLETE", "SIGNAL_ERROR", "SIGNAL_RETRYING",
        "SIGNAL_TIMEOUT", "SIGNAL_CANCELED", "SIGNAL_INTERRUPTED", "SIGNAL_LOCKED",
        "SIGNAL_RATE_LIMITED", "SIGNAL_REVOKED", "SIGNAL_EXPIRED",
    )
    if hasattr(S, name)
)  # fmt: skip

# Signal -> reason label of otel_jobs_runs_skipped_total ("rate-limited" exists from Huey 3.0).
_SKIPPED_BEFORE_START = {S.SIGNAL_REVOKED: "revoked", S.SIGNAL_EXPIRED: "expired"}
_CONTENTION = {S.SIGNAL_LOCKED: "locked", "rate-limited": "rate_limited"}


def _due_time(huey: Huey, task: Any) -> float | None:
    eta = getattr(task, "eta", None)
    if not isinstance(eta, datetime.datetime):
        return None
    if eta.tzinfo is None and huey.utc:
        eta = eta.replace(tzinfo=datetime.timezone.utc)
    return eta.timestamp()


def _force_shutdown(consumer: Any) -> str:
    """How to end the consumer's graceful shutdown (its graceful signal, sent again)."""
    graceful = getattr(consumer, "_graceful_sig", None)
    name = signal.Signals(graceful).name if graceful is not None else "SIGINT"
    text = (
        f"To stop the consumer without waiting, send it {name} again"
        + (" (Ctrl+C)" if name == "SIGINT" else "")
        + ": Huey interrupts its workers"
    )
    timeout = getattr(consumer, "shutdown_timeout", None)
    if timeout:
        text += f"; it does so by itself after its shutdown timeout ({timeout:g} s)"
    return text + "."


def _attempt(task: Any) -> int:
    planned = getattr(type(task), "default_retries", 0) or 0
    left = task.retries or 0
    return planned - left + 1 if 0 <= left <= planned else 1


class Integration(BaseIntegration):
    """Connects a signal receiver to every Huey instance; disconnects it on uninstall."""

    name = "huey"

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self._patches = Patches()
        self._receivers: weakref.WeakKeyDictionary[Huey, Any] = weakref.WeakKeyDictionary()
        self._local = threading.local()
        # consumer scheduler -> the function that stops reading it for the schedule gauges
        self._schedulers: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
        self._due: dict[str, tuple[float, float | None]] = {}  # task: (next run, interval)

    def install(self) -> None:
        connect = self.connect

        def make_init(original: Any) -> Any:
            def __init__(huey: Huey, *args: Any, **kwargs: Any) -> None:
                original(huey, *args, **kwargs)
                with errors.guard("integration.huey"):
                    connect(huey)

            return __init__

        self._patches.wrap(Huey, "__init__", make_init)
        self._patches.wrap(Huey, "read_periodic", self._patch_read_periodic)
        from huey.consumer import Consumer, Scheduler

        self._patches.wrap(Scheduler, "enqueue_periodic_tasks", self._patch_enqueue_periodic)
        self._patches.wrap(Consumer, "stop", self._patch_stop)
        self._patches.wrap(Consumer, "start", self._patch_start)
        for huey in _existing_hueys():
            self.connect(huey)

    def uninstall(self) -> None:
        self._patches.undo()
        for huey, receiver in list(self._receivers.items()):
            with errors.guard("uninstall"):
                huey.disconnect_signal(receiver)
        self._receivers = weakref.WeakKeyDictionary()
        for remove in list(self._schedulers.values()):
            remove()
        self._schedulers = weakref.WeakKeyDictionary()

    # --- the consumer's graceful shutdown ---------------------------------------------

    def _patch_start(self, original: Any) -> Any:
        def start(consumer: Any, *args: Any, **kwargs: Any) -> Any:
            # The consumer starts its workers and scheduler (forks process workers): /metrics
            # and the watchdog start now, in the process that serves them.
            with errors.guard("integration.huey"):
                self.agent.start_serving()
            return original(consumer, *args, **kwargs)

        return start

    def _patch_stop(self, original: Any) -> Any:
        def stop(consumer: Any, graceful: bool = False) -> Any:
            # Called by the consumer's main loop after its graceful signal: it then joins the
            # workers, stalled tasks included.
            if graceful:
                with errors.guard("integration.huey"):
                    shutdown.begin(self.agent, "Huey", _force_shutdown(consumer))
            return original(consumer, graceful=graceful)

        return stop

    # --- periodic tasks: the schedule gauges ------------------------------------------

    def _patch_read_periodic(self, original: Any) -> Any:
        def read_periodic(huey: Huey, timestamp: Any) -> Any:
            due = original(huey, timestamp)
            with errors.guard("integration.huey"):
                for task in due:
                    name = self._name_of(huey, task)
                    self.agent.telemetry.schedules.sent(name, name)
            return due

        return read_periodic

    def _patch_enqueue_periodic(self, original: Any) -> Any:
        def enqueue_periodic_tasks(scheduler: Any, now: Any) -> Any:
            if scheduler not in self._schedulers:
                with errors.guard("integration.huey"):
                    ref = weakref.ref(scheduler)
                    self._schedulers[scheduler] = self.agent.telemetry.schedules.add_source(
                        lambda: self._periodic_entries(ref())
                    )
            return original(scheduler, now)

        return enqueue_periodic_tasks

    def _periodic_entries(self, scheduler: Any) -> list[Entry]:
        if scheduler is None or not scheduler.periodic:
            return []
        huey = scheduler.huey
        step = float(scheduler.periodic_task_seconds)
        # The scheduler's next check, as Unix time (it keeps it on the monotonic clock).
        first = time.time() + (scheduler._next_periodic - time.monotonic())
        out = []
        for task in huey._registry.periodic_tasks:
            name = self._name_of(huey, task)
            cached = self._due.get(name)
            if cached is None or cached[0] < first:
                following = _valid_checks(huey, task, first, step, 2)
                next_run = following[0] if following else None
                every = following[1] - following[0] if len(following) > 1 else None
                if next_run is not None:
                    self._due[name] = (next_run, every)
            else:
                next_run, every = cached
            out.append(Entry(name, name, next_run, every))
        return out

    def connect(self, huey: Huey) -> None:
        """Connect the receiver to ``huey`` (once)."""
        if huey in self._receivers:
            return
        receiver = functools.partial(self._on_signal, huey)
        huey.signal(*_SIGNALS)(receiver)
        self._receivers[huey] = receiver

    # --- the receiver ------------------------------------------------------------------

    @errors.guarded("integration.huey")
    def _on_signal(self, huey: Huey, signal: str, task: Any, *args: Any) -> None:
        if signal == S.SIGNAL_EXECUTING:
            self._start(huey, task)
            return
        if signal in _SKIPPED_BEFORE_START:
            series = self.agent.telemetry.series(self._name_of(huey, task), huey.name)
            self.agent.telemetry.record_skipped(series, _SKIPPED_BEFORE_START[signal])
            return
        run: Run | None = task.__dict__.pop(_RUN_ATTR, None)
        if run is None:
            return  # already finished (an error then retrying), or not started here
        exc: BaseException | None = None
        will_retry = bool(task.retries)
        if signal == S.SIGNAL_COMPLETE:
            outcome = "success"
        elif signal == S.SIGNAL_ERROR:
            exc = args[0] if args and isinstance(args[0], BaseException) else None
            outcome = "retry" if will_retry else "failure"
        elif signal == S.SIGNAL_TIMEOUT:
            outcome = "timeout"
        elif signal in _CONTENTION:
            self.agent.telemetry.record_skipped(run.series, _CONTENTION[signal])
            outcome = "retry" if will_retry else "failure"
        elif signal == S.SIGNAL_RETRYING:
            outcome = "retry"
        else:  # canceled, interrupted
            outcome = "cancelled"
        self._end(run, outcome, exc)

    def _start(self, huey: Huey, task: Any) -> None:
        self.agent.defer_snapshots_to_watchdog()  # in a process worker, which runs many tasks of many names
        # A run of this thread that got no closing signal (Huey raised inside its own
        # bookkeeping) must not stay in flight forever and look stuck.
        left = getattr(self._local, "run", None)
        if left is not None and not left.finished and not huey.immediate:
            self._end(left, "failure", None)
        timeout = getattr(task, "timeout", None)
        run = self.agent.start_run(
            self._name_of(huey, task),
            queue=huey.name,
            job_id=task.id,
            attempt=_attempt(task),
            framework="huey",
            native_max_duration=float(timeout) if timeout else None,
            enqueued_at=_due_time(huey, task),
        )
        run.activate()
        leases.huey_started(self.agent, run, huey, task)
        task.__dict__[_RUN_ATTR] = run
        self._local.run = run

    def _end(self, run: Run, outcome: str, exc: BaseException | None) -> None:
        try:
            run.finish(outcome, exc)
        finally:
            # "interrupted" may come from the consumer's main thread at shutdown: only the
            # thread that activated the run can deactivate it.
            if run.thread_id == threading.get_ident():
                run.deactivate()
                if getattr(self._local, "run", None) is run:
                    self._local.run = None

    @staticmethod
    def _name_of(huey: Huey, task: Any) -> str:
        return huey._registry.task_to_string(type(task))


#: Check times scanned for a periodic task's next due time (a year of minute checks).
_MAX_CHECKS = 527_040


def _valid_checks(huey: Huey, task: Any, first: float, step: float, count: int) -> list[float]:
    """The first ``count`` check times from ``first`` (every ``step`` seconds) at which the
    task's ``validate_datetime`` holds, as the scheduler will pass them (Huey's clock)."""
    found: list[float] = []
    for k in range(_MAX_CHECKS):
        at = first + k * step
        if huey.utc:
            moment = datetime.datetime.fromtimestamp(at, datetime.timezone.utc).replace(tzinfo=None)
        else:
            moment = datetime.datetime.fromtimestamp(at)
        if task.validate_datetime(moment):
            found.append(at)
            if len(found) == count:
                break
    return found


def _existing_hueys() -> list[Huey]:
    """Huey instances bound to module-level names, directly or through one of their tasks."""
    found: dict[int, Huey] = {}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict) or module is huey_module:
            continue
        if str(namespace.get("__name__", "")).startswith("huey."):
            continue
        for value in list(namespace.values()):
            try:
                if isinstance(value, Huey):
                    found[id(value)] = value
                elif isinstance(value, TaskWrapper) and isinstance(value.huey, Huey):
                    found[id(value.huey)] = value.huey
            except Exception:  # a lazy proxy whose __class__ raises outside its context
                continue
    return list(found.values())
