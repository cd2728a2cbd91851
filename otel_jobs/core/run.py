"""A job run: one execution of a job, from start to outcome.

A :class:`Run` is what the rest of otel-jobs talks about. The agent creates it
(:meth:`otel_jobs.core.agent.Agent.start_run`), an adapter or the ``@job`` decorator
activates it in the thread or asyncio task that executes the job, the job heartbeats
through :func:`heartbeat`, the watchdog reads it, and :meth:`Run.finish` records the
outcome exactly once.

The per-run hot path is kept to plain attribute stores: ``heartbeat()`` writes one
monotonic timestamp; everything the metrics show (oldest run, stalest heartbeat) is
derived when they are collected.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace

from . import errors
from .unrecorded import _unrecorded, record_unrecorded

if TYPE_CHECKING:
    import asyncio

    from .agent import Agent
    from .lease import PreviousAttempt
    from .telemetry import Series

logger = logging.getLogger("otel_jobs")

OUTCOMES = ("success", "failure", "retry", "timeout", "cancelled")
MAX_DETAILS = 32

_current: contextvars.ContextVar[Run | None] = contextvars.ContextVar("otel_jobs_run", default=None)
_ids = itertools.count(1)
_monotonic = time.monotonic
_calls_lock = threading.Lock()
_NESTED = object()  # Run._token of a run activated more than once at a time
#: This process's id, kept up to date at fork: read per run, where os.getpid() is a system call.
_pid = os.getpid()
#: Per thread: its ident and native id (threading.get_native_id() is a system call too), read
#: once per thread; fresh after fork.
_threads = threading.local()


#: asyncio's ``_get_running_loop``, once asyncio is imported (see _find_running_loop).
_running_loop: Callable[[], Any] | None = None


def _find_running_loop() -> Callable[[], Any] | None:
    """asyncio's ``_get_running_loop`` if asyncio is imported. No loop runs in a process that has
    not imported it (otel-jobs does not import it for a sync worker); getattr(): the module may
    be half imported, by another thread, right now."""
    global _running_loop
    _running_loop = getattr(sys.modules.get("asyncio"), "_get_running_loop", None)
    return _running_loop


def _thread_ids() -> tuple[int, int]:
    ids = (threading.get_ident(), threading.get_native_id())
    _threads.ids = ids
    return ids


class OutboundCall:
    """An outbound call in flight inside a run (library, method, host, start, missing timeout parts)."""

    __slots__ = ("library", "method", "host", "started", "missing", "call_site")

    def __init__(
        self, library: str, method: str, host: str, missing: tuple[str, ...], call_site: str
    ) -> None:
        self.library = library
        self.method = method
        self.host = host
        self.missing = missing
        self.call_site = call_site
        self.started = _monotonic()

    def describe(self) -> str:
        timeout = "no " + "/".join(self.missing) + " timeout" if self.missing else "with a timeout"
        elapsed = _monotonic() - self.started
        return f"{self.method} {self.host} via {self.library} ({timeout}) for {elapsed:.1f}s from {self.call_site}"


class Run:
    """One run of a job. Created by the agent; finished exactly once."""

    __slots__ = (
        "key",
        "name",
        "queue",
        "job_id",
        "attempt",
        "framework",
        "series",
        "span",
        "start_mono",
        "last_beat",
        "progress",
        "details",
        "max_duration",
        "heartbeat_timeout",
        "on_stall",
        "thread_id",
        "native_id",
        "task",
        "loop",
        "_calls",
        "logs",
        "verdict",
        "state",
        "diagnosis",
        "cancelled_by_watchdog",
        "finished",
        "owns_span",
        "pid",
        "parent",
        "recorded",
        "_agent",
        "_token",
        "_ctx_token",
        "__weakref__",
    )

    def __init__(
        self,
        agent: Agent,
        name: str,
        queue: str,
        job_id: str | None,
        attempt: int,
        framework: str,
        series: Series,
        max_duration: float,
        heartbeat_timeout: float,
        on_stall: str,
    ) -> None:
        self.key = next(_ids)
        self.name = name
        self.queue = queue
        self.job_id = job_id
        self.attempt = attempt
        self.framework = framework
        self.series = series
        self.span: trace.Span = trace.INVALID_SPAN
        self.start_mono = _monotonic()
        self.last_beat = self.start_mono
        self.progress: float | None = None
        self.details: dict[str, Any] | None = None
        self.max_duration = max_duration
        self.heartbeat_timeout = heartbeat_timeout
        self.on_stall = on_stall
        self.thread_id: int | None = None
        self.native_id: int | None = None
        self.task: asyncio.Task[Any] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self._calls: list[OutboundCall] | None = None  # see the calls property
        self.logs: Any = None  # its last log records (core.logtail), a bounded deque
        self.verdict: str | None = None  # None, "no_heartbeat", "max_duration", "loop_blocked"
        self.state: str | None = None  # "blocked", "spinning" or "unknown" while a verdict stands
        self.diagnosis: Any = None  # set by the watchdog with its verdict
        self.cancelled_by_watchdog = False
        self.finished = False
        # False when the span belongs to another instrumentation (adopted by start_run(span=...)):
        # its owner makes it current, sets its status and ends it.
        self.owns_span = True
        self.pid = _pid  # (os.getpid() is a system call, and an int object per run)
        self.parent: Run | None = None  # the run current where this one was activated
        self.recorded = 0  # the steps of Agent.finish_run done (it may be called again)
        self._agent = agent
        # The context tokens of the activation in force (no list or tuple per run); a run
        # activated again inside its own activation (rare) keeps a stack of them instead.
        self._token: Any = None
        self._ctx_token: Any = None

    @property
    def start_wall(self) -> float:
        """When the run started, in Unix time (derived from its monotonic start: one float
        less per run in flight)."""
        return time.time() - (_monotonic() - self.start_mono)

    # --- where the run executes -------------------------------------------------------

    def activate(self) -> None:
        """Make this the current run of the calling thread or asyncio task."""
        self.thread_id, self.native_id = getattr(_threads, "ids", None) or _thread_ids()
        # Not asyncio.current_task(): outside a loop it raises, and an exception per run of a
        # sync job costs more than the rest of this method.
        running_loop = _running_loop or _find_running_loop()
        loop = running_loop() if running_loop is not None else None
        if loop is not None:
            self.task = sys.modules["asyncio"].current_task(loop)
            self.loop = loop if self.task is not None else None
        elif self.task is not None:  # activated before in a task, now outside any loop
            self.task = self.loop = None
        parent = _current.get()
        # Not a finished one: a run left current by mistake must not chain the next ones to it.
        self.parent = parent if parent is not None and not parent.finished else None
        run_token = _current.set(self)
        # An adopted span is made current by its owner; attaching it here too would interleave
        # two owners' context tokens, which must be detached in reverse order.
        ctx_token = (
            otel_context.attach(trace.set_span_in_context(self.span)) if self.owns_span else None
        )
        if self._token is None:
            self._token, self._ctx_token = run_token, ctx_token
        else:  # activated again inside an activation of its own: a stack of token pairs
            stack = self._ctx_token if self._token is _NESTED else [(self._token, self._ctx_token)]
            stack.append((run_token, ctx_token))
            self._token, self._ctx_token = _NESTED, stack

    def deactivate(self) -> None:
        """Undo :meth:`activate` (in the same thread or task)."""
        run_token, ctx_token = self._token, self._ctx_token
        if run_token is None:
            return
        if run_token is _NESTED:
            run_token, ctx_token = self._ctx_token.pop()
            if len(self._ctx_token) == 1:
                self._token, self._ctx_token = self._ctx_token[0]
        else:
            self._token = self._ctx_token = None
        try:
            if ctx_token is not None:
                otel_context.detach(ctx_token)
            _current.reset(run_token)
        except Exception:
            _current.set(None)

    # --- liveness ------------------------------------------------------------------------

    def heartbeat(self, progress: float | None = None, **details: Any) -> None:
        """Record liveness (see :func:`otel_jobs.heartbeat`); never raises into the job."""
        self.last_beat = _monotonic()
        if progress is not None or details:
            try:
                self._update(progress, details)
            except Exception as exc:
                errors.record("heartbeat", exc)

    def _update(self, progress: object, details: Mapping[str, Any]) -> None:
        if progress is not None:
            if (
                isinstance(progress, (int, float))
                and not isinstance(progress, bool)
                and 0.0 <= progress <= 1.0
            ):
                self.progress = float(progress)
            else:
                _warn_once(
                    "progress",
                    f"otel-jobs: heartbeat(progress={progress!r}) ignored: progress is a number from 0 to 1",
                )
        if details:
            merged = dict(self.details or {})
            merged.update(details)
            if len(merged) > MAX_DETAILS:
                _warn_once(
                    "details",
                    f"otel-jobs: heartbeat details keep at most {MAX_DETAILS} keys; extra keys dropped",
                )
                merged = dict(itertools.islice(merged.items(), MAX_DETAILS))
            self.details = merged

    def seconds_since_heartbeat(self, now: float | None = None) -> float:
        return (now if now is not None else _monotonic()) - self.last_beat

    def elapsed(self, now: float | None = None) -> float:
        return (now if now is not None else _monotonic()) - self.start_mono

    @property
    def calls(self) -> list[OutboundCall]:
        """The outbound calls in flight in this run (:mod:`otel_jobs.outbound.base`), oldest
        first. The list is made at its first use: most runs make no outbound call, and an empty
        list is 56 bytes per run in flight."""
        calls = self._calls
        if calls is None:
            with _calls_lock:  # two threads of one run starting its first calls at once
                if self._calls is None:
                    self._calls = []
                calls = self._calls
        return calls

    def add_call(self, call: Any) -> None:
        """An outbound call starts inside this run."""
        self.calls.append(call)

    def remove_call(self, call: Any) -> None:
        """The outbound call ended (a call never added is ignored)."""
        calls = self._calls
        if calls is not None:
            try:
                calls.remove(call)
            except ValueError:
                pass

    # --- the end -----------------------------------------------------------------------

    def finish(
        self, outcome: str = "success", exc: BaseException | None = None, *, expected: bool = False
    ) -> None:
        """Record the run's outcome, end its span, and remove it from the in-flight table.

        ``expected=True``: ``exc`` is an exception the job declares as expected (Celery's
        ``throws``): it is recorded on the span, whose status is not set to ERROR.
        Calling it again, or in a forked child on a run inherited from the parent, does nothing.
        """
        if self.finished or self.pid != _pid:
            return
        self.finished = True
        if self.cancelled_by_watchdog and outcome in ("failure", "cancelled"):
            outcome = "timeout"
        if exc is not None and isinstance(exc, RecursionError):
            # (Not activated, if activate() itself ran out of stack: then the run current here.)
            parent = self.parent if self.parent is not None else _current.get()
            if parent is not None and parent is not self and not parent.finished:
                # A nested run unwinding from the recursion limit, with hardly any stack left:
                # recording here could fail halfway (an exporter that swallows the error drops
                # the span). Recorded by the outermost run's finish, or the watchdog's thread,
                # with the time it ended.
                _unrecorded.append((self, outcome, exc, expected, (_monotonic(), time.time_ns())))
                return
        try:  # not errors.guard(): see Agent.start_run
            self._agent.finish_run(self, outcome, exc, expected)
        except RecursionError:
            # No stack left: recorded later, with the time it ended (the steps done are kept in
            # self.recorded, none is done twice).
            _unrecorded.append((self, outcome, exc, expected, (_monotonic(), time.time_ns())))
            return
        except Exception as err:
            errors.record("run.finish", err)
        if _unrecorded:
            record_unrecorded()

    @property
    def previous_attempt(self) -> PreviousAttempt | None:
        """What the last lost attempt of this job reached, if a run of it was lost with its worker.

        ``progress``, ``details`` (its last ``heartbeat()``), ``at``, ``worker`` (``host:pid``) and
        ``lost`` (how many times the job was lost); None when no run of the job was lost (or
        the lease's Redis cannot say). A run requeued by ``otel-jobs monitor`` carries it in its
        message; a run its broker redelivered asks Redis once, when this is first read.

        >>> previous = otel_jobs.current_run().previous_attempt
        >>> start_page = previous.details.get("page", 0) if previous else 0
        """
        try:
            return self._agent.lease.previous_attempt(self)
        except Exception as exc:
            errors.record("lease", exc)
            return None

    def __repr__(self) -> str:
        return f"<Run {self.name} id={self.job_id} queue={self.queue}>"


def current_run() -> Run | None:
    """The run executing in this thread or asyncio task, if any."""
    return _current.get()


def heartbeat(progress: float | None = None, **details: Any) -> None:
    """Tell otel-jobs the current run is alive, optionally with progress and a checkpoint.

    ``progress`` is a number from 0 to 1; ``details`` is a small mapping (at most 32 keys), for
    example the last item processed, that a retry could resume from. Outside a run this does
    nothing. It is a couple of attribute stores: no I/O, no export.

    >>> for i, row in enumerate(rows):
    ...     process(row)
    ...     otel_jobs.heartbeat(progress=i / len(rows), last_row=row.id)
    """
    run = _current.get()
    if run is None:
        return
    if progress is None and not details:
        run.last_beat = _monotonic()  # the usual call: one store, no method call
    else:
        run.heartbeat(progress, **details)


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


def classify(exc: BaseException | None) -> str:
    """The outcome of a run that ended with ``exc`` (None: success)."""
    if exc is None:
        return "success"
    if isinstance(exc, (errors.JobTimeoutError, TimeoutError)):
        return "timeout"
    # No CancelledError without asyncio, which otel-jobs does not import (getattr(): a module
    # another thread is importing right now is in sys.modules half made).
    cancelled = getattr(sys.modules.get("asyncio.exceptions"), "CancelledError", None)
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) or (
        cancelled is not None and isinstance(exc, cancelled)
    ):
        return "cancelled"
    return "failure"


def wall_time_of(monotonic: float, now_mono: float, now_wall: float) -> float:
    """Convert a monotonic timestamp taken in this process into Unix time."""
    if math.isinf(monotonic):
        return monotonic
    return now_wall - (now_mono - monotonic)


def _after_fork_in_child() -> None:
    global _pid, _threads, _calls_lock
    _pid = os.getpid()
    _threads = threading.local()  # the parent's thread ids are not this process's
    _calls_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
