"""One span per run when opentelemetry-instrumentation-celery is enabled too: adopt its span.

The contrib instrumentation owns the adopted span (making it current, its status, its end);
otel-jobs only adds its ``job.*`` attributes and outcome. In a prefork pool the main process must
also know whether its children's runs have such spans, to emit a span for a killed child's run
only when the child did not export one: :mod:`.shared_files` carries that between processes.
Reads one private attribute of that instrumentation (``CeleryInstrumentor._instance``), here only.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from ...core import errors, providers
from ...core.multiprocess import pid_alive
from . import shared_files
from .request import FRAMEWORK, hard_limit

if TYPE_CHECKING:
    from ...core.agent import Agent
    from ...core.run import Run

_ADOPT_LATER = "_otel_jobs_adopt_later"  # attribute of a request: adopt the span at the end
CHILD_EXIT_WAIT = 30.0  # how long the main process waits for a stopped child to exit


def active() -> bool:
    """Whether opentelemetry-instrumentation-celery is instrumenting in this process."""
    module = sys.modules.get("opentelemetry.instrumentation.celery")
    instance = getattr(getattr(module, "CeleryInstrumentor", None), "_instance", None)
    return bool(getattr(instance, "is_instrumented_by_opentelemetry", False))


def span_of(task: Any, task_id: str) -> trace.Span | None:
    """The contrib instrumentation's span of this execution, if it opened one yet."""
    try:
        from opentelemetry.instrumentation.celery import utils
    except ImportError:
        return None
    found = utils.retrieve_context(task, task_id)
    return found[0] if found else None


class ContribSpans:
    """The contrib spans of one worker process: adopting, labelling, telling the main process."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self._marked_pid: int | None = None  # the process that left the contrib marker
        self._ending: list[str] = []  # a stopped child: task ids whose contrib span it ends

    def span_at_start(self, task: Any, task_id: str, request: Any) -> trace.Span | None:
        """At ``task_prerun``: the span the run adopts (None: contrib not enabled here)."""
        if not active():
            return None
        # Before the task runs, not when its span is adopted: a first run stopped by the hard
        # time limit must already tell the main process.
        self._mark()
        span = span_of(task, task_id)
        if span is None:
            # Its receiver runs after ours (connected later, e.g. in worker_process_init):
            # adopt the span when the run ends.
            setattr(request, _ADOPT_LATER, True)
            return trace.INVALID_SPAN
        return span

    def adopt_later(self, request: Any, task: Any, run: Run) -> None:
        """Adopt the contrib span that was not there yet when the run started."""
        task_id = run.job_id
        if not getattr(request, _ADOPT_LATER, False) or task_id is None:
            return
        setattr(request, _ADOPT_LATER, False)
        span = span_of(task, task_id) if task is not None else None
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

    def _mark(self) -> None:
        share = self.agent.share
        pid = os.getpid()
        if self._marked_pid == pid or not share.in_child:
            return
        self._marked_pid = pid
        with errors.guard("integration.celery.marker"):
            shared_files.leave_contrib_marker(share)

    def in_use(self) -> bool:
        """Whether the runs of this worker have contrib spans (main process or children)."""
        if active():
            return True
        return shared_files.contrib_marker_left(self.agent.share)

    def label_ending(self, request: Any, task: Any, run: Run) -> None:
        """A pool child stopped mid-run: give the contrib span, which its owner ends on the way
        out and which is the run's one span, the outcome the main process counts."""
        self.adopt_later(request, task, run)
        if run.owns_span or run.job_id is None:
            return  # no contrib span: the main process emits the run's span
        self._ending.append(run.job_id)
        if not run.span.is_recording():
            return
        elapsed = time.monotonic() - run.start_mono
        hard = hard_limit(task, getattr(request, "timelimit", None))
        # The pool's clock starts when the child accepts the job, a little before this run's
        # start: a small tolerance, so that a run stopped by the hard limit is never cancelled.
        timeout = hard is not None and elapsed >= hard - min(0.5, hard / 10)
        run.span.set_attribute("job.outcome", "timeout" if timeout else "cancelled")

    def flush_ending(self) -> None:
        """A pool child exiting: export the spans, then note the ones of stopped runs."""
        ending, self._ending = self._ending, []
        if ending and providers.flush(2000, spans_only=True):
            # Exported: tell the main process not to emit a span of its own for these runs.
            for task_id in ending:
                with errors.guard("integration.celery.note"):
                    shared_files.leave_span_note(self.agent.share, task_id)

    def child_span_check(self, task_id: str, pid: int) -> Callable[[bool], bool | float]:
        """For :meth:`Agent.record_lost_run`: whether the stopped child exported the run's
        contrib span (True), did not (False), or may still (seconds to wait)."""
        share = self.agent.share
        deadline = time.monotonic() + CHILD_EXIT_WAIT

        def check(final: bool) -> bool | float:
            # Alive first, then the note: a child seen dead wrote its note (or never will).
            now = time.monotonic()
            alive = pid_alive(pid)
            if shared_files.span_note_left(share, task_id):
                with errors.guard("integration.celery.note"):
                    shared_files.remove_span_note(share, task_id)
                return True
            if final or not alive or now >= deadline:
                return False
            return 0.2

        return check
