"""RQ: the forking worker's side of a work horse (:mod:`otel_jobs.integrations.rq`).

RQ's ``Worker`` forks a horse per job (``fork_work_horse``) and waits for it
(``monitor_work_horse``). Around the fork the worker clears the record its horse leaves the run's
end in and opens the run's span (:mod:`.rq_horse`); once the horse has exited it counts the run
from that record. A horse that left no end died mid-job: RQ calls ``handle_job_failure`` for it
and the worker records the run as lost, exactly once (``failure``; ``timeout`` when it killed the
horse for overrunning; ``cancelled`` when stopped by ``send_stop_job_command``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core import errors
from . import rq_horse
from .rq_jobs import attempt, is_spawn_worker, job_name, queue_of, time_limit, unix_time

if TYPE_CHECKING:
    from ..core.agent import Agent

FRAMEWORK = "rq"


class WorkHorseLost(Exception):
    """The work horse running a job ended without finishing it (the span's recorded exception)."""


def before(action: Callable[..., None]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A patch of an RQ method: ``action`` with the call's arguments (guarded: whatever it raises
    is counted, never the call's), then the original."""

    def make(original: Callable[..., Any]) -> Callable[..., Any]:
        def patched(obj: Any, *args: Any, **kwargs: Any) -> Any:
            with errors.guard("integration.rq"):
                action(obj, *args, **kwargs)
            return original(obj, *args, **kwargs)

        return patched

    return make


@dataclass
class _Watch:
    """What the worker knows about the horse it is waiting for."""

    job_id: str
    started: float
    time_limit: float | None
    ret_val: int | None = None
    killed: bool = False
    record: rq_horse.Record | None = None  # where its horse leaves the run's end
    span: Any = None  # the run's span, opened before the fork, ended by the horse
    name: str = ""
    queue: str = "default"
    enqueued_at: float | None = None


class HorseWatch:
    """The worker's patches around its horses (a part of the RQ ``Integration``)."""

    agent: Agent
    _check_job: Callable[[Any], None]

    def __init__(self) -> None:
        self._watching: dict[int, _Watch] = {}  # by id(worker), in a forking worker
        self._record: rq_horse.Record | None = None  # this worker process's (rq_horse)
        self._record_pid = 0

    def watch_hooks(self) -> dict[str, Callable[[Callable[..., Any]], Callable[..., Any]]]:
        """The worker methods patched, by name."""
        return {
            "handle_job_failure": before(self._handle_job_failure),
            "handle_work_horse_killed": before(self._handle_work_horse_killed),
            "monitor_work_horse": self._monitor_work_horse,
            "fork_work_horse": self._fork_work_horse,
        }

    def _fork_work_horse(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def fork_work_horse(worker: Any, job: Any, queue: Any, *args: Any, **kwargs: Any) -> Any:
            counted = False
            with errors.guard("integration.rq"):
                counted = self._count_start(worker, job, queue)
            if not counted:
                return original(worker, job, queue, *args, **kwargs)
            with self.agent.forking_one_run():
                return original(worker, job, queue, *args, **kwargs)

        return fork_work_horse

    def _count_start(self, worker: Any, job: Any, queue: Any) -> bool:
        """In the worker, about to fork a horse for ``job``: the record its horse leaves the
        run's end in, cleared (rq_horse); the run is counted once the horse has exited."""
        agent = self.agent
        if agent.stopped or is_spawn_worker(worker):
            return False
        pid = os.getpid()
        if self._record is None or self._record_pid != pid:  # one per worker process
            self._record, self._record_pid = rq_horse.Record(), pid
        record = self._record
        record.next_horse()
        name = job_name(job)
        queue_name = queue_of(job, queue)
        span = agent.open_span(
            name, queue=queue_name, job_id=job.id, attempt=attempt(job), framework=FRAMEWORK
        )
        self._watching[id(worker)] = _Watch(
            job.id,
            time.time(),
            time_limit(job, worker),
            record=record,
            span=span,
            name=name,
            queue=queue_name,
            enqueued_at=unix_time(job.enqueued_at),
        )
        return True

    def _monitor_work_horse(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def monitor_work_horse(worker: Any, job: Any, *args: Any, **kwargs: Any) -> Any:
            watching = False
            with errors.guard("integration.rq"):
                if not is_spawn_worker(worker):
                    self._check_job(job)
                    watch = self._watching.get(id(worker))
                    if watch is None or watch.job_id != job.id:  # forked without our wrapper
                        self._watching[id(worker)] = _Watch(
                            job.id, time.time(), time_limit(job, worker)
                        )
                    watching = True
            try:
                return original(worker, job, *args, **kwargs)
            finally:
                if watching:
                    watch = self._watching.pop(id(worker), None)
                    with errors.guard("integration.rq"):
                        self._count_end(watch)

        return monitor_work_horse

    def _count_end(self, watch: _Watch | None) -> None:
        """In the worker, its horse gone: the run the horse left the end of, counted here (its
        start too, unless the horse counted it). A horse that left none was recorded as lost by
        _record_lost_horse, or was killed in the instant after RQ saved its job's result."""
        if watch is None or watch.record is None:
            return
        ended = watch.record.read()
        if ended is None:
            return
        agent = self.agent
        series = agent.series_for(watch.name, watch.queue, watch.time_limit)
        if not watch.record.read_start_counted():
            agent.count_start(series, watch.started, watch.enqueued_at)
        agent.count_finish(series, *ended)

    def _handle_work_horse_killed(
        self, worker: Any, job: Any, retpid: Any, ret_val: Any, *args: Any, **kwargs: Any
    ) -> None:
        watch = self._watching.get(id(worker))
        if watch is not None and watch.job_id == job.id:
            watch.killed = True
            watch.ret_val = ret_val

    def _handle_job_failure(self, worker: Any, job: Any, *args: Any, **kwargs: Any) -> None:
        self._record_lost_horse(worker, job, kwargs.get("exc_string", ""))

    def _record_lost_horse(self, worker: Any, job: Any, exc_string: str) -> None:
        # Inside monitor_work_horse, RQ calls handle_job_failure only for a horse that ended
        # without finishing its job (killed, crashed, or stopped on request).
        if worker.is_horse:
            return  # a failure inside the horse: its own run records it
        watch = self._watching.get(id(worker))
        if watch is None or watch.job_id != job.id:
            return
        if watch.record is not None:
            if watch.record.read() is not None:
                return  # the horse ended its run (counted by _count_end, its span emitted)
            if not watch.record.read_start_counted():  # killed before its first tick
                rq_horse.count_lost_start(
                    self.agent, watch.name, watch.queue, watch.enqueued_at, watch.started
                )
        else:
            ret_val = watch.ret_val
            if watch.killed and ret_val is not None and os.WIFEXITED(ret_val):
                if os.WEXITSTATUS(ret_val) == 1:
                    return  # RQ's horse exits with 1 after an error escaped perform_job
        self._watching.pop(id(worker), None)
        elapsed = time.time() - watch.started
        if getattr(worker, "_stopped_job_id", None) == job.id:
            outcome = "cancelled"
        elif watch.time_limit is not None and elapsed > watch.time_limit:
            outcome = "timeout"
        else:
            outcome = "failure"
        message = (exc_string or "work horse ended without finishing the job").strip()
        self.agent.record_lost_run(
            job_name(job),
            queue=job.origin,
            job_id=job.id,
            attempt=attempt(job),
            framework=FRAMEWORK,
            started_at=watch.started,
            outcome=outcome,
            exc=WorkHorseLost(message),
        )
