"""What a forked child of an instrumented process gets, and the snapshots it writes for its parent.

An ``os.register_at_fork`` handler (:mod:`otel_jobs.core.agent`) calls :func:`after_fork_in_child`:
empty instruments, an empty in-flight table, fresh locks and the child's own watchdog thread; the
child does not serve ``/metrics`` (its parent does, merging the child's snapshots, see
:mod:`otel_jobs.core.multiprocess`). A child forked to run one job and exit (RQ's work horse,
:func:`forking_one_run`) gets less: no watchdog thread at fork and instruments only if it records
something. Bound as methods of :class:`~otel_jobs.core.agent.Agent`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import errors, providers, streaks
from .telemetry import Telemetry

if TYPE_CHECKING:
    from .agent import Agent


@contextmanager
def forking_one_run(agent: Agent) -> Iterator[None]:
    """Around a fork whose child runs one job and exits (RQ's work horse): the child starts
    no watchdog thread at fork (its integration ticks the watchdog) and builds instruments
    only when it records something; this process counts what the child does not
    (:meth:`~otel_jobs.core.agent.Agent.count_start`,
    :meth:`~otel_jobs.core.agent.Agent.count_finish`)."""
    agent._forking_one_run = True
    try:
        yield
    finally:
        agent._forking_one_run = False


def after_fork_in_child(agent: Agent) -> None:
    """Called in a forked child: fresh state of its own (see the module docstring)."""
    if agent.stopped:
        return
    one_run, agent._forking_one_run = agent._forking_one_run, False
    agent.one_run_child = one_run
    agent._telemetry_lock = threading.Lock()
    errors.reset_after_fork()
    agent._lock = threading.Lock()
    agent._runs = {}
    agent.share.after_fork_in_child()
    agent.deferred.after_fork_in_child()
    agent.lease.after_fork_in_child()
    if agent.server is not None:
        agent.server.close_in_child()
    if one_run:  # the least that makes a fresh process (see forking_one_run)
        agent._telemetry, agent._meter_for_child = None, True
        agent.watchdog.after_fork_in_child(start=False)
        return
    agent._meter_for_child = False
    agent._serve_lock = threading.Lock()
    agent._meter = providers.meter_for_child(agent.settings, agent._meter)
    agent._telemetry = telemetry = Telemetry(agent.settings, agent.runs, agent._meter)
    agent.watchdog.bind(telemetry)
    agent.watchdog.after_fork_in_child()


def in_multiprocessing_child(agent: Agent) -> None:
    """Called by multiprocessing in a child it started, after it cleared the finalizers it
    inherited. Such a child leaves through ``os._exit`` after its finalizers, not atexit: a
    lazy child (a pool process, see core.multiprocess) writes its last counts then."""
    import multiprocessing.util

    multiprocessing.util.Finalize(None, agent.write_snapshot, exitpriority=10)


def snapshot_outcomes(agent: Agent) -> list[list[Any]]:
    """Last success and failure streak of each series, for the snapshot (core.streaks)."""
    return streaks.encode(agent.telemetry.all_series())


def write_snapshot(agent: Agent) -> None:
    """In a forked child: write its metrics snapshot now (a no-op in the owner)."""
    if not agent.stopped and agent.share.in_child:
        with errors.guard("multiprocess.flush"):
            agent.share.flush(agent.telemetry.registry)


def defer_snapshots_to_watchdog(agent: Agent) -> None:
    """Called by an integration as a run starts in a long-lived pool process (a Celery
    prefork child, a Dramatiq or Huey worker process): its snapshot is written by its
    watchdog and when it exits, not at every run's start and end (core.multiprocess)."""
    share = agent.share
    if share.in_child:
        share.lazy = agent.watchdog.running
