"""The one place where otel-jobs reads or uses asyncio's private event-loop internals.

The event-loop probe (:mod:`otel_jobs.core.loop_probe`) needs four things that asyncio has no
public API for; each is read here and nowhere else, and each has a public fallback:

* :func:`thread_of`: the thread running a loop (``BaseEventLoop._thread_id``); else None (the
  probe's first answer tells it);
* :func:`idle`: whether a loop thread's innermost frame is the loop waiting for I/O: a
  selector's ``select()`` called by ``BaseEventLoop._run_once`` (a coroutine that calls a
  selector itself, as ``subprocess.run`` does, is not idle); else False (the loop is probed);
* :func:`post`: queue a callback on a loop that is known to be busy, without writing to its
  self-pipe (``BaseEventLoop._call_soon``: what ``call_soon_threadsafe`` does before
  ``_write_to_self``); the loop runs it after its current callbacks. Else False, and the
  caller uses ``call_soon_threadsafe``;
* :func:`wake`: write to a loop's self-pipe (``_write_to_self``), for a callback posted just as
  the loop went to wait in its selector; else a no-op ``call_soon_threadsafe``.

:func:`supported` says whether this Python's asyncio has them all (``tests/watchdog`` fails
loudly when it does not); a loop of another kind (uvloop) or in debug mode takes the public
path. asyncio is imported at the first use, not with otel-jobs: by then there is a loop to
probe.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from contextvars import Context
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop


@functools.lru_cache(maxsize=1)
def _base() -> Any:
    from asyncio import base_events

    return base_events.BaseEventLoop


@functools.lru_cache(maxsize=1)
def supported() -> bool:
    """Whether this Python's asyncio has what :func:`post`, :func:`wake` and :func:`idle` use."""
    base = _base()
    return all(
        callable(getattr(base, name, None))
        for name in ("_call_soon", "_write_to_self", "_run_once")
    )


def thread_of(loop: AbstractEventLoop) -> int | None:
    """The identity of the thread running ``loop`` (asyncio's loops keep it while they run)."""
    ident = getattr(loop, "_thread_id", None)
    return ident if isinstance(ident, int) else None


@functools.lru_cache(maxsize=1)
def _idle_codes() -> tuple[frozenset[CodeType], CodeType | None]:
    """The selectors' select() codes and asyncio's _run_once code."""
    import selectors

    names = ("SelectSelector", "PollSelector", "EpollSelector", "DevpollSelector", "KqueueSelector")
    selects = frozenset(
        getattr(selectors, n).select.__code__ for n in names if hasattr(selectors, n)
    )
    run_once = getattr(getattr(_base(), "_run_once", None), "__code__", None)
    return selects, run_once


def idle(frame: FrameType | None) -> bool:
    """Whether a loop thread's innermost frame is its loop waiting for I/O (see above)."""
    if frame is None:
        return False
    selects, run_once = _idle_codes()
    if frame.f_code not in selects:
        return False
    caller = frame.f_back
    return caller is not None and run_once is not None and caller.f_code is run_once


def post(
    loop: AbstractEventLoop, callback: Callable[[int], None], arg: int, context: Context
) -> bool:
    """Queue ``callback(arg)`` on a busy ``loop`` without waking it; False: not possible here."""
    if not supported() or not isinstance(loop, _base()) or loop.get_debug():
        return False
    loop._call_soon(callback, (arg,), context)
    return True


def _nothing() -> None:
    pass


def wake(loop: AbstractEventLoop) -> None:
    """Make ``loop`` return from its selector (it then runs the callbacks queued on it)."""
    write = getattr(loop, "_write_to_self", None) if supported() else None
    if write is not None:
        write()
    else:
        loop.call_soon_threadsafe(_nothing)
