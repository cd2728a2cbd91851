"""The worker's main process records the runs its prefork children did not finish.

A child killed by the hard time limit, by ``revoke(terminate=True)`` or lost
(``WorkerLostError``) cannot record its run's end; the main process sees the task's failure or
revoke signal and records it there, exactly once per task id. The child counted the run's start
in its snapshot unless it took none since the run began; the main process counts it otherwise.
The run's span: see :meth:`.contrib.ContribSpans.child_span_check`.
"""

from __future__ import annotations

import os
import sys
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate

from .request import FRAMEWORK, native_limit, queue_of

if TYPE_CHECKING:
    from ...core.agent import Agent
    from .contrib import ContribSpans

_LOST_MEMORY = 4096  # task ids already recorded as lost, so a second signal for one is ignored


def in_pool_child() -> bool:
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


class LostRuns:
    """The requests this worker received, and the runs of its children recorded as lost."""

    def __init__(self, agent: Agent, contrib: ContribSpans) -> None:
        self.agent = agent
        self.contrib = contrib
        # Kept weakly: the worker holds each request while it is reserved or running.
        self._requests: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
        self._lost: OrderedDict[str, None] = OrderedDict()

    def received(self, request: Any) -> None:
        """``task_received``: remember the worker's request for its task id."""
        task_id = getattr(request, "id", None)
        if task_id is not None:
            self._requests[task_id] = request

    def request(self, task_id: str) -> Any:
        """The worker's request for ``task_id``, while the worker holds it; else None."""
        return self._requests.get(task_id)

    def failed(self, task_id: str, exception: BaseException | None) -> None:
        """``task_failure`` in a process that did not run the task: a child killed or lost."""
        from billiard.exceptions import WorkerLostError
        from celery.exceptions import TimeLimitExceeded

        if not isinstance(exception, (WorkerLostError, TimeLimitExceeded)):
            return  # reported by the process that ran it (or never started)
        request = self._requests.get(task_id)
        if request is None or not ran_elsewhere(request):
            return
        timeout = isinstance(exception, TimeLimitExceeded)
        self.record(request, task_id, "timeout" if timeout else "failure", exception)

    def record(self, request: Any, task_id: str, outcome: str, exc: BaseException | None) -> None:
        """Record a run its pool child did not finish, counted now (once per task id). Its
        span: with the contrib instrumentation, a child stopped by SIGTERM ends the contrib span
        on its way out (the run's one span) and leaves a note once it is exported; the main
        process waits for the child to exit and emits a span of its own only when no note came
        (SIGKILL, a child stuck in C code, an exporter slower than billiard's 0.1 s before
        SIGKILL)."""
        if not self._remember(task_id):
            return
        request_dict = getattr(request, "request_dict", None) or {}
        task = getattr(request, "task", None)
        limit = native_limit(task, getattr(request, "time_limits", None)) if task else None
        parent = None
        if request_dict.get("traceparent"):
            parent = propagate.extract(request_dict)
        pid: int = request.worker_pid  # set: the callers checked ran_elsewhere
        written = self.agent.share.written_at(pid)
        self.agent.record_lost_run(
            request.name,
            queue=queue_of(getattr(request, "delivery_info", None)),
            job_id=task_id,
            attempt=int(request_dict.get("retries") or 0) + 1,
            framework=FRAMEWORK,
            started_at=request.time_start,
            count_start=written is None or written < request.time_start,
            outcome=outcome,
            exc=exc,
            parent=parent,
            native_max_duration=limit,
            span_exported_elsewhere=(
                self.contrib.child_span_check(task_id, pid) if self.contrib.in_use() else None
            ),
        )

    def _remember(self, task_id: str) -> bool:
        """True the first time ``task_id`` is recorded as lost."""
        if task_id in self._lost:
            return False
        self._lost[task_id] = None
        if len(self._lost) > _LOST_MEMORY:
            self._lost.popitem(last=False)
        return True


def ran_elsewhere(request: Any) -> bool:
    """Started (accepted by a pool child) in another process than this one."""
    pid = getattr(request, "worker_pid", None)
    return getattr(request, "time_start", None) is not None and pid not in (None, os.getpid())
