"""What the watchdog does to a stuck run beyond its signals: the ``cancel`` and ``exit`` policies.

:mod:`otel_jobs.core.watchdog` decides (a verdict, and that the run's policy applies now); this
module acts, on the watchdog's thread, after the decisions:

* :func:`cancel`: a run in a thread gets :class:`WatchdogTimeoutError` raised inside it
  (:mod:`otel_jobs.core.thread_exception`), only while it is still the run in flight in that
  thread (checked under the in-flight table's lock: :meth:`Agent.if_in_flight`), so the
  exception never lands in the thread's next job; an asyncio run gets ``task.cancel()`` through
  its loop, in the loop's thread. If the exception lands in an integration's hook instead (the
  job ended just then), :func:`_settle_landed_cancel` finishes the run there as ``timeout``.
* :func:`exit_process`: the stuck run finished as ``timeout``, the others in flight as
  ``cancelled``, telemetry flushed (a forked child's snapshot written), then ``os._exit`` with
  :data:`EXIT_STATUS`. Never a signal: ``SIGTERM`` would start a warm shutdown waiting for the
  stuck run.

Never raises into the watchdog: the callers guard each call.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from . import errors, providers
from .errors import JobTimeoutError
from .run import current_run
from .thread_exception import raise_thread_exception

if TYPE_CHECKING:
    from .agent import Agent
    from .diagnosis import Diagnosis
    from .run import Run

logger = logging.getLogger("otel_jobs")

#: Exit status of a process ended by the ``exit`` policy (``EX_TEMPFAIL``).
EXIT_STATUS = 75
#: How long the ``exit`` policy waits for spans and metrics to be exported.
EXIT_FLUSH_MILLIS = 5000
#: While a cancelled run is still in flight, the cancellation is repeated this often.
CANCEL_REPEAT_SECONDS = 5.0


_CANCEL_MESSAGE = (
    "otel-jobs watchdog cancelled this run: it stalled (no heartbeat) or overran its max "
    "duration; see the stall span and the WARNING log"
)


class WatchdogTimeoutError(JobTimeoutError):
    """The :class:`~otel_jobs.JobTimeoutError` the ``cancel`` policy raises inside a run.

    The C API raises an exception class, instantiated with no arguments inside the run: this
    subclass gives it a message that says what happened.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or (_CANCEL_MESSAGE,)))


def _settle_landed_cancel(exc: BaseException) -> bool:
    """For :data:`errors.cancel_landed`: finish the run the cancel was meant for as timeout."""
    if not isinstance(exc, WatchdogTimeoutError):
        return False
    run = current_run()
    if run is not None and run.cancelled_by_watchdog and not run.finished:
        run.finish("timeout", exc)
    return True


errors.cancel_landed = _settle_landed_cancel


def apply(agent: Agent, run: Run, diagnosis: Diagnosis, now: float) -> None:
    """The run's policy on its new verdict: :func:`cancel`, :func:`exit_process`, or nothing
    (``observe``)."""
    if run.on_stall == "cancel":
        cancel(agent, run, diagnosis, now)
    elif run.on_stall == "exit":
        exit_process(agent, run, diagnosis)


def cancel(agent: Agent, run: Run, diagnosis: Diagnosis, now: float) -> None:
    """Cancel ``run`` (its task, or its thread), and note when in ``diagnosis.acted_at``."""
    diagnosis.acted_at = now
    if run.task is not None and run.loop is not None:
        _cancel_task(run)
    elif not cancel_thread(agent, run) and not run.finished:
        logger.warning(
            "otel-jobs: cannot cancel run %s of %s: its thread was not found",
            run.job_id or run.key,
            run.name,
        )


def cancel_thread(agent: Agent, run: Run) -> bool:
    """Raise the timeout in the run's thread, only if the run is still in flight there."""
    thread_id = run.thread_id
    if thread_id is None:
        return False

    def raise_it() -> bool:
        # Under the in-flight table's lock: finish_run takes the run out under it, so the
        # exception cannot land in a later job of the thread.
        run.cancelled_by_watchdog = True
        return raise_thread_exception(thread_id, WatchdogTimeoutError)

    return agent.if_in_flight(run, raise_it) is True


def _cancel_task(run: Run) -> None:
    task, loop = run.task, run.loop
    assert task is not None and loop is not None

    def cancel() -> None:
        # In the loop's thread: a run that finished meanwhile is left alone.
        if not run.finished and not task.done():
            run.cancelled_by_watchdog = True
            task.cancel("otel-jobs watchdog: the run stalled or overran its max duration")

    try:
        loop.call_soon_threadsafe(cancel)
    except RuntimeError:  # the loop is closed: nothing left to cancel
        pass


def exit_process(agent: Agent, run: Run, diagnosis: Diagnosis) -> None:
    """Flush telemetry, then end the process (see the module docstring)."""
    logger.critical(
        "otel-jobs: ending worker process %d with exit status %d (policy exit): run %s of %s "
        "is %s; telemetry flushed first",
        os.getpid(),
        EXIT_STATUS,
        run.job_id or run.key,
        run.name,
        diagnosis.verdict,
        extra=diagnosis.extra(run),
    )
    with errors.guard("watchdog.exit"):
        run.cancelled_by_watchdog = True
        run.finish("timeout", WatchdogTimeoutError())
    for other in agent.runs():
        with errors.guard("watchdog.exit"):
            if other.span.is_recording():
                other.span.add_event(
                    "otel_jobs.process_exit", {"otel_jobs.exit_status": EXIT_STATUS}
                )
            other.finish("cancelled")
    with errors.guard("watchdog.exit"):
        if agent.share.in_child:
            agent.share.flush(agent.telemetry.registry)
    with errors.guard("watchdog.exit"):
        providers.flush(EXIT_FLUSH_MILLIS)
    for handler in (*logging.getLogger().handlers, *logger.handlers):
        with errors.guard("watchdog.exit"):
            handler.flush()
    os._exit(EXIT_STATUS)
