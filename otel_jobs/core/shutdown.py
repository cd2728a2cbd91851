"""A warm shutdown that waits for a stalled run: said once per run, with how to force it.

A job framework asked to stop (``SIGTERM`` to a Celery or RQ worker, ``SIGINT`` to a Huey
consumer, ...) stops taking jobs and waits for the runs in flight to end. A stalled run may never
end, and the worker then waits for ever while it looks like it is stopping. Each integration
calls :func:`begin` from its framework's own warm-shutdown hook (Celery's
``worker_shutting_down``, RQ's ``handle_warm_shutdown_request``, Dramatiq's
``before_worker_shutdown``, Huey's graceful ``Consumer.stop``, arq's signal handlers), giving the
framework's real way to force the shutdown. Then, at each watchdog tick, :func:`check` logs one
WARNING per run in flight that is (or becomes) stalled while the shutdown waits: the run's
diagnosis (the verdict, blocked or spinning, the line it waits on) and how to force it. Each run
is told once.

Where the runs are in forked children (Celery's prefork pool, RQ's work horse), the process that
was asked to stop is not the one holding them: its watchdog leaves a file in the multiprocess
directory, ``worker-stopping-<its pid>``, holding the framework and the hint, and a child's
watchdog reads it when it has a stalled run it has not told about (no file read otherwise).
Markers of worker processes that are gone are removed when a new one is written.

Invariants: :func:`begin` may run inside a signal handler (Celery and RQ call their hooks from
theirs), so it only assigns one module attribute: no lock, no logging, no I/O; everything else
happens on the watchdog's thread. Nothing here changes how the framework shuts down.
"""

from __future__ import annotations

import logging
import weakref
from typing import TYPE_CHECKING, NamedTuple

from . import errors

if TYPE_CHECKING:
    from .agent import Agent
    from .run import Run

logger = logging.getLogger("otel_jobs")

#: The marker a worker's main process leaves for its forked children: ``<prefix><pid>``.
MARKER_PREFIX = "worker-stopping-"


class _Request(NamedTuple):
    agent: weakref.ref[Agent]
    framework: str
    force: str


_request: _Request | None = None  # set by begin(), in the process asked to stop
_marked: _Request | None = None  # the request whose marker this process wrote
_told: set[int] = set()  # keys of the runs already reported (watchdog thread only)


def begin(agent: Agent, framework: str, force: str) -> None:
    """``framework``'s worker began a warm shutdown; ``force`` says how to end it without waiting.

    Signal-handler safe (see the module docstring). ``force`` is a sentence, e.g. "To stop it
    without waiting, send SIGQUIT (cold shutdown: the running tasks are terminated)."
    """
    global _request
    _request = _Request(weakref.ref(agent), framework, force)


def check(agent: Agent) -> None:
    """From a watchdog tick: tell about the stalled runs a warm shutdown waits for (once each)."""
    global _marked
    request = _request if _request is not None and _request.agent() is agent else None
    share = agent.share
    in_child = share.in_child
    if request is None and not in_child:
        return  # the common case: nobody asked this worker to stop
    if request is not None and _marked is not request and not in_child:
        _marked = request
        with errors.guard("shutdown"):
            _leave_marker(agent, request)
    stalled = [run for run in agent.runs() if run.verdict is not None and run.key not in _told]
    if not stalled:
        _forget(agent)
        return
    if request is None:
        request = _read_marker(agent)
        if request is None:
            return
    for run in stalled:
        _told.add(run.key)
        with errors.guard("shutdown"):
            _tell(run, request)


def _tell(run: Run, request: _Request) -> None:
    diagnosis = run.diagnosis
    what = diagnosis.summary() if diagnosis is not None else str(run.verdict)
    where = getattr(diagnosis, "where", None)
    logger.warning(
        "otel-jobs: the %s worker is shutting down and waits for its runs in flight to end, but "
        "run %s of %s (queue %s) may never end: it is %s. %s",
        request.framework,
        run.job_id or run.key,
        run.name,
        run.queue,
        what,
        request.force,
        extra={
            "job_name": run.name,
            "job_id": run.job_id,
            "job_queue": run.queue,
            "shutdown_framework": request.framework,
            "shutdown_force": request.force,
            "shutdown_waits_at": str(where) if where is not None else None,
        },
    )


def _marker(pid: int) -> str:
    return f"{MARKER_PREFIX}{pid}"


def _leave_marker(agent: Agent, request: _Request) -> None:
    from .private_files import pid_alive, pid_named

    share = agent.share
    for name in share.names():
        pid = pid_named(name[len(MARKER_PREFIX) :]) if name.startswith(MARKER_PREFIX) else None
        if pid is not None and not pid_alive(pid):
            share.remove(name)
    share.write(_marker(share.owner_pid), f"{request.framework}\n{request.force}".encode())


def _read_marker(agent: Agent) -> _Request | None:
    share = agent.share
    data = share.read(_marker(share.owner_pid), limit=4096)
    if data is None:
        return None
    framework, _, force = data.decode("utf-8", "replace").partition("\n")
    return _Request(weakref.ref(agent), framework, force)


def _forget(agent: Agent) -> None:
    """Drop the keys of runs no longer in flight (the set stays as small as the stalled runs)."""
    if _told:
        in_flight = {run.key for run in agent.runs()}
        _told.intersection_update(in_flight)
