"""Stacks of runs that may be stuck, and the CPU their threads use: what the watchdog reads.

* :func:`thread_stack` / :func:`task_stack` / :func:`task_frames`: a thread's frames (from
  :func:`current_frames`), or an asyncio task's chain of coroutines followed down to the
  innermost ``await``; only code locations (file, line, function) are read, never a local
  variable, so a stack cannot leak data a job holds;
* :func:`render`: the user's own frames first, the library frames below them with the innermost
  call last, the frames above the outermost user frame counted, not shown; at most
  :data:`MAX_FRAMES` frames and :data:`MAX_STACK_CHARS` characters;
* :func:`thread_cpu_seconds` / :func:`state_of`: ``blocked`` (below :data:`SPINNING_RATIO` of one
  core since the previous look), ``spinning`` or ``unknown``, from
  ``/proc/self/task/<native_id>/stat`` (Linux).

Used by :mod:`otel_jobs.core.diagnosis`; imported at the first verdict, not at start-up.
"""

from __future__ import annotations

import asyncio
import functools
import os
import site
import sys
import sysconfig
from dataclasses import dataclass
from types import FrameType
from typing import Any

#: At most this many frames are kept in a rendered stack.
MAX_FRAMES = 40
#: A rendered stack is cut to this many characters (it also goes on a span attribute).
MAX_STACK_CHARS = 4000
#: A thread that used at least this share of one core since the previous look is spinning.
SPINNING_RATIO = 0.2
#: Frames walked at most, from the innermost outwards (a deep recursion is cut here).
MAX_WALK = 400

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


def frame_of(frame: FrameType) -> Frame:
    code = frame.f_code
    module = frame.f_globals.get("__name__", "") if frame.f_globals is not None else ""
    path, user = _classify(code.co_filename, module if isinstance(module, str) else "")
    name = getattr(code, "co_qualname", code.co_name)
    return Frame(path, frame.f_lineno or code.co_firstlineno, name, user)


def thread_stack(frame: FrameType | None) -> list[Frame]:
    """The frames of a thread from the outermost to ``frame`` (innermost last)."""
    frames: list[Frame] = []
    while frame is not None and len(frames) < MAX_WALK:
        frames.append(frame_of(frame))
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
    while coro is not None and seen < MAX_WALK:
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
    return [frame_of(f) for f in frames], awaiting


def task_frames(
    task: asyncio.Task[Any], thread_frame: FrameType | None
) -> tuple[list[FrameType], str | None]:
    """:func:`task_stack` as the frames themselves."""
    coro = task.get_coro()
    if task_running(task) and thread_frame is not None:
        outer = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        walked: list[FrameType] = []
        frame: FrameType | None = thread_frame
        while frame is not None and len(walked) < MAX_WALK:
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


def current_frames() -> dict[int, FrameType]:
    """One ``sys._current_frames()`` (all threads of this process)."""
    return sys._current_frames()
