"""Where a stuck run is stuck, and whether it waits or burns CPU: the watchdog's diagnosis.

When the watchdog gives a run a verdict (:mod:`otel_jobs.core.watchdog`) it looks at the run
without stopping it and builds a :class:`Diagnosis` (:func:`diagnose`):

* **stack**, **where**, **waiting_in**: the run's thread or task stack, rendered with the user's
  frames first (:mod:`otel_jobs.core.stacks`); only code locations are read, never a local;
* **state**: ``blocked`` / ``spinning`` / ``unknown`` from the thread's CPU time since the
  watchdog's previous look; a task suspended at an ``await`` is ``unknown``;
* **call**: the outbound call the run is inside (``run.calls``, recorded by outbound adapters);
* **wait**: what a blocked run waits on, who holds it, a deadlock (:mod:`.wait_chain`);
* **loop**: for an asyncio run, its event loop that ran nothing for too long, and the runs it
  holds up (:mod:`otel_jobs.core.loop_probe`);
* **db**: the PostgreSQL sessions blocking a psycopg statement, filled in by the watchdog off
  its own thread (:mod:`otel_jobs.core.pg_locks`);
* **last logs**: the run's last log records, redacted (:mod:`otel_jobs.core.logtail`).

A diagnosis renders itself as a log message (:meth:`Diagnosis.message`), span attributes
(:meth:`Diagnosis.attributes`) and log ``extra`` fields (:meth:`Diagnosis.extra`); what users
read of it is ``docs/watchdog.md``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import logtail, waits
from .stacks import (
    MAX_FRAMES,
    MAX_STACK_CHARS,
    MAX_WALK,
    SPINNING_RATIO,
    Frame,
    current_frames,
    frame_of,
    render,
    state_of,
    task_frames,
    task_running,
    thread_cpu_seconds,
)
from .wait_chain import describe_wait

if TYPE_CHECKING:
    from .run import Run

# What the watchdog reads through this module (imported at its first verdict): see core/stacks.py.
__all__ = [
    "MAX_FRAMES",
    "MAX_STACK_CHARS",
    "SPINNING_RATIO",
    "Diagnosis",
    "Frame",
    "current_frames",
    "describe_call",
    "diagnose",
    "render",
    "state_of",
    "task_running",
    "thread_cpu_seconds",
]

_STATE_WORDS = {
    "blocked": "blocked (no CPU: waiting on I/O, a lock or a sleep)",
    "spinning": "spinning (burning CPU: a loop or heavy computation)",
    "unknown": "state unknown",
}
_REASON_WORDS = {
    "no_heartbeat": "stalled",
    "max_duration": "overran",
    "loop_blocked": "loop blocked",
}


@dataclass
class Diagnosis:
    """What the watchdog found about one stuck run (see the module docstring)."""

    reason: str
    state: str
    elapsed: float
    since_heartbeat: float
    threshold: float
    policy: str
    cpu_ratio: float | None = None
    stack: str = ""
    frames: list[Frame] = field(default_factory=list)
    where: Frame | None = None
    waiting_in: Frame | None = None
    awaiting: str | None = None
    thread: str | None = None
    asyncio: bool = False
    call: dict[str, Any] | None = None
    #: What it waits on (core.waits), rendered: kind, timeout, holder, deadlock.
    wait: dict[str, Any] | None = None
    #: Its event loop when that has run nothing for more than a tick (core.loop_probe).
    loop: dict[str, Any] | None = None
    #: The PostgreSQL sessions blocking its statement (core.pg_locks), set before the signals.
    db: dict[str, Any] | None = None
    #: Its last log records (core.logtail), oldest first.
    last_logs: list[dict[str, Any]] = field(default_factory=list)
    given_at: float = 0.0  # monotonic time of the verdict
    acted_at: float | None = None  # monotonic time of the last cancel

    @property
    def verdict(self) -> str:
        """``stalled`` or ``overran``."""
        return _REASON_WORDS.get(self.reason, self.reason)

    def summary(self) -> str:
        """One line: the verdict, for how long, the state and the line it waits on."""
        if self.reason == "max_duration":
            what = f"running for {self.elapsed:.1f}s (max duration {self.threshold:g}s)"
        elif self.reason == "loop_blocked" and self.loop is not None:
            what = (
                f"its event loop (thread {self.loop['thread']}) has run nothing for "
                f"{self.loop['blocked_s']:.1f}s (timeout {self.threshold:g}s)"
            )
        else:
            what = f"no heartbeat for {self.since_heartbeat:.1f}s (timeout {self.threshold:g}s)"
        parts = [f"{self.verdict}: {what}", _STATE_WORDS.get(self.state, self.state)]
        if self.where is not None:
            at = f"at {self.where}"
            if self.waiting_in is not None:
                at += f", inside {self.waiting_in}"
            elif self.awaiting:
                at += f", awaiting a {self.awaiting}"
            parts.append(at)
        if self.wait is not None:
            parts.append(self.wait["description"])
        if self.loop is not None:
            parts.append(_loop_words(self.reason, self.loop))
        if self.call is not None:
            parts.append(f"outbound call {self.call['description']}")
        if self.db is not None:
            from .pg_locks import describe as describe_db

            parts.append(describe_db(self.db))
        if self.last_logs:
            last = self.last_logs[-1]
            parts.append(f"last log {_age(last['age_s'])} ago: {last['level']} {last['message']}")
        return "; ".join(parts)

    def message(self, run: Run) -> str:
        """The human-readable log message, with the stack below it."""
        who = f"run {run.job_id or run.key} of {run.name} (queue {run.queue})"
        text = f"otel-jobs: {who} {self.summary()}; policy {self.policy}\n{self.stack}"
        if self.last_logs:
            lines = [
                f"  {_age(r['age_s'])} ago {r['level']} {r['logger']}: {r['message']}"
                for r in self.last_logs
            ]
            text += "\nlast log records of the run:\n" + "\n".join(lines)
        return text

    def attributes(self) -> dict[str, Any]:
        """Span attributes (OpenTelemetry ``code.*`` names for the location)."""
        attrs: dict[str, Any] = {
            "otel_jobs.stall.reason": self.reason,
            "otel_jobs.stall.state": self.state,
            "otel_jobs.stall.elapsed_s": round(self.elapsed, 3),
            "otel_jobs.stall.since_heartbeat_s": round(self.since_heartbeat, 3),
            "otel_jobs.stall.threshold_s": self.threshold,
            "otel_jobs.stall.policy": self.policy,
            "otel_jobs.stall.stack": self.stack,
            "otel_jobs.stall.summary": self.summary(),
        }
        if self.cpu_ratio is not None:
            attrs["otel_jobs.stall.cpu_ratio"] = round(self.cpu_ratio, 3)
        if self.where is not None:
            attrs["code.filepath"] = self.where.path
            attrs["code.lineno"] = self.where.lineno
            attrs["code.function"] = self.where.function
        if self.waiting_in is not None:
            attrs["otel_jobs.stall.waiting_in"] = str(self.waiting_in)
        if self.awaiting:
            attrs["otel_jobs.stall.awaiting"] = self.awaiting
        if self.thread:
            attrs["thread.name"] = self.thread
        if self.call is not None:
            for key in ("library", "method", "host", "has_timeout", "call_site"):
                attrs[f"otel_jobs.stall.call.{key}"] = self.call[key]
            attrs["otel_jobs.stall.call.elapsed_s"] = round(self.call["elapsed"], 3)
        attrs.update(_wait_attributes(self.wait))
        attrs.update(_loop_attributes(self.loop))
        attrs.update(_db_attributes(self.db))
        if self.last_logs:
            last = self.last_logs[-1]
            attrs["otel_jobs.stall.last_log"] = (
                f"{last['level']} {last['logger']}: {last['message']}"
            )
            attrs["otel_jobs.stall.last_log_age_s"] = last["age_s"]
            attrs["otel_jobs.stall.last_logs"] = [
                f"{r['level']} {r['logger']}: {r['message']}" for r in self.last_logs
            ]
        return attrs

    def extra(self, run: Run) -> dict[str, Any]:
        """The fields of the WARNING log record (``logging`` ``extra``; no clash with its own)."""
        return {
            "job_name": run.name,
            "job_id": run.job_id,
            "job_queue": run.queue,
            "stall_reason": self.reason,
            "stall_verdict": self.verdict,
            "stall_state": self.state,
            "stall_elapsed_seconds": round(self.elapsed, 3),
            "stall_since_heartbeat_seconds": round(self.since_heartbeat, 3),
            "stall_threshold_seconds": self.threshold,
            "stall_cpu_ratio": self.cpu_ratio,
            "stall_where": str(self.where) if self.where is not None else None,
            "stall_waiting_in": str(self.waiting_in) if self.waiting_in is not None else None,
            "stall_stack": self.stack,
            "stall_call": self.call,
            "stall_policy": self.policy,
            "stall_wait": self.wait,
            "stall_loop": self.loop,
            "stall_db": self.db,
            "stall_last_logs": self.last_logs,
        }


def _age(seconds: float) -> str:
    """``4m12s``, ``1h03m``, ``12.3s``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _run_words(entry: dict[str, Any]) -> str:
    return f"run {entry['job_id']} of {entry['job_name']}"


