"""Where a stuck run is stuck, and whether it waits or burns CPU: the watchdog's diagnosis.

When the watchdog gives a run a verdict (see :mod:`otel_jobs.core.watchdog`) it looks at the
run without stopping it and builds a :class:`Diagnosis`:

* **stack**: for a run in a thread, that thread's current frame (``sys._current_frames()``);
  for an asyncio run, the task's chain of coroutines (each ``await`` followed down to the
  innermost one, or the loop thread's frames when the task is the one running right now).
  It is rendered with the user's own frames first, then the library frames below them with the
  innermost call last; the frames above the outermost user frame (the worker loop, the
  framework, otel-jobs itself) are counted, not shown. At most :data:`MAX_FRAMES` frames and
  :data:`MAX_STACK_CHARS` characters. Only code locations (file, line, function) are read:
  never a local variable, so a diagnosis cannot leak data a job holds.
* **where**: the innermost user frame (``billing/sync.py:88 in sync_invoices``), the line the
  run is waiting on; **waiting_in**: the innermost frame when it is library code
  (``socket.py:706 in readinto``).
* **state**: ``blocked`` when the run's thread used next to no CPU since the watchdog's
  previous look (below :data:`SPINNING_RATIO` of one core: waiting on I/O, a lock, a sleep),
  ``spinning`` when it burned CPU (a loop, heavy computation), ``unknown`` when it cannot be
  measured. CPU time is read per thread from ``/proc/self/task/<native_id>/stat`` (Linux; a
  thread that has gone simply reads as unknown). An asyncio task that is suspended at an
  ``await`` shares its loop's thread with other tasks, so its state is ``unknown``; a task
  that holds the loop (it is running at the moment of the look) is measured like a thread.
* **call**: the outbound call the run is inside, when an outbound adapter recorded one in
  ``run.calls``: library, method, host, seconds elapsed, and whether it has a timeout.
* **wait** (:mod:`otel_jobs.core.waits`): what a blocked run waits on (a lock, an event, a
  queue), whether it can wait forever, and, for an ``RLock``, the run that holds it; a chain of
  holders that comes back to the run is reported as a deadlock. That module is the one place
  that reads an object a frame holds: for its type, owner and timeout only, never rendered.
* **loop** (:mod:`otel_jobs.core.loop_probe`): for an asyncio run whose event loop has run
  nothing for more than a watchdog tick, the loop's thread, for how long, and the runs held up.
  The reason ``loop_blocked`` is the verdict on the loop itself, given to the run holding it
  (else to the oldest run on it): its stack is the loop thread's, the synchronous line that
  blocks it, and its state that thread's CPU use.
* **db** (:mod:`otel_jobs.core.pg_locks`): for a run inside a psycopg statement, the sessions
  that block its backend; the watchdog fills it in, off its own thread, before the verdict is
  emitted.
* **last logs** (:mod:`otel_jobs.core.logtail`): the run's last log records (redacted), with
  their age.

A diagnosis renders itself as a log message (:meth:`Diagnosis.message`), span attributes
(:meth:`Diagnosis.attributes`) and log ``extra`` fields (:meth:`Diagnosis.extra`).
"""

from __future__ import annotations

import asyncio
import functools
import os
import site
import sys
import sysconfig
import threading
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from . import logtail, waits

if TYPE_CHECKING:
    from .run import Run

#: At most this many frames are kept in a rendered stack.
MAX_FRAMES = 40
#: A rendered stack is cut to this many characters (it also goes on a span attribute).
MAX_STACK_CHARS = 4000
#: A thread that used at least this share of one core since the previous look is spinning.
SPINNING_RATIO = 0.2
#: Frames walked at most, from the innermost outwards (a deep recursion is cut here).
_MAX_WALK = 400

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The demo plays the part of a user's code: its frames count as the user's.
_USER_MODULES_INSIDE = ("otel_jobs.demo.jobs",)


@dataclass(frozen=True)
class Frame:
    """One code location of a stack: never a variable's value."""

    path: str
    lineno: int
    function: str
    user: bool

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno} in {self.function}"


