"""The stuck-run watchdog: one daemon thread per worker process (a forked child starts its own).

Every ``watchdog_interval`` seconds :meth:`Watchdog.tick` looks at each run in flight and gives
it a verdict (:func:`otel_jobs.core.verdicts.reason_of`): ``no_heartbeat``, ``max_duration``, or
``loop_blocked`` for the run holding an asyncio loop that has run nothing for too long
(:mod:`otel_jobs.core.loop_probe`). On a new verdict it diagnoses the run
(:mod:`otel_jobs.core.diagnosis`; a psycopg statement first asks PostgreSQL who blocks it, on a
thread of its own: :mod:`otel_jobs.core.pg_locks`), emits the signals (a ``<job> stalled`` /
``<job> overran`` span, an ``otel_jobs.stall`` event on the run's span, one WARNING, the
``stalls_detected`` / ``runs_stalled`` metrics) and applies the run's policy
(:mod:`otel_jobs.core.stall_policy`: ``cancel`` or ``exit``; ``observe`` does nothing more). A
run that heartbeats again recovers (INFO, ``otel_jobs.stall.recovered``). Runs stuck inside
other runs get one diagnosis for the innermost (:func:`~otel_jobs.core.verdicts.split_nested`).
Each tick also tells a warm shutdown waiting for a stalled run (:mod:`otel_jobs.core.shutdown`),
renews the lease (:mod:`otel_jobs.core.lease`) and writes a forked child's snapshot when due.
What users see of all this: ``docs/watchdog.md``.

Invariants: deadlines are compared with the watchdog's clock (``time.monotonic`` unless a test
injects one); the in-flight table is copied through :meth:`Agent.runs`, decisions are made on
the copy under the watchdog's own lock, and the slow actions (diagnosis, logging, spans,
cancelling) come after the decisions; a healthy run far from its deadlines costs two additions
and two comparisons per tick; at most :data:`MAX_DIAGNOSES_PER_TICK` new verdicts are diagnosed
per tick and :data:`MAX_CPU_LOOKS_PER_TICK` threads have their CPU time read. The thread never
dies: an exception in a tick, or about one run, is counted under ``watchdog`` and logged once.
Its last tick is ``otel_jobs_watchdog_last_tick_timestamp_seconds``: a process whose threads are
frozen (a C call holding the GIL) shows by that gauge going stale.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from . import errors, logtail, shutdown, stall_policy
from . import run as run_mod
from .enclosing import EnclosingRuns
from .loop_probe import Blocked, LoopProbes
from .stall_policy import CANCEL_REPEAT_SECONDS, EXIT_STATUS, WatchdogTimeoutError
from .verdicts import blocked_loops, due_before, reason_of, split_nested

if TYPE_CHECKING:
    from .agent import Agent
    from .diagnosis import Diagnosis
    from .run import Run

logger = logging.getLogger("otel_jobs")

# Kept importable from here: the policies live in core/stall_policy.py.
__all__ = [
    "CANCEL_REPEAT_SECONDS",
    "EXIT_STATUS",
    "MAX_CPU_LOOKS_PER_TICK",
    "MAX_DIAGNOSES_PER_TICK",
    "Watchdog",
    "WatchdogTimeoutError",
]


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


#: New verdicts diagnosed per tick at most (a mass stall is spread over a few ticks).
MAX_DIAGNOSES_PER_TICK = 200
#: Threads whose CPU time is read per tick at most.
MAX_CPU_LOOKS_PER_TICK = 256


class Watchdog:
    """See the module docstring."""

    def __init__(self, agent: Agent, clock: Callable[[], float] = time.monotonic) -> None:
        self._agent = agent
        # Monotonic seconds: what deadlines are compared with. A test passes a controlled one
        # and calls tick() itself (tests/core/test_verdicts.py).
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick_lock = threading.Lock()
        # native thread id -> (monotonic time, CPU seconds) of the previous look at it.
        self._cpu: dict[int, tuple[float, float]] = {}
        self.enclosing = EnclosingRuns(agent, self._signal, _diag, MAX_DIAGNOSES_PER_TICK)
        self._ticks = 0
        self.loops = LoopProbes(agent.telemetry)
        agent.telemetry.loops_blocked = self.loops.samples

    def bind(self, telemetry: Any) -> None:
        """New instruments of this process (a forked child's, built by its agent): the loop
        probes record into them, and they read the probes' blocked loops."""
        self.loops.rebind(telemetry)
        telemetry.loops_blocked = self.loops.samples

    @property
    def ticks(self) -> int:
        """Ticks done so far (its thread's and any a caller makes), read-only: for whoever
        reports a figure per tick (``bench/bench_lease.py``) or waits until it has looked."""
        return self._ticks

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
        self.enclosing.after_fork_in_child()
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
        self._ticks += 1
        try:  # the lease is renewed from here (no I/O: core.lease wakes its own thread)
            agent.lease.tick()
        except Exception as exc:
            errors.record("lease", exc)
        share = agent.share
        if share.in_child and (agent.has_runs() or share.snapshot_due()):
            with errors.guard("multiprocess.flush"):
                share.flush(agent.telemetry.registry)

    # --- decisions ------------------------------------------------------------------------

    def _tick(self) -> None:
        agent = self._agent
        interval = agent.settings.watchdog_interval
        runs = agent.runs()
        now = self._clock()
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
            on_blocked, loop_verdicts = blocked_loops(
                blocked, agent.settings.loop_blocked_timeout, _diag().task_running
            )
        changed: list[tuple[Run, str | None]] = []
        watched: list[Run] = []  # verdict standing, or a deadline before the next tick
        for run in runs:
            try:
                verdict = run.verdict
                if (
                    verdict is None
                    and not due_before(run, horizon)
                    and not (loop_verdicts and run.key in loop_verdicts)
                ):
                    continue  # healthy and not due before the next tick: the common case
                if run.finished:
                    continue
                reason = reason_of(run, now, run.key in loop_verdicts)
                if reason != verdict:
                    changed.append((run, reason))
                if reason is not None or verdict is None:
                    watched.append(run)
            except Exception as exc:
                errors.record("watchdog", exc)
        fresh = [(run, reason) for run, reason in changed if reason is not None]
        # A run stuck inside another (nested @job runs, a recursive job) takes the ones that
        # enclose it with it: one diagnosis and one WARNING for the innermost of them.
        fresh, enclosing = split_nested(fresh)
        if len(fresh) > MAX_DIAGNOSES_PER_TICK:
            fresh = fresh[:MAX_DIAGNOSES_PER_TICK]
        run_mod.record_unrecorded()
        recovered = [run for run, reason in changed if reason is None]

        # --- actions: after the decisions, nothing above waits on them ------------------------
        for run in recovered:
            with errors.guard("watchdog"):
                self._recover(run, now)
        states = self._look_at_cpu(fresh, watched, now)
        if fresh:
            frames = _diag().current_frames()
            for run, reason in fresh:
                with errors.guard("watchdog"):
                    self._give_verdict(
                        run, reason, now, frames, states, runs, on_blocked.get(run.key)
                    )
        if enclosing:
            self.enclosing.give_verdicts(enclosing, now)
        self.enclosing.report_uncovered(now, interval, states, runs)
        for run in watched:
            if run.verdict is not None and run.diagnosis is not None:
                with errors.guard("watchdog"):
                    self._restate(run, states, now)

    def _cpu_thread(self, run: Run, reason: str | None) -> int | None:
        """The native id of the thread whose CPU use is the run's state: under a loop_blocked
        verdict its loop's thread (the run itself may be suspended, or in another thread)."""
        if reason == "loop_blocked":
            probe = self.loops.probe_of(run.loop)
            if probe is not None and probe.native_id is not None:
                return probe.native_id
        return run.native_id

    def _look_at_cpu(
        self, fresh: list[tuple[Run, str]], watched: list[Run], now: float
    ) -> dict[int, tuple[str, float | None]]:
        """Read the CPU time of the threads of these runs: ``{native_id: (state, ratio)}``.

        The share of CPU is measured since the previous look at the same thread (the tick
        before the deadline). A thread with a new verdict and no previous look is looked at
        twice, a short moment apart.
        """
        ids: dict[int, None] = {}
        new = {self._cpu_thread(run, reason) for run, reason in fresh}
        for native_id in (*new, *(self._cpu_thread(run, run.verdict) for run in watched)):
            if native_id is not None:
                ids[native_id] = None
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
        need_second = [i for i in new if i in samples and i not in previous]
        if need_second:
            interval = self._agent.settings.watchdog_interval
            window = min(0.2, max(0.05, interval / 2))
            self._stop.wait(window)
            for native_id in need_second:
                assert native_id is not None
                later = _diag().thread_cpu_seconds(native_id)
                if later is not None:
                    previous = {**previous, native_id: samples[native_id]}
                    samples[native_id] = (self._clock(), later)
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
        cpu = states.get(self._cpu_thread(run, reason))  # type: ignore[arg-type]
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

    def _act(self, run: Run, diagnosis: Diagnosis, now: float) -> None:
        """The signals of a new verdict, then the run's policy."""
        self._signal(run, diagnosis)
        stall_policy.apply(self._agent, run, diagnosis, now)

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
        if (
            run.verdict != "loop_blocked"
            and run.task is not None
            and not _diag().task_running(run.task)
        ):
            state: str | None = "unknown"  # suspended at an await: its thread runs other tasks
        else:  # a thread, a task holding its loop, or the thread of a loop blocked
            measured = states.get(self._cpu_thread(run, run.verdict))  # type: ignore[arg-type]
            state = measured[0] if measured is not None and measured[0] != "unknown" else None
        if state is not None and state != run.state:
            run.state = state
        if (
            run.on_stall == "cancel"
            and diagnosis.acted_at is not None
            and now - diagnosis.acted_at >= CANCEL_REPEAT_SECONDS
        ):
            stall_policy.cancel(self._agent, run, diagnosis, now)

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