def _loop_words(reason: str, loop: dict[str, Any]) -> str:
    held = loop["held_up"]
    others = ", ".join(_run_words(r) for r in held[:5]) + (" ..." if len(held) > 5 else "")
    if reason == "loop_blocked":
        if loop["culprit"] is None:
            who = "code outside any run holds the loop"
        else:
            who = "this run holds the loop"
        return f"{who}; runs held up: {others or 'none'}"
    holder = loop["culprit"]
    by = f" by {_run_words(holder)}" if holder is not None else ""
    return (
        f"its event loop (thread {loop['thread']}) has run nothing for {loop['blocked_s']:.1f}s{by}"
    )


def _wait_attributes(wait: dict[str, Any] | None) -> dict[str, Any]:
    if wait is None:
        return {}
    attrs: dict[str, Any] = {
        "otel_jobs.stall.wait.kind": wait["kind"],
        "otel_jobs.stall.wait.description": wait["description"],
        "otel_jobs.stall.wait.deadlock": wait["deadlock"] is not None,
    }
    if wait["timeout"] is not None:
        attrs["otel_jobs.stall.wait.has_timeout"] = wait["timeout"]
    holder = wait["holder"]
    if holder is not None:
        attrs["otel_jobs.stall.wait.holder_thread"] = holder["thread"] or ""
        if holder["job_name"] is not None:
            attrs["otel_jobs.stall.wait.holder_job_name"] = holder["job_name"]
            attrs["otel_jobs.stall.wait.holder_job_id"] = holder["job_id"]
    return attrs