def _library_roots() -> tuple[str, ...]:
    """Where installed code lives: the standard library, site-packages and the script
    directories (console scripts such as ``celery`` or ``rq``: their frame is at the bottom of
    every stack a worker forks, and is never the user's)."""
    paths = sysconfig.get_paths()
    found = {paths.get(key) for key in ("stdlib", "platstdlib", "purelib", "platlib", "scripts")}
    user = sysconfig.get_paths(sysconfig.get_preferred_scheme("user"))  # pip install --user
    found.update((user.get("purelib"), user.get("scripts")))
    try:
        found.update(site.getsitepackages())
    except AttributeError:  # some virtualenv versions lack it
        pass
    found.add(getattr(site, "USER_SITE", None))
    # The interpreter's own directory: /usr/bin/celery of a system Python, whose `scripts`
    # scheme path is /usr/local/bin.
    found.add(os.path.dirname(sys.executable) if sys.executable else None)
    roots: set[str] = set()
    for path in filter(None, found):
        # Both spellings: frames may name a file through a symbolic link or its target.
        roots.update((os.path.abspath(path), os.path.realpath(path)))
    # Longest first, so that site-packages inside the stdlib tree wins when shortening paths.
    return tuple(sorted((r.rstrip(os.sep) + os.sep for r in roots), key=len, reverse=True))


_ROOTS = _library_roots()


@functools.lru_cache(maxsize=4096)
def _classify(filename: str, module: str) -> tuple[str, bool]:
    """``(path to show, is the user's code)`` for a code file (cached: a stack repeats files)."""
    if filename.startswith("<"):
        return filename, False
    absolute = os.path.abspath(filename)
    if module.startswith("otel_jobs") and module not in _USER_MODULES_INSIDE:
        return os.path.relpath(absolute, os.path.dirname(_PACKAGE_DIR)), False
    for candidate in (absolute, os.path.realpath(absolute)):
        for root in _ROOTS:
            if candidate.startswith(root):
                return candidate[len(root) :], False
    try:
        relative = os.path.relpath(absolute)
    except ValueError:  # another drive (Windows)
        relative = absolute
    return (absolute if relative.startswith("..") else relative), True


def _frame(frame: FrameType) -> Frame:
    code = frame.f_code
    module = frame.f_globals.get("__name__", "") if frame.f_globals is not None else ""
    path, user = _classify(code.co_filename, module if isinstance(module, str) else "")
    name = getattr(code, "co_qualname", code.co_name)
    return Frame(path, frame.f_lineno or code.co_firstlineno, name, user)


def thread_stack(frame: FrameType | None) -> list[Frame]:
    """The frames of a thread from the outermost to ``frame`` (innermost last)."""
    frames: list[Frame] = []
    while frame is not None and len(frames) < _MAX_WALK:
        frames.append(_frame(frame))
        frame = frame.f_back
    frames.reverse()
    return frames


def _coroutine_chain(coro: Any) -> tuple[list[FrameType], str | None]:
    """Frames of a suspended coroutine and of everything it awaits, outermost first.

    Returns the frames and a description of the innermost awaited object that is not a
    coroutine (a Future, a sleep, a lock), if any.
    """
    frames: list[FrameType] = []
    awaiting: str | None = None
    seen = 0
    while coro is not None and seen < _MAX_WALK:
        seen += 1
        frame = (
            getattr(coro, "cr_frame", None)
            or getattr(coro, "gi_frame", None)
            or getattr(coro, "ag_frame", None)
        )
        if frame is None:
            if not frames:
                break
            awaiting = type(coro).__name__
            break
        frames.append(frame)
        nxt = getattr(coro, "cr_await", None)
        if nxt is None:
            nxt = getattr(coro, "gi_yieldfrom", None)
        if nxt is None:
            nxt = getattr(coro, "ag_await", None)
        coro = nxt
    return frames, awaiting


def task_running(task: asyncio.Task[Any]) -> bool:
    """Whether the task's coroutine is executing right now (it holds its loop's thread)."""
    coro = task.get_coro()
    return bool(getattr(coro, "cr_running", False) or getattr(coro, "gi_running", False))


