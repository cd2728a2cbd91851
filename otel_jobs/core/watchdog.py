"""The stuck-run watchdog: one daemon thread per worker process.

``instrument()`` starts it (``OTEL_JOBS_WATCHDOG_ENABLED=false`` turns it off) and a forked
child starts its own. Every ``OTEL_JOBS_WATCHDOG_INTERVAL`` seconds (default 1) it looks at
each run in flight and gives it a verdict:

* *stalled* (reason ``no_heartbeat``): no heartbeat for longer than the run's heartbeat
  timeout. A run's start, each ``heartbeat()`` and each completed instrumented outbound call
  count as heartbeats.
* *overran* (reason ``max_duration``): running for longer than the run's max duration.
* *loop blocked* (reason ``loop_blocked``): the asyncio event loop the run is on has run
  nothing for longer than ``OTEL_JOBS_LOOP_BLOCKED_TIMEOUT`` (a ``time.sleep()`` or a CPU loop
  inside a coroutine). The loops are found through the runs in flight and probed once per tick
  (:mod:`otel_jobs.core.loop_probe`, which also feeds ``otel_jobs_event_loop_lag_seconds`` and
  ``otel_jobs_event_loop_blocked_seconds``). One verdict per blocked loop, given to the run whose
  task holds the loop (else to the oldest run on it), naming the runs it holds up; it clears
  when the loop runs again. A deadline verdict comes first: a run already stalled keeps it.

The thresholds are resolved once per run when it starts (``run.max_duration``,
``run.heartbeat_timeout``, ``run.on_stall``: most specific first, see the README). A verdict
is given within the threshold plus one tick.

On a new verdict the watchdog diagnoses the run without stopping it (its stack, ``blocked`` /
``spinning`` / ``unknown``, the outbound call in flight, the lock or queue it waits on and who
holds it, its blocked loop, its last log records: see :mod:`otel_jobs.core.diagnosis`) and
emits the signals below. A run inside a psycopg statement first has PostgreSQL asked who blocks
it (:mod:`otel_jobs.core.pg_locks`), on a thread of its own so that a tick never waits on a
database; its signals and policy follow the answer (a few seconds at most). The signals:

* a short span named ``"<job name> stalled"`` or ``"<job name> overran"``, a child of the run's
  span and linked to it, ended at once, with the diagnosis as attributes, so that a tracing
  backend shows the stuck run while it is still stuck (the run's own span is exported only
  when it ends); an event ``otel_jobs.stall`` on the run's span;
* one WARNING record on the ``otel_jobs`` logger: a readable message with the stack, and the
  fields as ``extra`` (``job_name``, ``stall_reason``, ``stall_state``, ``stall_where``...);
* ``otel_jobs_stalls_detected_total{reason}`` once per verdict, and
  ``otel_jobs_runs_stalled{state}`` for as long as it stands (the state is looked at again
  each tick: a run can go from blocked to spinning).

A stalled run that heartbeats again recovers: its verdict clears, an INFO record says so and
its span keeps an ``otel_jobs.stall.recovered`` event next to the ``otel_jobs.stall`` one.

Then the run's policy (``on_stall=`` per job, ``OTEL_JOBS_ON_STALL`` globally) applies:

* ``observe`` (default): the signals above, nothing else.
* ``cancel``: a run in a thread gets :class:`otel_jobs.JobTimeoutError` raised inside it
  (``PyThreadState_SetAsyncExc``), only while it is still the run in flight in that thread,
  so the exception never lands in the next job; an asyncio run gets ``task.cancel()`` through
  its loop. Either way it finishes with outcome ``timeout``; if the job ends just as the
  exception is raised and it lands in an integration's hook instead (before the hook finishes
  the run), the run is finished there as ``timeout`` and the job's framework sees no error
  (see :data:`otel_jobs.core.errors.cancel_landed`). Repeated every
  :data:`CANCEL_REPEAT_SECONDS` while the verdict stands, in case the job swallowed it.
  Limits: the exception is raised at the next Python instruction the thread runs, so a thread
  blocked inside a C call (a socket read with no timeout, a lock without timeout, ``time.sleep``)
  is only interrupted when that call returns; a job that catches ``Exception`` can swallow it;
  an asyncio task is only cancelled at its next ``await`` (a coroutine spinning without
  awaiting holds its loop and cannot be cancelled).
* ``exit``: the stuck run is finished with outcome ``timeout`` (the other runs in flight in the
  process with ``cancelled``), spans and metrics are flushed (and a forked child's metrics
  snapshot written), then the process ends with ``os._exit(EXIT_STATUS)`` (75, ``EX_TEMPFAIL``:
  "try again later"). No signal is sent: ``SIGTERM`` would start a warm shutdown that waits for
  the stuck run forever. A queue with late acknowledgement or a visibility timeout then hands the
  job to another worker (see the README for each framework).

The thread protects itself: ``time.monotonic()`` for deadlines; the in-flight table copied
under the agent's lock; verdicts decided on the copy with ticks serialised by the watchdog's
own lock, and the slow actions (diagnosis, logging, spans, cancelling) done after the decisions;
an exception in a tick, or about one run, is logged once and counted in
``otel_jobs_internal_errors_total{component="watchdog"}`` while the thread keeps ticking. A tick
stays cheap: a healthy run far from its deadlines costs two additions and two comparisons; only
runs within one interval of a deadline have their thread's CPU time read, and only runs with a
new verdict are diagnosed (at most :data:`MAX_DIAGNOSES_PER_TICK` per tick, the rest on the
next ones).

A worker asked to stop while a stalled run is in flight waits for that run: each tick lets
:mod:`otel_jobs.core.shutdown` say so, once per run, with how to force the framework's shutdown.

Its own last tick is exported as ``otel_jobs_watchdog_last_tick_timestamp_seconds``; a process
whose Python threads are frozen (a C call holding the GIL) shows by that gauge going stale.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from . import errors, logtail, providers, shutdown
from . import run as run_mod
from .errors import JobTimeoutError
from .loop_probe import Blocked, LoopProbes
from .run import current_run

if TYPE_CHECKING:
    from .agent import Agent
    from .diagnosis import Diagnosis
    from .run import Run

logger = logging.getLogger("otel_jobs")


def _diag() -> Any:
    """:mod:`otel_jobs.core.diagnosis`, imported when the first verdict needs it: with
    :mod:`~otel_jobs.core.waits` it costs a process start-up about 15 ms (inspect, dis,
    asyncio), and most processes never see a stall (bench/bench_startup.py)."""
    from . import diagnosis

    return diagnosis


def _pg_locks() -> Any:
    """:mod:`otel_jobs.core.pg_locks`, imported at the first verdict (see :func:`_diag`)."""
    from . import pg_locks

    return pg_locks


#: Exit status of a process ended by the ``exit`` policy (``EX_TEMPFAIL``).
EXIT_STATUS = 75
#: How long the ``exit`` policy waits for spans and metrics to be exported.
EXIT_FLUSH_MILLIS = 5000
#: While a cancelled run is still in flight, the cancellation is repeated this often.
CANCEL_REPEAT_SECONDS = 5.0
#: New verdicts diagnosed per tick at most (a mass stall is spread over a few ticks).
MAX_DIAGNOSES_PER_TICK = 200
#: Threads whose CPU time is read per tick at most.
MAX_CPU_LOOKS_PER_TICK = 256


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


_set_async_exc = ctypes.pythonapi["PyThreadState_SetAsyncExc"]
_set_async_exc.argtypes = (ctypes.c_ulong, ctypes.py_object)
_set_async_exc.restype = ctypes.c_int
# The same C function with a NULL exception: clears a pending one.
_clear_async_exc = ctypes.pythonapi["PyThreadState_SetAsyncExc"]
_clear_async_exc.argtypes = (ctypes.c_ulong, ctypes.c_void_p)
_clear_async_exc.restype = ctypes.c_int


class Watchdog:
    """See the module docstring."""

    def __init__(self, agent: Agent) -> None:
        self._agent = agent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick_lock = threading.Lock()
        # native thread id -> (monotonic time, CPU seconds) of the previous look at it.
        self._cpu: dict[int, tuple[float, float]] = {}
        # run key -> (run, the inner run its verdict was given under, when that one went away)
        self._covered: dict[int, tuple[Run, Run, float | None]] = {}
        self.ticks = 0
        self.loops = LoopProbes(agent.telemetry)
        agent.telemetry.loops_blocked = self.loops.samples

    def bind(self, telemetry: Any) -> None:
        """New instruments of this process (a forked child's, built by its agent): the loop
        probes record into them, and they read the probes' blocked loops."""
        self.loops.rebind(telemetry)
        telemetry.loops_blocked = self.loops.samples

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop = threading.Event()
        logtail.install()
        self._thread = threading.Thread(target=self._loop, name="otel-jobs-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        logtail.uninstall()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def after_fork_in_child(self, start: bool = True) -> None:
        """A forked child (its agent binds the loop probes to the child's instruments, see
        :meth:`bind`); ``start``: the thread again if it ran here (a child that runs one job
        has its watchdog ticked by its integration instead)."""
        was_running = self._thread is not None
        self._thread = None
        self._tick_lock = threading.Lock()
        self._cpu = {}
        self._covered = {}
        if was_running and start:
            self.start()

    def _loop(self) -> None:
        interval = self._agent.settings.watchdog_interval
        stop = self._stop
        if not self._agent.share.in_child:
            # A forked child starts with no run in flight, and its first runs write their own
            # snapshots: a tick now would only compete with the job for the GIL (an RQ work
            # horse lives for one job).
            self.tick()
        while not stop.wait(interval):
            self.tick()

    def tick(self) -> None:
        """One look at every run in flight (safe to call from tests)."""
        try:
            with self._tick_lock:
                self._tick()
        except Exception as exc:
            errors.record("watchdog", exc)
        agent = self._agent
        with errors.guard("shutdown"):  # a warm shutdown waiting for a stalled run: say so
            shutdown.check(agent)
        agent.telemetry.watchdog_last_tick = time.time()
        self.ticks += 1
        try:  # the lease is renewed from here (no I/O: core.lease wakes its own thread)
            agent.lease.tick()
        except Exception as exc:
            errors.record("lease", exc)
        share = agent.share
        if share.in_child and (agent._runs or share.due()):
            with errors.guard("multiprocess.flush"):
                share.flush(agent.telemetry.registry)

    # --- decisions ------------------------------------------------------------------------

    def _tick(self) -> None:
        agent = self._agent
        interval = agent.settings.watchdog_interval
        with agent._lock:
            runs = list(agent._runs.values())
        now = time.monotonic()
        horizon = now + interval
        # Event loops: last tick's probes read, this tick's sent; the loops that ran nothing
        # for more than a tick (usually none), and the runs given a loop_blocked verdict.
        loops = self.loops
        loops.watch(runs)
        loops.tick(now)
        blocked = loops.blocked(now, interval, runs)
        on_blocked: dict[int, Blocked] = {}
        loop_verdicts: dict[int, Blocked] = {}
        if blocked:
            on_blocked, loop_verdicts = _blocked_loops(blocked, agent.settings.loop_blocked_timeout)
        changed: list[tuple[Run, str | None]] = []
        watched: list[Run] = []  # verdict standing, or a deadline before the next tick
        for run in runs:
            try:
                verdict = run.verdict
                if (
                    verdict is None
                    and run.start_mono + run.max_duration > horizon
                    and run.last_beat + run.heartbeat_timeout > horizon
                    and not (loop_verdicts and run.key in loop_verdicts)
                ):
                    continue  # healthy and not due before the next tick: the common case
                if run.finished:
                    continue
                if now - run.start_mono > run.max_duration:
                    reason: str | None = "max_duration"
                elif now - run.last_beat > run.heartbeat_timeout:
                    reason = "no_heartbeat"
                elif run.key in loop_verdicts:
                    reason = "loop_blocked"
                else:
                    reason = None
                if reason != verdict:
                    changed.append((run, reason))
                if reason is not None or verdict is None:
                    watched.append(run)
            except Exception as exc:
                errors.record("watchdog", exc)
        fresh = [(run, reason) for run, reason in changed if reason is not None]
        # A run stuck inside another (nested @job runs, a recursive job) takes the ones that
        # enclose it with it: one diagnosis and one WARNING for the innermost of them.
        fresh, enclosing = _nested(fresh)
        if len(fresh) > MAX_DIAGNOSES_PER_TICK:
            fresh = fresh[:MAX_DIAGNOSES_PER_TICK]
        run_mod.record_unrecorded()
        recovered = [run for run, reason in changed if reason is None]

        # --- actions: after the decisions, nothing above waits on them ------------------------
        for run in recovered:
            with errors.guard("watchdog"):
                self._recover(run, now)
        states = self._look_at_cpu([run for run, _ in fresh], watched, now)
        if fresh:
            frames = _diag().current_frames()
            for run, reason in fresh:
                with errors.guard("watchdog"):
                    self._give_verdict(
                        run, reason, now, frames, states, runs, on_blocked.get(run.key)
                    )
        if enclosing:
            self._enclosing_verdicts(enclosing, now)
        due = self._uncovered(now, interval)
        if due:
            self._report_uncovered(due, now, states, runs)
        for run in watched:
            if run.verdict is not None and run.diagnosis is not None:
                with errors.guard("watchdog"):
                    self._restate(run, states, now)

    def _look_at_cpu(
        self, fresh: list[Run], watched: list[Run], now: float
    ) -> dict[int, tuple[str, float | None]]:
        """Read the CPU time of the threads of these runs: ``{native_id: (state, ratio)}``.

        The share of CPU is measured since the previous look at the same thread (the tick
        before the deadline). A thread with a new verdict and no previous look is looked at
        twice, a short moment apart.
        """
        ids: dict[int, None] = {}
        for run in (*fresh, *watched):
            if run.native_id is not None:
                ids[run.native_id] = None
                if len(ids) >= MAX_CPU_LOOKS_PER_TICK:
                    break
        if not ids:
            self._cpu = {}
            return {}
        previous = self._cpu
        samples: dict[int, tuple[float, float]] = {}
        for native_id in ids:
            cpu = _diag().thread_cpu_seconds(native_id)
            if cpu is not None:
                samples[native_id] = (now, cpu)
        need_second = [
            run.native_id
            for run in fresh
            if run.native_id in samples and run.native_id not in previous
        ]
        if need_second:
            interval = self._agent.settings.watchdog_interval
            window = min(0.2, max(0.05, interval / 2))
            self._stop.wait(window)
            for native_id in need_second:
                assert native_id is not None
                later = _diag().thread_cpu_seconds(native_id)
                if later is not None:
                    previous = {**previous, native_id: samples[native_id]}
                    samples[native_id] = (time.monotonic(), later)
        states: dict[int, tuple[str, float | None]] = {}
        for native_id, (when, cpu) in samples.items():
            before = previous.get(native_id)
            if before is None:
                states[native_id] = ("unknown", None)
            else:
                states[native_id] = _diag().state_of(cpu - before[1], when - before[0])
        self._cpu = samples
        return states

    # --- actions --------------------------------------------------------------------------

    def _give_verdict(
        self,
        run: Run,
        reason: str,
        now: float,
        frames: dict[int, Any],
        states: dict[int, tuple[str, float | None]],
        runs: list[Run] | None = None,
        loop: Blocked | None = None,
    ) -> None:
        cpu = states.get(run.native_id) if run.native_id is not None else None
        diagnosis = _diag().diagnose(
            run, reason, now, frames, cpu or ("unknown", None), runs=runs, loop=loop
        )
        diagnosis.given_at = now
        # The state before the verdict: a scrape never sees a verdict without its state.
        run.diagnosis = diagnosis
        run.state = diagnosis.state
        run.verdict = reason
        self._agent.telemetry.record_stall(run.series, reason)
        if _pg_locks().wanted(run):
            # Who blocks its statement, asked on a connection of its own: never on this thread.
            threading.Thread(
                target=self._act_after_lookup,
                args=(run, diagnosis, now),
                name="otel-jobs-pg-lookup",
                daemon=True,
            ).start()
        else:
            self._act(run, diagnosis, now)

    def _enclosing_verdicts(self, enclosing: list[tuple[Run, str, Run]], now: float) -> None:
        """Verdicts on runs that enclose a run with a new verdict of its own (its cover).

        Counted, marked on their spans and acted on by their policies like any verdict, but
        with the cover's stack (the same thread's) and one INFO record per cover instead of a
        diagnosis and a WARNING each. Reported in full if they are still stuck a tick after
        their cover is gone (:meth:`_uncovered`).
        """
        per_cover: dict[int, tuple[Run, int]] = {}
        for run, reason, cover in enclosing:
            with errors.guard("watchdog"):
                inner: Diagnosis | None = cover.diagnosis
                if inner is None or cover.verdict is None:
                    continue  # the cover got no verdict: decided again at the next tick
                diagnosis = dataclasses.replace(
                    inner,
                    reason=reason,
                    elapsed=run.elapsed(now),
                    since_heartbeat=run.seconds_since_heartbeat(now),
                    threshold=run.max_duration
                    if reason == "max_duration"
                    else run.heartbeat_timeout,
                    policy=run.on_stall,
                    given_at=now,
                    acted_at=None,
                )
                run.diagnosis = diagnosis
                run.state = diagnosis.state
                run.verdict = reason
                self._agent.telemetry.record_stall(run.series, reason)
                self._covered[run.key] = (run, cover, None)
                if run.span.is_recording():
                    run.span.add_event(
                        "otel_jobs.stall",
                        {
                            "otel_jobs.stall.reason": reason,
                            "otel_jobs.stall.state": diagnosis.state,
                            "otel_jobs.stall.inner_run": str(cover.job_id or cover.key),
                        },
                    )
                seen = per_cover.get(cover.key)
                per_cover[cover.key] = (cover, seen[1] + 1 if seen else 1)
                if run.on_stall == "cancel":
                    self._cancel(run, diagnosis, now)
                elif run.on_stall == "exit":
                    self._exit(run, diagnosis)
        for cover, count in per_cover.values():
            logger.info(
                "otel-jobs: %d run(s) enclosing run %s of %s are stuck with it (counted in "
                "otel_jobs_stalls_detected_total and marked on their spans, not logged one by one)",
                count,
                cover.job_id or cover.key,
                cover.name,
                extra={
                    "job_name": cover.name,
                    "job_id": cover.job_id,
                    "stall_enclosing_runs": count,
                },
            )

    def _uncovered(self, now: float, interval: float) -> list[Run]:
        """Enclosing runs still stuck a whole tick after their cover finished or recovered."""
        due: list[Run] = []
        for key, (run, cover, gone_at) in list(self._covered.items()):
            if run.finished or run.verdict is None:
                del self._covered[key]
            elif cover.finished or cover.verdict is None:
                if gone_at is None:
                    self._covered[key] = (run, cover, now)
                elif now - gone_at >= interval:
                    del self._covered[key]
                    due.append(run)
        return due

    def _report_uncovered(
        self,
        due: list[Run],
        now: float,
        states: dict[int, tuple[str, float | None]],
        runs: list[Run],
    ) -> None:
        """The innermost of ``due`` reported in full; the others covered by it in turn."""
        inner, outer = _nested([(run, run.verdict or "") for run in due])
        frames = _diag().current_frames()
        for run, reason in inner[:MAX_DIAGNOSES_PER_TICK]:
            with errors.guard("watchdog"):
                cpu = states.get(run.native_id) if run.native_id is not None else None
                diagnosis = _diag().diagnose(
                    run, reason, now, frames, cpu or ("unknown", None), runs=runs
                )
                previous = run.diagnosis
                diagnosis.given_at = previous.given_at if previous is not None else now
                diagnosis.acted_at = previous.acted_at if previous is not None else None
                run.diagnosis = diagnosis
                run.state = diagnosis.state
                self._signal(run, diagnosis)
        for run, _, cover in outer:
            self._covered[run.key] = (run, cover, None)

    def _act(self, run: Run, diagnosis: Diagnosis, now: float) -> None:
        """The signals of a new verdict, then the run's policy."""
        self._signal(run, diagnosis)
        if run.on_stall == "cancel":
            self._cancel(run, diagnosis, now)
        elif run.on_stall == "exit":
            self._exit(run, diagnosis)

    def _act_after_lookup(self, run: Run, diagnosis: Diagnosis, now: float) -> None:
        with errors.guard("watchdog.pg_locks"):
            diagnosis.db = _pg_locks().lookup(run)
        with errors.guard("watchdog"):
            self._act(run, diagnosis, now)

    def _restate(self, run: Run, states: dict[int, tuple[str, float | None]], now: float) -> None:
        """A standing verdict: the state may change (blocked, then spinning); cancel again."""
        diagnosis: Diagnosis = run.diagnosis
        if diagnosis.given_at == now:
            return
        if run.task is not None and not _diag().task_running(run.task):
            state: str | None = "unknown"
        else:
            measured = states.get(run.native_id) if run.native_id is not None else None
            state = measured[0] if measured is not None and measured[0] != "unknown" else None
        if state is not None and state != run.state:
            run.state = state
        if (
            run.on_stall == "cancel"
            and diagnosis.acted_at is not None
            and now - diagnosis.acted_at >= CANCEL_REPEAT_SECONDS
        ):
            self._cancel(run, diagnosis, now)

    def _recover(self, run: Run, now: float) -> None:
        diagnosis: Diagnosis | None = run.diagnosis
        previous = run.verdict
        run.verdict = None
        run.state = None
        run.diagnosis = None
        stalled_for = now - diagnosis.given_at if diagnosis is not None else 0.0
        if run.span.is_recording():
            run.span.add_event(
                "otel_jobs.stall.recovered",
                {
                    "otel_jobs.stall.reason": previous or "",
                    "otel_jobs.stall.verdict_s": round(stalled_for, 3),
                },
            )
        logger.info(
            "otel-jobs: run %s of %s (queue %s) recovered: %s after %.1fs under a %s verdict",
            run.job_id or run.key,
            run.name,
            run.queue,
            "its event loop runs again" if previous == "loop_blocked" else "it heartbeats again",
            stalled_for,
            previous,
            extra={"job_name": run.name, "job_id": run.job_id, "job_queue": run.queue,
                   "stall_reason": previous, "stall_recovered": True},
        )  # fmt: skip

    def _signal(self, run: Run, diagnosis: Diagnosis) -> None:
        """The stall span, the event on the run's span and the WARNING record."""
        attrs: dict[str, Any] = {
            "job.name": run.name,
            "job.queue": run.queue,
            "job.attempt": run.attempt,
            "job.framework": run.framework,
        }
        if run.job_id is not None:
            attrs["job.id"] = run.job_id
        attrs.update(diagnosis.attributes())
        run_context = run.span.get_span_context()
        if run_context.is_valid:
            parent = trace.set_span_in_context(run.span)
            links: list[Link] | None = [Link(run_context, {"otel_jobs.link": "stuck_run"})]
        else:
            parent, links = None, None
        with errors.guard("watchdog.span"):
            span = self._agent.tracer.start_span(
                f"{run.name} {diagnosis.verdict}",
                context=parent,
                kind=SpanKind.INTERNAL,
                attributes=attrs,
                links=links,
            )
            span.set_status(Status(StatusCode.ERROR, diagnosis.verdict))
            span.end()
        if run.span.is_recording():
            event = {
                "otel_jobs.stall.reason": diagnosis.reason,
                "otel_jobs.stall.state": diagnosis.state,
            }
            if diagnosis.where is not None:
                event["otel_jobs.stall.where"] = str(diagnosis.where)
            run.span.add_event("otel_jobs.stall", event)
        logger.warning(diagnosis.message(run), extra=diagnosis.extra(run))

    # --- policies ---------------------------------------------------------------------------

    def _cancel(self, run: Run, diagnosis: Diagnosis, now: float) -> None:
        diagnosis.acted_at = now
        if run.task is not None and run.loop is not None:
            self._cancel_task(run)
        elif not self._cancel_thread(run) and not run.finished:
            logger.warning(
                "otel-jobs: cannot cancel run %s of %s: its thread was not found",
                run.job_id or run.key,
                run.name,
            )

    def _cancel_thread(self, run: Run) -> bool:
        """Raise the timeout in the run's thread, only if the run is still in flight there."""
        agent = self._agent
        thread_id = run.thread_id
        if thread_id is None:
            return False
        # Under the agent's lock: finish_run removes the run from the table under it, so a run
        # seen here is not yet done and the exception cannot land in a later job of the thread.
        with agent._lock:
            if run.finished or agent._runs.get(run.key) is not run:
                return False
            run.cancelled_by_watchdog = True
            modified = _set_async_exc(thread_id, WatchdogTimeoutError)
        if modified > 1:  # cannot happen with a live thread id; undo as the C API asks
            _clear_async_exc(thread_id, None)
            return False
        return modified == 1

    def _cancel_task(self, run: Run) -> None:
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

    def _exit(self, run: Run, diagnosis: Diagnosis) -> None:
        """Flush telemetry, then end the process (see the module docstring)."""
        agent = self._agent
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


def _blocked_loops(
    blocked: dict[int, Blocked], timeout: float
) -> tuple[dict[int, Blocked], dict[int, Blocked]]:
    """``(run key -> its blocked loop, for every run on one; run key -> the loop it gets a
    loop_blocked verdict for)``: the run whose task holds the loop, else the oldest on it."""
    on_blocked: dict[int, Blocked] = {}
    verdicts: dict[int, Blocked] = {}
    for entry in blocked.values():
        entry.threshold = timeout
        entry.culprit = next(
            (r for r in entry.runs if r.task is not None and _diag().task_running(r.task)), None
        )
        for run in entry.runs:
            on_blocked[run.key] = entry
        if entry.seconds > timeout and entry.runs:
            chosen = entry.culprit or min(entry.runs, key=lambda r: r.start_mono)
            verdicts[chosen.key] = entry
    return on_blocked, verdicts


#: Verdicts that an enclosing run shares with the run stuck inside it.
_NESTABLE = ("no_heartbeat", "max_duration")


def _nested(
    fresh: list[tuple[Run, str]],
) -> tuple[list[tuple[Run, str]], list[tuple[Run, str, Run]]]:
    """Split new verdicts: those of innermost runs, and those of runs that enclose one of them
    (``run.parent``, within one thread or task), each with the innermost run it encloses.

    In start order, an inner run comes after the runs enclosing it: walked from the last, each
    chain of parents is visited once (a recursive job 500 runs deep costs 500 steps).
    """
    candidates = {run.key for run, reason in fresh if reason in _NESTABLE}
    if len(candidates) < 2:
        return fresh, []
    cover_of: dict[int, Run] = {}
    visited: set[int] = set()
    for run, _ in reversed(fresh):
        if run.key not in candidates or run.key in cover_of:
            continue
        parent = run.parent
        while parent is not None and parent.key not in visited:
            visited.add(parent.key)
            if parent.key in candidates:
                cover_of[parent.key] = run
            parent = parent.parent
    if not cover_of:
        return fresh, []
    inner = [(run, reason) for run, reason in fresh if run.key not in cover_of]
    outer = [(run, reason, cover_of[run.key]) for run, reason in fresh if run.key in cover_of]
    return inner, outer