def _loop_attributes(loop: dict[str, Any] | None) -> dict[str, Any]:
    if loop is None:
        return {}
    attrs: dict[str, Any] = {
        "otel_jobs.stall.loop.thread": loop["thread"],
        "otel_jobs.stall.loop.blocked_s": loop["blocked_s"],
        "otel_jobs.stall.loop.held_up_job_names": [r["job_name"] for r in loop["held_up"]],
        "otel_jobs.stall.loop.held_up_job_ids": [r["job_id"] for r in loop["held_up"]],
    }
    if loop["culprit"] is not None:
        attrs["otel_jobs.stall.loop.holder_job_name"] = loop["culprit"]["job_name"]
        attrs["otel_jobs.stall.loop.holder_job_id"] = loop["culprit"]["job_id"]
    return attrs


def _db_attributes(db: dict[str, Any] | None) -> dict[str, Any]:
    if db is None:
        return {}
    attrs: dict[str, Any] = {"otel_jobs.stall.db.backend_pid": db["backend_pid"]}
    if db.get("error"):
        attrs["otel_jobs.stall.db.error"] = db["error"]
    if db.get("wait_event"):
        attrs["otel_jobs.stall.db.wait_event"] = db["wait_event"]
    blockers = db.get("blockers") or []
    if blockers:
        attrs["otel_jobs.stall.db.blocker_pids"] = [b["pid"] for b in blockers]
        attrs["otel_jobs.stall.db.blocker_states"] = [b["state"] or "" for b in blockers]
        attrs["otel_jobs.stall.db.blocker_xact_age_s"] = [
            b["xact_age_s"] if b["xact_age_s"] is not None else -1.0 for b in blockers
        ]
        attrs["otel_jobs.stall.db.blocker_queries"] = [b["query"] or "" for b in blockers]
        attrs["otel_jobs.stall.db.blocker_job_names"] = [b["job_name"] or "" for b in blockers]
        attrs["otel_jobs.stall.db.blocker_job_ids"] = [b["job_id"] or "" for b in blockers]
    return attrs