def task_stack(
    task: asyncio.Task[Any], thread_frame: FrameType | None
) -> tuple[list[Frame], str | None]:
    """The stack of an asyncio task, outermost first, and what it awaits.

    A suspended task is followed through its ``await`` chain. A task running at this moment
    has its coroutines on the loop thread's stack, which is then used from the task's own
    coroutine frame inwards (so a coroutine stuck in a blocking call shows where).
    """
    frames, awaiting = task_frames(task, thread_frame)
    return [_frame(f) for f in frames], awaiting


def task_frames(
    task: asyncio.Task[Any], thread_frame: FrameType | None
) -> tuple[list[FrameType], str | None]:
    """:func:`task_stack` as the frames themselves."""
    coro = task.get_coro()
    if task_running(task) and thread_frame is not None:
        outer = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        walked: list[FrameType] = []
        frame: FrameType | None = thread_frame
        while frame is not None and len(walked) < _MAX_WALK:
            walked.append(frame)
            if frame is outer:
                break
            frame = frame.f_back
        walked.reverse()
        return walked, None
    return _coroutine_chain(coro)


def render(frames: list[Frame]) -> tuple[str, Frame | None, Frame | None]:
    """Render a stack (user frames first, innermost last) and pick where/waiting_in.

    Returns ``(text, where, waiting_in)``: ``where`` is the innermost user frame (or the
    innermost frame when no frame is the user's), ``waiting_in`` the innermost frame when it
    is library code below ``where``.
    """
    if not frames:
        return "(no stack: the run's thread or task was not found)", None, None
    user_idx = [i for i, f in enumerate(frames) if f.user]
    innermost = frames[-1]
    if not user_idx:
        shown = frames[-MAX_FRAMES:]
        lines = [f"  {f}" for f in shown]
        if len(frames) > len(shown):
            lines.insert(0, f"  ({len(frames) - len(shown)} outer frames not shown)")
        return _cut("\n".join(lines)), innermost, None
    first_user, last_user = user_idx[0], user_idx[-1]
    lines = []
    if first_user:
        lines.append(f"({first_user} outer frames of the worker and libraries not shown)")
    user_part = _collapse(frames[first_user : last_user + 1])
    below = _collapse(frames[last_user + 1 :])
    user_budget = MAX_FRAMES // 2 if below else MAX_FRAMES
    if len(user_part) > user_budget:
        # Keep the innermost user frames: they say what the job is doing now.
        skipped = len(user_part) - user_budget
        user_part = user_part[skipped:]
        lines.append(f"  ... {skipped} frames ...")
    lines.extend(_line(item) for item in user_part)
    below_budget = MAX_FRAMES - len(user_part)
    if len(below) > below_budget:
        head = max(below_budget // 3, 1)
        tail = below_budget - head
        lines.extend(_line(item) for item in below[:head])
        lines.append(f"    ... {len(below) - head - tail} frames ...")
        below = below[-tail:]
    lines.extend(_line(item) for item in below)
    where = frames[last_user]
    waiting = innermost if last_user < len(frames) - 1 else None
    return _cut("\n".join(lines)), where, waiting


def _collapse(frames: list[Frame]) -> list[Frame | str]:
    """Frames with long runs of the same frame (recursion) said once, as tracebacks do."""
    items: list[Frame | str] = []
    i = 0
    while i < len(frames):
        j = i
        while j + 1 < len(frames) and frames[j + 1] == frames[i]:
            j += 1
        repeated = j - i + 1
        items.extend(frames[i : i + min(repeated, 3)])
        if repeated > 3:
            items.append(f"[the frame above repeated {repeated - 3} more times]")
        i = j + 1
    return items


def _line(item: Frame | str) -> str:
    # The user's frames flush left, library frames (and notes) indented.
    if isinstance(item, Frame) and item.user:
        return f"  {item}"
    return f"    {item}"


def _cut(text: str) -> str:
    if len(text) <= MAX_STACK_CHARS:
        return text
    return "...\n" + text[-(MAX_STACK_CHARS - 4) :]


# --- CPU time per thread ----------------------------------------------------------------


def thread_cpu_seconds(native_id: int | None) -> float | None:
    """CPU seconds (user + system) a thread of this process has used, or None if unknown."""
    if native_id is None:
        return None
    try:
        with open(f"/proc/self/task/{native_id}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    try:
        # Fields after the command name (which may hold spaces and parentheses).
        fields = data.rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    except (IndexError, ValueError):
        return None


def state_of(cpu_delta: float | None, wall_delta: float) -> tuple[str, float | None]:
    """``(state, share of one core)`` from CPU seconds used over ``wall_delta`` seconds."""
    if cpu_delta is None or wall_delta <= 0:
        return "unknown", None
    ratio = max(cpu_delta, 0.0) / wall_delta
    return ("spinning" if ratio >= SPINNING_RATIO else "blocked"), ratio


# --- the diagnosis ------------------------------------------------------------------------

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
        raw = waits.thread_frames(thread_frame, _MAX_WALK)
        task = None
    elif task is not None:
        raw, awaiting = task_frames(task, thread_frame)
        if not task_running(task) and reason != "loop_blocked":
            state, ratio = "unknown", None
    else:
        raw = waits.thread_frames(thread_frame, _MAX_WALK)
    frames = [_frame(f) for f in raw]
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
        wait=_describe_wait(run, raw, frames, suspended, thread_frames, runs),
        loop=_describe_loop(run, loop, now),
        last_logs=logtail.last_lines(run),
    )


def _holder(ident: int, by_thread: dict[int, Run]) -> dict[str, Any]:
    holder = by_thread.get(ident)
    return {
        "thread": waits.thread_owner_name(ident),
        "job_name": holder.name if holder is not None else None,
        "job_id": (holder.job_id or str(holder.key)) if holder is not None else None,
    }


def _describe_wait(
    run: Run,
    raw: list[FrameType],
    frames: list[Frame],
    task: asyncio.Task[Any] | None,
    thread_frames: dict[int, FrameType],
    runs: list[Run] | None,
) -> dict[str, Any] | None:
    """What the run waits on (core.waits), with the run holding it and a deadlock named."""
    found = waits.find(raw, [f.user for f in frames], task)
    if found is None:
        return None
    by_thread: dict[int, Run] = {}
    for other in sorted(runs or (), key=lambda r: r.start_mono):
        if other.thread_id is not None and other.task is None and not other.finished:
            by_thread[other.thread_id] = other  # the innermost (latest) run of a thread
    description = found.describe()
    holder = deadlock = None
    if found.owner is not None and found.owner != run.thread_id:
        holder = _holder(found.owner, by_thread)
        if holder["job_name"] is not None:
            description += f"; held by run {holder['job_id']} of {holder['job_name']}"
        else:
            description += f"; held by thread {holder['thread'] or found.owner}"
        deadlock = _deadlock(run, found.owner, thread_frames, by_thread)
        if deadlock is not None:
            chain = [f"run {d['job_id']} of {d['job_name']}" for d in deadlock]
            description += "; deadlock: this run waits on " + ", which waits on ".join(
                [*chain, "this run"]
            )
    return {
        "kind": found.kind,
        "timeout": found.timeout,
        "holder": holder,
        "deadlock": deadlock,
        "description": description,
    }


def _deadlock(
    run: Run, owner: int, thread_frames: dict[int, FrameType], by_thread: dict[int, Run]
) -> list[dict[str, Any]] | None:
    """The runs holding what each next one waits on, when that comes back to ``run``."""
    chain: list[dict[str, Any]] = []
    seen = {run.thread_id}
    while len(chain) < 8:
        holder = by_thread.get(owner)
        if holder is None or owner in seen:
            return None
        chain.append(_holder(owner, by_thread))
        seen.add(owner)
        raw = waits.thread_frames(thread_frames.get(owner), _MAX_WALK)
        found = waits.find(raw, [_frame(f).user for f in raw])
        if found is None or found.owner is None:
            return None
        if found.owner == run.thread_id:
            return chain
        owner = found.owner
    return None


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


def current_frames() -> dict[int, FrameType]:
    """One ``sys._current_frames()`` (all threads of this process)."""
    return sys._current_frames()
