"""SIGTERM where nothing else handles it: record, flush, then end the way the signal says.

A plain process running ``@job`` functions, or an APScheduler process, has no SIGTERM handler
of its own: the default action ends it at once, no ``atexit`` hook runs, and the spans of runs
that finished before the signal die in the batch processor's queue. ``instrument()`` installs
:func:`_on_sigterm` when, and only when:

* it is called in the main thread (where Python runs signal handlers, and the only thread
  allowed to set them), and
* SIGTERM's handler is the default one (``SIG_DFL``). A handler of the application's, or
  ``SIG_IGN``, is left alone. The job frameworks that handle SIGTERM (Celery, RQ, Dramatiq,
  Huey, arq) install their handler when their worker starts, after ``instrument()``, replacing
  this one: they keep shutting down their way (``atexit`` then flushes as usual).

On SIGTERM the handler puts ``SIG_DFL`` back at once (a second SIGTERM ends the process without
waiting), then, in a helper thread it waits for at most :data:`FLUSH_SECONDS`: each run in flight
gets an ``otel_jobs.process_exit`` event and is finished as ``cancelled``, and the agent does
what it does at exit (a forked child's snapshot, spans and metrics flushed, the private
multiprocess directory removed). Then it sends SIGTERM to its own process again: the process
ends by the signal as it would have without otel-jobs (exit status -15, 143 in a shell).

Why a helper thread: the handler runs in the main thread between two bytecodes, possibly while
that thread holds a lock that finishing a run or exporting needs (the in-flight table's, the
logging module's, the batch span processor's). Waited for from the main thread that would
deadlock; from a helper thread, with a bound, it can only delay.

``uninstrument()`` puts ``SIG_DFL`` back if the handler is still this one. Limits: a main thread
inside a C call that does not return to Python on a signal runs the handler (and so ends) only
when that call returns; SIGKILL cannot be caught. To keep the plain default action, set it
back after ``instrument()``: ``signal.signal(signal.SIGTERM, signal.SIG_DFL)``.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

from . import errors

if TYPE_CHECKING:
    from .agent import Agent

#: The longest the handler waits for runs to be recorded and telemetry to be flushed.
FLUSH_SECONDS = 5.0


def install() -> bool:
    """Handle SIGTERM (see the module docstring); False when it is not this module's to handle."""
    if threading.current_thread() is not threading.main_thread():
        return False
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return False
        signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        return False
    return True


def uninstall() -> None:
    """Put the default action back, if the handler is still :func:`_on_sigterm`."""
    if threading.current_thread() is not threading.main_thread():
        return  # a leftover handler finds no agent and only ends the process
    try:
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
    except (ValueError, OSError):
        pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signum, signal.SIG_DFL)
    from .agent import current

    agent = current()
    if agent is not None and not agent.stopped:
        helper = threading.Thread(
            target=_record_and_flush, args=(agent,), name="otel-jobs-sigterm", daemon=True
        )
        try:
            helper.start()
            helper.join(FLUSH_SECONDS)
        except RuntimeError:  # no new threads (the interpreter is shutting down)
            pass
    os.kill(os.getpid(), signum)


def _record_and_flush(agent: Agent) -> None:
    for run in agent.runs():
        with errors.guard("sigterm"):
            if run.span.is_recording():
                run.span.add_event("otel_jobs.process_exit", {"otel_jobs.signal": "SIGTERM"})
            run.finish("cancelled")
    agent.flush_before_exit()
