"""Dramatiq: every message an actor processes becomes one run (:class:`OtelJobsMiddleware`).

For users (where to call ``instrument()``, the launcher, what a run records, outcomes, dead
letters, queue wait, trace context, async actors): docs/frameworks/dramatiq.md. For a code
reader:

* :class:`Integration` wraps ``dramatiq.Broker.__init__`` so that every broker created
  afterwards gets the middleware, and adds it to the brokers that exist already
  (:mod:`.dramatiq_brokers`); a broker created with ``middleware=[]`` is left alone.
  :func:`attach` / :func:`detach` add it to or take it off one broker. ``uninstrument()``
  restores ``__init__`` and removes the middleware everywhere.
* The middleware goes first in the broker's list: its ``before_*`` hooks run first (the run
  starts before another middleware can skip the message) and its ``after_*`` hooks last (the
  outcome is decided once ``Retries`` has chosen between a retry and the dead-letter queue).
* The run is activated in the worker thread that runs the actor; an async actor's run follows
  its coroutine onto Dramatiq's event-loop thread (:mod:`.dramatiq_async`), where the
  watchdog's ``cancel`` policy cancels the coroutine's task.
* The message options ``otel_jobs_trace`` (the sender's trace context) and ``otel_jobs_due``
  (a delayed message's due time, copied as it leaves the delay queue, where Dramatiq drops
  ``eta``) are written by this middleware; a message lost more than ``--max-lost`` times is
  failed by :mod:`.dramatiq_lost`.
* :func:`main` (``python -m otel_jobs.integrations.dramatiq``) instruments the parent process,
  then runs Dramatiq's command line, so the worker processes it forks are instrumented by it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import weakref
from typing import TYPE_CHECKING, Any

import dramatiq
import dramatiq.broker
from dramatiq.common import q_name
from dramatiq.middleware import Middleware, Retries, SkipMessage, TimeLimit, TimeLimitExceeded
from dramatiq.middleware.shutdown import Shutdown
from opentelemetry import propagate

from ..core import errors, shutdown
from ..core.patching import Patches
from ..core.run import classify
from . import leases
from .base import Integration as BaseIntegration
from .dramatiq_async import bind_run_to_coroutine
from .dramatiq_brokers import existing_brokers, no_middleware_asked
from .dramatiq_lost import lost_too_often

if TYPE_CHECKING:
    from ..core.agent import Agent
    from ..core.run import Run

logger = logging.getLogger("otel_jobs")

#: The message option that carries a delayed message's due time (ms) to the worker.
DUE_OPTION = "otel_jobs_due"
#: The message option that carries the publisher's trace context to the run.
TRACE_OPTION = "otel_jobs_trace"
_RUN_ATTR = "_otel_jobs_run"
_LOST_ATTR = "_otel_jobs_lost"
#: How to end a warm shutdown that waits for a stalled message (dramatiq's CLI forwards every
#: SIGTERM or SIGINT to its worker processes, which exit at the second).
FORCE_SHUTDOWN = (
    "Dramatiq waits up to --worker-shutdown-timeout (10 minutes by default); to stop it now, "
    "send the dramatiq process SIGTERM (or Ctrl+C) again: its worker processes exit at once."
)


def _native_limit(broker: dramatiq.Broker, message: Any) -> float | None:
    """The time limit Dramatiq enforces on this message, in seconds (None: no TimeLimit)."""
    for middleware in broker.middleware:
        if isinstance(middleware, TimeLimit):
            limit = message.options.get("time_limit")
            if not limit:
                actor = broker.actors.get(message.actor_name)
                options = actor.options if actor is not None else {}
                limit = options.get("time_limit", middleware.time_limit)
            return float(limit) / 1000.0 if limit else None
    return None


def _has_retries(broker: dramatiq.Broker) -> bool:
    return any(isinstance(m, Retries) for m in broker.middleware)


class OtelJobsMiddleware(Middleware):
    """Maps Dramatiq's message hooks onto otel-jobs runs (see the module docstring).

    ``instrument()`` adds it to every broker; adding it by hand (:func:`attach`) is only needed
    for a broker created with ``middleware=[]``, or created before ``instrument()`` and bound to
    neither the global broker nor a module-level name:

    >>> otel_jobs.integrations.dramatiq.attach(broker)
    """

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._zeroed: set[tuple[str, str]] = set()
        self._zeroed_in: Any = None

    def _zero_dead_letters(self, series: Any) -> None:
        # The dead-letter counter exists at 0 from a job's first run, so that increase() in an
        # alert sees the first dead letter. Per Telemetry: a forked child starts with its own.
        telemetry = self.agent.telemetry
        if self._zeroed_in is not telemetry:
            self._zeroed_in, self._zeroed = telemetry, set()
        key = (series.job_name, series.queue)
        if key not in self._zeroed:
            telemetry.dead_lettered.labels(*key)
            self._zeroed.add(key)

    @errors.guarded("integration.dramatiq")
    def before_worker_boot(self, broker: dramatiq.Broker, worker: Any) -> None:
        self.agent.start_serving()  # the process becomes a worker (see core.agent)

    @errors.guarded("integration.dramatiq")
    def before_worker_shutdown(self, broker: dramatiq.Broker, worker: Any) -> None:
        # Worker.stop(): the worker threads are asked to finish their message and joined.
        shutdown.begin(self.agent, "Dramatiq", FORCE_SHUTDOWN)

    @errors.guarded("integration.dramatiq")
    def before_enqueue(self, broker: dramatiq.Broker, message: Any, delay: int | None) -> None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        # Dramatiq re-enqueues due messages from the delay queue with no span current: keep
        # the context the message already carries rather than erase it.
        if carrier:
            message.options[TRACE_OPTION] = carrier

    @errors.guarded("integration.dramatiq")
    def before_delay_message(self, broker: dramatiq.Broker, message: Any) -> None:
        eta = message.options.get("eta")
        if isinstance(eta, (int, float)):
            message.options[DUE_OPTION] = eta

    def before_process_message(self, broker: dramatiq.Broker, message: Any) -> None:
        self._start(broker, message)
        why = message.__dict__.get(_LOST_ATTR)
        if why is not None:  # a poison message: failed into the dead-letter queue, not run
            message.fail()
            raise SkipMessage(f"otel-jobs: {why}")

    @errors.guarded("integration.dramatiq")
    def _start(self, broker: dramatiq.Broker, message: Any) -> None:
        agent = self.agent
        agent.defer_snapshots_to_watchdog()  # a worker process runs many messages of many actors
        options = message.options
        due = options.get(DUE_OPTION) or message.message_timestamp
        carrier = options.get(TRACE_OPTION)
        run = agent.start_run(
            message.actor_name,
            queue=q_name(message.queue_name),
            job_id=message.message_id,
            attempt=int(options.get("retries") or 0) + 1,
            framework="dramatiq",
            native_max_duration=_native_limit(broker, message),
            enqueued_at=due / 1000.0 if isinstance(due, (int, float)) else None,
            parent=propagate.extract(carrier) if isinstance(carrier, dict) else None,
        )
        self._zero_dead_letters(run.series)
        run.activate()
        leases.dramatiq_started(agent, run, broker, message)
        # MessageProxy has a __dict__: the run travels with the message to the after hooks.
        message.__dict__[_RUN_ATTR] = run
        why = lost_too_often(agent, run, message)  # no I/O unless RabbitMQ redelivered it
        if why is not None:
            message.__dict__[_LOST_ATTR] = why

    @errors.guarded("integration.dramatiq")
    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: Any,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        run: Run | None = message.__dict__.pop(_RUN_ATTR, None)
        if run is None:
            return
        try:
            run.finish(self._outcome(broker, message, exception), exception)
        finally:
            run.deactivate()

    def _outcome(self, broker: dramatiq.Broker, message: Any, exc: BaseException | None) -> str:
        if exc is None:
            # A middleware may fail the message in its before hook: the actor never ran.
            return "cancelled" if message.failed else "success"
        if isinstance(exc, TimeLimitExceeded):
            return "timeout"
        if isinstance(exc, Shutdown):
            return "cancelled"
        outcome = classify(exc)
        if outcome != "failure":
            return outcome
        # Our after hook runs after Retries': a message it did not fail was re-enqueued.
        if not message.failed and _has_retries(broker):
            return "retry"
        return "failure"

    @errors.guarded("integration.dramatiq")
    def after_skip_message(self, broker: dramatiq.Broker, message: Any) -> None:
        run: Run | None = message.__dict__.pop(_RUN_ATTR, None)
        if run is None:
            return
        lost = message.__dict__.pop(_LOST_ATTR, None)
        try:
            run.finish("cancelled", SkipMessage(f"otel-jobs: {lost}") if lost else None)
        finally:
            run.deactivate()

    @errors.guarded("integration.dramatiq")
    def after_nack(self, broker: dramatiq.Broker, message: Any) -> None:
        # A nack is Dramatiq's only road to the dead-letter queue (both brokers).
        agent = self.agent
        series = agent.telemetry.series(message.actor_name, q_name(message.queue_name))
        agent.telemetry.record_dead_lettered(series)
        if agent.share.in_child:
            agent.share.flush_or_mark_stale(agent.telemetry.registry)


class Integration(BaseIntegration):
    """Adds :class:`OtelJobsMiddleware` to every broker; removes it on uninstall."""

    name = "dramatiq"

    def __init__(self, agent: Agent) -> None:
        super().__init__(agent)
        self.middleware = OtelJobsMiddleware(agent)
        self._patches = Patches()
        self._brokers: weakref.WeakSet[dramatiq.Broker] = weakref.WeakSet()

    def install(self) -> None:
        attach = self.attach

        def make_init(original: Any) -> Any:
            def __init__(broker: dramatiq.Broker, *args: Any, **kwargs: Any) -> None:
                original(broker, *args, **kwargs)
                with errors.guard("integration.dramatiq"):
                    if not no_middleware_asked(args, kwargs):
                        attach(broker)

            return __init__

        self._patches.wrap(dramatiq.Broker, "__init__", make_init)
        try:
            from dramatiq.asyncio import EventLoopThread
        except ImportError:  # a Dramatiq without async actors
            pass
        else:
            self._patches.wrap(EventLoopThread, "run_coroutine", bind_run_to_coroutine)
        global _installed
        _installed = self
        for broker in existing_brokers():
            if broker.middleware:  # an empty list can only have been asked for: left alone
                self.attach(broker)
        self._warn_if_per_process()

    def uninstall(self) -> None:
        global _installed
        if _installed is self:
            _installed = None
        self._patches.undo()
        for broker in list(self._brokers):
            with errors.guard("uninstall"):
                broker.middleware[:] = [m for m in broker.middleware if m is not self.middleware]
        self._brokers = weakref.WeakSet()

    def attach(self, broker: dramatiq.Broker) -> None:
        """Put the middleware on ``broker`` (once)."""
        if any(isinstance(m, OtelJobsMiddleware) for m in broker.middleware):
            return
        # First in the list: Dramatiq runs after_* hooks in reverse order, so ours runs last,
        # once Retries has decided between a retry and the dead-letter queue.
        broker.middleware.insert(0, self.middleware)
        self._brokers.add(broker)

    def detach(self, broker: dramatiq.Broker) -> None:
        """Take the middleware off ``broker``."""
        broker.middleware[:] = [
            m for m in broker.middleware if not isinstance(m, OtelJobsMiddleware)
        ]
        self._brokers.discard(broker)

    def _warn_if_per_process(self) -> None:
        # instrument() called in a process the dramatiq CLI started, and the port was taken
        # by a sibling: this process's runs are on no endpoint. Say how to fix it.
        agent = self.agent
        in_cli_worker = "dramatiq.cli" in sys.modules and multiprocessing.parent_process()
        if in_cli_worker and agent.server_error is not None and not agent.share.in_child:
            logger.warning(
                "otel-jobs: instrument() was called in Dramatiq worker process %d and another "
                "process already serves /metrics on that port, so the runs of this process are "
                "not exported. Start the worker with `python -m otel_jobs.integrations.dramatiq "
                "<dramatiq arguments>` so that one endpoint serves every worker process.",
                os.getpid(),
            )


_installed: Integration | None = None


def attach(broker: dramatiq.Broker) -> None:
    """Record the runs of ``broker`` too: one created with ``middleware=[]``, which otel-jobs
    leaves alone, or one it could not find (see the module docstring). Does nothing when
    otel-jobs is not instrumented.

    >>> broker = RedisBroker(url=REDIS_URL, middleware=[])
    >>> otel_jobs.integrations.dramatiq.attach(broker)
    """
    if _installed is not None:
        _installed.attach(broker)


def detach(broker: dramatiq.Broker) -> None:
    """Take otel-jobs' middleware off ``broker``: its messages are no longer runs.

    >>> otel_jobs.integrations.dramatiq.detach(stub_broker)  # list positions as without otel-jobs
    """
    if _installed is not None:
        _installed.detach(broker)
    else:
        broker.middleware[:] = [
            m for m in broker.middleware if not isinstance(m, OtelJobsMiddleware)
        ]


def main(**options: Any) -> int:
    """Instrument this process, then run Dramatiq's command line with this process's arguments.

    ``python -m otel_jobs.integrations.dramatiq <dramatiq arguments>`` calls it with no options
    (they come from the ``OTEL_JOBS_*`` environment variables); a launcher script passes them
    in code:

    >>> from otel_jobs.integrations.dramatiq import main
    >>> raise SystemExit(main(jobs={"build_report": {"heartbeat_timeout": 60}}))

    The parent process serves ``/metrics`` for every worker process it forks (see the module
    docstring). A reload (``SIGHUP``, ``--watch``) re-executes the same command.
    """
    from dramatiq.cli import main as dramatiq_main
    from dramatiq.cli import make_argument_parser

    import otel_jobs

    args = make_argument_parser().parse_args(sys.argv[1:])
    # On reload Dramatiq runs os.execvp(sys.argv[0], sys.argv): make that the interpreter and
    # this command (a module run as __main__ or a launcher script), not a bare .py path.
    script = os.path.abspath(sys.argv[0])
    here = os.path.abspath(__file__)
    command = ["-m", "otel_jobs.integrations.dramatiq"] if script == here else [script]
    sys.argv = [sys.executable, *command, *sys.argv[1:]]
    # A worker launcher: it serves /metrics for the worker processes it forks, from the start.
    otel_jobs.instrument(**{"start": "eager", **options})
    return int(dramatiq_main(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
