"""The agent: what ``instrument()`` starts in a process, and ``uninstrument()`` stops.

It owns the settings, the in-flight table of runs, the instruments, the ``/metrics``
endpoint, the watchdog thread, and the installed framework and outbound adapters. Adapters
talk to it through three calls: :meth:`Agent.start_run`, :meth:`otel_jobs.core.run.Run.activate`
and :meth:`otel_jobs.core.run.Run.finish`.

Start: :meth:`Agent.start` (``instrument()``) installs the adapters; the endpoint, the watchdog
and the pusher start with :meth:`Agent.start_serving`, at once with ``start="eager"``, else when
the process becomes a worker (the integrations call it from their framework's worker start) or
runs its first job (:meth:`Agent.start_run`): a process that only publishes opens no port and
starts no thread.

Fork: a forked child gets fresh state of its own, a child forked to run one job (RQ's work
horse) less; its parent counts what it does not (:mod:`otel_jobs.core.agent_fork`).
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Link, SpanKind

from . import agent_fork, errors, forked_runs, imports, lost_runs, providers, serving, sigterm
from .config import Settings
from .deferred import Deferred
from .exposition import MetricsServer
from .labels import utf8
from .lease import LeaseKeeper
from .multiprocess import ProcessShare, private_directory
from .run import Run, record_unrecorded
from .spans import FAILED, job_attributes, record_outcome
from .telemetry import Series, Telemetry
from .textformat import TextWriter

if TYPE_CHECKING:
    from .._adapters import Adapter

T = TypeVar("T")

logger = logging.getLogger("otel_jobs")

# Steps of Agent.finish_run done (Run.recorded): counted, outcome on the span, span ended.
_COUNTED, _RECORDED, _ENDED = 1, 2, 4


class Agent:
    """Everything otel-jobs runs in one process (see the module docstring)."""

    def __init__(
        self,
        settings: Settings,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self.settings = settings
        pipelines = providers.setup(settings, tracer_provider, meter_provider)
        self.tracer = pipelines.tracer
        self.tracer_provider = pipelines.tracer_provider
        self._meter = pipelines.meter
        self._runs: dict[int, Run] = {}
        self._lock = threading.Lock()
        self._telemetry: Telemetry | None = Telemetry(settings, self.runs, self._meter)
        self._telemetry_lock = threading.Lock()
        self._meter_for_child = False  # a one-run child makes its meter with its instruments
        # True in the parent while it forks a child that runs one job (forking_one_run), and
        # in such a child.
        self._forking_one_run = False
        self.one_run_child = False
        self._own_dir = settings.multiprocess_dir is None
        # The private default removes those of owners that ended without cleaning up.
        directory = settings.multiprocess_dir or private_directory()
        self.share = ProcessShare(directory, os.getpid())
        self.share.outcomes = self._outcomes
        self.server: MetricsServer | None = None
        self.server_error: OSError | None = None
        self.text_writer: TextWriter | None = None
        self.adapters: list[Adapter] = []  # installed integrations and outbound adapters
        self.stopped = False
        self.serving = False  # endpoint, watchdog and pusher started (start_serving)
        self._serve_lock = threading.Lock()
        self._cancel_hooks: list[Callable[[], None]] = []  # import hooks (core.imports)
        self.deferred = Deferred()  # adapters' checks that must wait (see core.deferred)
        self.pusher: Any = None  # a pushgateway.Pusher with pushgateway_url set
        self.lease = LeaseKeeper(self)  # this process's runs in flight, in Redis
        from .watchdog import Watchdog

        self.watchdog = Watchdog(self)

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> None:
        """What ``instrument()`` does: install the adapters; serve now only if asked (eager).

        A process that only publishes (a web app importing the Celery app, a script enqueuing
        RQ jobs) must open no port and start no thread: the endpoint, the watchdog and the
        Pushgateway pusher start with :meth:`start_serving`, called by the framework's worker
        start (its integration) or by the process's first run, or here with
        ``start="eager"``.
        """
        if self.settings.start == "eager":
            self.start_serving()
        self._install()

    def start_serving(self) -> None:
        """Start the ``/metrics`` endpoint, the watchdog and the pusher, once (thread-safe).

        In a forked child only the watchdog starts: its parent serves ``/metrics`` (see the
        module docstring); a parent that never became a worker serves nothing.
        """
        if self.serving or self.stopped:
            return
        with self._serve_lock:
            if self.serving or self.stopped:
                return
            self.serving = True
            self._serve()

    def _serve(self) -> None:
        serving.start(self)

    def _install(self) -> None:
        settings = self.settings
        from ..integrations import install_frameworks
        from ..outbound import install_outbound

        self.adapters.extend(install_frameworks(self, settings.frameworks))
        self.adapters.extend(install_outbound(self, settings.outbound))
        atexit.register(self.flush_before_exit)
        sigterm.install()
        # Only a process that uses multiprocessing has such children (not imported for it).
        self._cancel_hooks.append(
            imports.when_imported(
                "multiprocessing.util",
                lambda util: util.register_after_fork(self, agent_fork.in_multiprocessing_child),
                "fork",
            )
        )

    def stop(self) -> None:
        """Undo :meth:`start`: adapters, watchdog, endpoint; flush spans and metrics."""
        if self.stopped:
            return
        self.stopped = True
        for cancel in self._cancel_hooks:
            cancel()
        for adapter in reversed(self.adapters):
            with errors.guard("uninstall"):
                adapter.uninstall()
        self.adapters.clear()
        self.watchdog.stop()
        self.lease.close()
        record_unrecorded()
        self.deferred.run_all()
        if self.pusher is not None:
            with errors.guard("pushgateway"):
                self.pusher.close()
        if self.server is not None and not self.share.in_child:
            self.server.stop()
        self.server = None
        providers.flush()
        if self._own_dir and not self.share.in_child:
            shutil.rmtree(self.share.directory, ignore_errors=True)
        atexit.unregister(self.flush_before_exit)
        sigterm.uninstall()

    def flush_before_exit(self) -> None:
        """What this process does on its way out (at exit, and on SIGTERM, see core.sigterm)."""
        self.lease.release()  # bounded (core.lease.RELEASE_TIMEOUT)
        with errors.guard("atexit"):
            record_unrecorded()
            self.deferred.run_all()
            self.write_snapshot()
            if self.pusher is not None:
                self.pusher.close()  # bounded by pushgateway_timeout
            providers.flush(2000)
            if self._own_dir and not self.share.in_child:
                shutil.rmtree(self.share.directory, ignore_errors=True)

    @property
    def telemetry(self) -> Telemetry:
        """This process's instruments (a one-run child builds them when first needed)."""
        telemetry = self._telemetry
        if telemetry is None:
            with self._telemetry_lock:
                telemetry = self._telemetry
                if telemetry is None:
                    if self._meter_for_child:
                        self._meter_for_child = False
                        self._meter = providers.meter_for_child(self.settings, self._meter)
                    telemetry = Telemetry(self.settings, self.runs, self._meter)
                    self.watchdog.bind(telemetry)
                    self._telemetry = telemetry
        return telemetry

    @telemetry.setter
    def telemetry(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry

    def telemetry_built(self) -> bool:
        """Whether this process has instruments yet (a one-run child may record nothing)."""
        return self._telemetry is not None

    # What a forked child gets, and the snapshots it writes (core.agent_fork).
    forking_one_run = agent_fork.forking_one_run
    after_fork_in_child = agent_fork.after_fork_in_child
    write_snapshot = agent_fork.write_snapshot
    _outcomes = agent_fork.snapshot_outcomes
    defer_snapshots_to_watchdog = agent_fork.defer_snapshots_to_watchdog

    # --- the in-flight table -----------------------------------------------------------

    def runs(self) -> list[Run]:
        """The runs in flight in this process now (a copy of the in-flight table)."""
        with self._lock:
            return list(self._runs.values())

    def has_runs(self) -> bool:
        """Whether any run is in flight in this process now."""
        return bool(self._runs)

    def if_in_flight(self, run: Run, action: Callable[[], T]) -> T | None:
        """``action()`` if ``run`` is still in flight, else None, under the in-flight table's lock.

        :meth:`finish_run` takes the run out of the table under the same lock, so ``action``
        cannot overlap the run's end (the watchdog raises its cancel in the run's thread so:
        never into the thread's next job). ``action`` must be short and must not block.
        """
        with self._lock:
            if run.finished or self._runs.get(run.key) is not run:
                return None
            return action()

    def start_run(
        self,
        name: str,
        *,
        queue: str | None = None,
        job_id: str | None = None,
        attempt: int = 1,
        framework: str = "otel_jobs",
        max_duration: float | None = None,
        heartbeat_timeout: float | None = None,
        native_max_duration: float | None = None,
        on_stall: str | None = None,
        enqueued_at: float | None = None,
        parent: otel_context.Context | None = None,
        links: Sequence[Link] | None = None,
        attributes: dict[str, Any] | None = None,
        span: trace.Span | None = None,
        expected_every: float | None = None,
        series: Series | None = None,
        own_span: bool = False,
    ) -> Run:
        """Start a run: span, counters and an entry in the in-flight table.

        Thresholds, most specific first: ``instrument(jobs={name: ...})``, the job's own
        (``max_duration=``/``heartbeat_timeout=``), the framework's native limit
        (``native_max_duration=``), the global settings. ``enqueued_at`` is the Unix time the
        job became due (publish time, or its ETA); the queue wait is measured from it.
        ``span``: adopt the span another instrumentation already opened for this run (one span
        per run, not two): the ``job.*`` attributes and the outcome are set on it, and its owner
        keeps making it current, setting its status and ending it.
        ``expected_every``: how often the job must succeed (``instrument(jobs=...)`` wins); left
        unset, the job keeps what its scheduler's entry says (:mod:`otel_jobs.schedules`).
        ``series``: what the run records into, if not this process's instruments for its job
        name and queue (an RQ work horse's run, counted by its worker: integrations/rq_horse).
        ``own_span``: ``span`` is the run's own, opened for it by :meth:`open_span` (in the
        process that forked this one): the run makes it current, sets its status and ends it.
        """
        if not self.serving:  # the process's first run: it runs jobs, so it serves
            self.start_serving()
        settings = self.settings
        # OTLP strings are UTF-8: a name from a non-UTF-8 file name (lone surrogates) would fail
        # the encoding of its span's whole batch. Replaced as in the metrics' labels.
        queue = queue or "default"
        if not (
            name.isascii() and queue.isascii() and (not isinstance(job_id, str) or job_id.isascii())
        ):  # three method calls on the usual ASCII run, not three function calls
            name, queue = utf8(name), utf8(queue)
            if isinstance(job_id, str):
                job_id = utf8(job_id)
        if series is None:
            series = self.telemetry.series(name, queue)
        configured = settings.for_job(name)
        max_d = (
            configured.max_duration or max_duration or native_max_duration or settings.max_duration
        )
        beat = configured.heartbeat_timeout or heartbeat_timeout or settings.heartbeat_timeout
        series.max_duration = max_d
        series.heartbeat_timeout = beat
        every = configured.expected_every or expected_every
        if every is not None:
            series.expected_every = every
        run = Run(
            self, name, queue, job_id, attempt, framework, series, max_d, beat,
            configured.on_stall or on_stall or settings.on_stall,
        )  # fmt: skip
        attrs = job_attributes(name, queue, attempt, framework, job_id)
        if attributes:
            attrs.update(attributes)
        # try/except rather than errors.guard(): a generator context manager costs about a
        # microsecond per use, on every run (bench/bench_core.py).
        try:
            if span is not None:
                run.span, run.owns_span = span, own_span
                if not own_span and span.is_recording():
                    span.set_attributes(attrs)
            else:
                run.span = self.tracer.start_span(
                    name, context=parent, kind=SpanKind.CONSUMER, attributes=attrs, links=links
                )
        except RecursionError:
            raise  # no stack left for a run: the job's call fails here as it would deeper down
        except Exception as exc:
            errors.record("run.start", exc)
        # Counted before it enters the in-flight table, so that no snapshot (a forked child's
        # watchdog tick) can show the run in progress without its start.
        try:
            series.record_start()
            if enqueued_at is not None:
                series.record_queue_wait(run.start_wall - enqueued_at)
        except RecursionError:
            pass  # the span has started: the run goes on, uncounted, rather than lose it
        except Exception as exc:
            errors.record("run.start", exc)
        # One dict store, atomic under the GIL, without the lock: what the lock serialises is
        # the end of a run against the watchdog's cancel (if_in_flight, finish_run).
        self._runs[run.key] = run
        return run

    def finish_run(
        self,
        run: Run,
        outcome: str,
        exc: BaseException | None,
        expected: bool = False,
        ended: tuple[float, int] | None = None,
    ) -> None:
        """Called once by :meth:`Run.finish`.

        The span is ended whatever recording it raises, even a ``BaseException`` (a
        ``__str__`` of the job's exception that raises ``SystemExit``): that is counted as an
        internal error and never replaces the job's own exception for the caller.
        ``ended``: when the run ended (monotonic seconds, Unix nanoseconds), if not now.

        A ``RecursionError`` (no stack left) is raised, for :meth:`Run.finish` to call this again
        from a shallower frame; ``run.recorded`` says which steps are done, so none is done twice.
        """
        end_mono, end_ns = ended if ended is not None else (time.monotonic(), None)
        with self._lock:
            self._runs.pop(run.key, None)
        self.lease.ended(run)  # a set lookup; wakes the lease thread if it lists the run
        done = run.recorded
        if not done & _COUNTED:
            try:
                run.series.record_finish(outcome, end_mono - run.start_mono)
                if self.pusher is not None:
                    self.pusher.run_finished(run.series.job_name)
            except RecursionError:
                raise
            except Exception as err:
                errors.record("run.finish", err)
            run.recorded = done = done | _COUNTED
        span = run.span
        if not done & _RECORDED:
            try:
                if span.is_recording():
                    span.set_attribute("job.outcome", outcome)
                    if run.progress is not None:
                        span.set_attribute("job.progress", run.progress)
                    if run.owns_span and (exc is not None or outcome in FAILED):
                        record_outcome(span, outcome, exc, expected)  # (not an adopted span's)
            except RecursionError:
                raise
            except BaseException as err:  # noqa: B036 - see the docstring
                errors.record("run.finish", err)
            run.recorded = done = done | _RECORDED
        if run.owns_span and not done & _ENDED:
            try:
                span.end(end_time=end_ns)
            except RecursionError:
                raise
            except BaseException as err:  # noqa: B036
                errors.record("run.finish", err)
            run.recorded = done | _ENDED
        if run.pid != self.share.owner_pid and self._telemetry is not None:  # a forked child
            self.share.flush_or_mark_stale(self._telemetry.registry)

    # Runs another process ran (an RQ work horse): counted and given their span here.
    open_span = forked_runs.open_span
    series_for = forked_runs.series_for
    count_start = forked_runs.count_start
    count_finish = forked_runs.count_finish

    #: Record the end of a run whose process died: :func:`otel_jobs.core.lost_runs.record_lost_run`.
    record_lost_run = lost_runs.record_lost_run


# --- the one agent of this process --------------------------------------------------------

_agent: Agent | None = None
_agent_lock = threading.Lock()
_fork_hook_registered = False


def current() -> Agent | None:
    """The running agent, or None when otel-jobs is not instrumented."""
    return _agent


def _after_fork_in_child() -> None:
    global _agent_lock
    _agent_lock = threading.Lock()
    agent = _agent
    if agent is not None:
        with errors.guard("fork"):
            agent.after_fork_in_child()


def install(agent: Agent) -> None:
    global _agent, _fork_hook_registered
    _agent = agent
    if not _fork_hook_registered and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_registered = True


def uninstall() -> Agent | None:
    global _agent
    agent, _agent = _agent, None
    return agent


def lock() -> threading.Lock:
    return _agent_lock