def describe_call(run: Run, now: float) -> dict[str, Any] | None:
    """The innermost outbound call in flight in ``run`` (from ``run.calls``), if any."""
    try:
        calls = list(run.calls)
    except Exception:
        return None
    if not calls:
        return None
    call = calls[-1]
    try:
        description = call.describe()
    except Exception:
        description = f"{call.method} {call.host} via {call.library}"
    return {
        "library": call.library,
        "method": call.method,
        "host": call.host,
        "elapsed": max(now - call.started, 0.0),
        "has_timeout": not call.missing,
        "missing_timeout": list(call.missing),
        "call_site": call.call_site,
        "description": description,
    }


def diagnose(
    run: Run,
    reason: str,
    now: float,
    thread_frames: dict[int, FrameType],
    cpu: tuple[str, float | None],
    *,
    runs: list[Run] | None = None,
    loop: Any = None,
) -> Diagnosis:
    """Build the diagnosis of ``run`` (see the module docstring).

    ``thread_frames`` is one ``sys._current_frames()`` taken for the whole tick; ``cpu`` is
    the ``(state, ratio)`` the watchdog measured for the run's thread. ``runs``: the runs in
    flight (to name the run holding a lock); ``loop``: the run's event loop when it has run
    nothing for more than a tick (a :class:`otel_jobs.core.loop_probe.Blocked`).
    """
    if reason == "loop_blocked" and loop is not None:
        threshold = loop.threshold
    else:
        threshold = run.max_duration if reason == "max_duration" else run.heartbeat_timeout
    thread_id = run.thread_id
    if loop is not None and loop.probe.thread_id is not None:
        thread_id = loop.probe.thread_id  # the loop's thread (Dramatiq's worker thread waits)
    thread_frame = thread_frames.get(thread_id) if thread_id is not None else None
    task = run.task
    awaiting: str | None = None
    state, ratio = cpu
    if task is not None and reason == "loop_blocked" and not task_running(task):
        # The verdict on the loop: what its thread runs, not the suspended task.
        raw = waits.thread_frames(thread_frame, MAX_WALK)
        task = None
    elif task is not None:
        raw, awaiting = task_frames(task, thread_frame)
        if not task_running(task) and reason != "loop_blocked":
            state, ratio = "unknown", None
    else:
        raw = waits.thread_frames(thread_frame, MAX_WALK)
    frames = [frame_of(f) for f in raw]
    # A task suspended at an await waits on what its chain awaits; a running one, like a thread.
    suspended = task if task is not None and not task_running(task) else None
    text, where, waiting_in = render(frames)
    thread_name = None
    if thread_id is not None:
        thread = threading._active.get(thread_id)  # type: ignore[attr-defined]
        thread_name = thread.name if thread is not None else None
    return Diagnosis(
        reason=reason,
        state=state,
        elapsed=run.elapsed(now),
        since_heartbeat=run.seconds_since_heartbeat(now),
        threshold=threshold,
        policy=run.on_stall,
        cpu_ratio=ratio,
        stack=text,
        frames=frames,
        where=where,
        waiting_in=waiting_in,
        awaiting=awaiting,
        thread=thread_name,
        asyncio=run.task is not None,
        call=describe_call(run, now),
        wait=describe_wait(run, raw, frames, suspended, thread_frames, runs),
        loop=_describe_loop(run, loop, now),
        last_logs=logtail.last_lines(run),
    )


def _describe_loop(run: Run, loop: Any, now: float) -> dict[str, Any] | None:
    if loop is None:
        return None
    culprit = loop.culprit
    held = [r for r in loop.runs if r is not culprit and r is not run]
    return {
        "thread": loop.probe.thread_name,
        "blocked_s": round(loop.seconds, 3),
        "culprit": (
            {"job_name": culprit.name, "job_id": culprit.job_id or str(culprit.key)}
            if culprit is not None
            else None
        ),
        "held_up": [{"job_name": r.name, "job_id": r.job_id or str(r.key)} for r in held],
    }
