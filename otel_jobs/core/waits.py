"""What a stuck run waits on: a lock, an event, a queue, and whether it can wait forever.

Called by the diagnosis (:mod:`otel_jobs.core.diagnosis`) on the frames of a run's thread, or on
the chain of coroutines of its asyncio task, it answers with a :class:`Wait`: the kind of
object (``threading.RLock``, ``queue.Queue.get``, ``asyncio.Event``...), whether the wait has a
timeout, and, for an ``RLock``, the thread that holds it (so that two runs deadlocked on each
other can be named).

How the object is found:

* **Waits written in Python** in the standard library (``threading.Condition/Event/Semaphore/
  Barrier``, ``Thread.join``, ``queue.Queue.get/put``, asyncio's locks and queues): a frame
  whose code is one of those functions. The outermost one below the user's code is the call
  the user made (``Queue.get`` rather than the ``Condition.wait`` inside it); its timeout is
  that frame's own ``timeout`` / ``block`` / ``blocking`` argument.
* **Waits in C** (``threading.Lock`` and ``RLock``: ``acquire()`` or ``with lock:``;
  ``queue.SimpleQueue.get()``): the instruction the innermost frame is executing (``dis``)
  names the object: a local, global or closure variable, with plain attributes after it
  (``self._lock``). Attributes are read statically, so no property or ``__getattr__`` runs;
  a call whose arguments are more than plain names and constants leaves the timeout unknown.
* **asyncio**: a lock or queue awaited in the task's own chain has no ``asyncio.wait_for``
  around it (that would run it in a task of its own); an ``asyncio.timeout()`` (or
  ``async_timeout``) around it is found as a timer of the loop that holds the task, which is
  read from the loop's private ``_scheduled`` heap (another loop, uvloop: timeout unknown).

What it must never do: render a value. Objects are read only for their type, an RLock's owner
(from its ``repr``, which is the only place CPython's C ``RLock`` shows it) and the timeout
argument; only kinds, thread idents and a yes/no leave this module. It runs on the watchdog's
thread, once per verdict, never on a run's hot path; any failure reads as "nothing found".
"""

from __future__ import annotations

import asyncio
import dis
import functools
import inspect
import queue
import re
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import errors

__all__ = ["Wait", "find"]

_MISSING = object()


@dataclass(frozen=True)
class Wait:
    """What a run waits on (see the module docstring)."""

    #: ``threading.RLock``, ``queue.Queue.get``, ``asyncio.Event``...
    kind: str
    #: True: the wait has a timeout; False: it can wait forever; None: unknown.
    timeout: bool | None
    #: The thread (``threading.get_ident()``) that holds it, when the object says (an RLock).
    owner: int | None = None
    #: ``id()`` of the object waited on (to recognise the same object), 0 if unknown.
    target: int = 0

    def describe(self) -> str:
        """``waiting on a threading.RLock without a timeout``."""
        what = self.kind + ("()" if self.kind.count(".") == 2 else "")
        article = "" if what.endswith("()") else ("an " if what[0] in "aeiou" else "a ")
        if self.timeout is False:
            how = "without a timeout"
        elif self.timeout:
            how = "with a timeout"
        else:
            how = "(timeout unknown)"
        return f"waiting on {article}{what} {how}"


# --- the standard library's waits written in Python ------------------------------------------


def _timeout_arg(values: dict[str, Any]) -> bool:
    timeout = values.get("timeout")
    return timeout is not None and not (isinstance(timeout, (int, float)) and timeout < 0)


def _blocking_timeout(flag: str) -> Callable[[dict[str, Any]], bool | None]:
    def read(values: dict[str, Any]) -> bool | None:
        if not values.get(flag, True):
            return True  # does not block: returns at once
        return _timeout_arg(values)

    return read


def _barrier_timeout(values: dict[str, Any]) -> bool:
    if _timeout_arg(values):
        return True
    barrier = values.get("self")
    return getattr(barrier, "_timeout", None) is not None


def _asyncio_never(values: dict[str, Any]) -> bool:
    return False  # an asyncio wait has no timeout argument: it is looked for around the task


@functools.lru_cache(maxsize=1)
def _python_waits() -> dict[types.CodeType, tuple[str, Callable[[dict[str, Any]], bool | None]]]:
    table: dict[types.CodeType, tuple[str, Callable[[dict[str, Any]], bool | None]]] = {}

    def add(func: Any, kind: str, timeout: Callable[[dict[str, Any]], bool | None]) -> None:
        code = getattr(func, "__code__", None)
        if isinstance(code, types.CodeType):
            table[code] = (kind, timeout)

    add(threading.Condition.wait, "threading.Condition", _timeout_arg)
    add(threading.Condition.wait_for, "threading.Condition", _timeout_arg)
    add(threading.Event.wait, "threading.Event", _timeout_arg)
    add(threading.Semaphore.acquire, "threading.Semaphore", _blocking_timeout("blocking"))
    add(threading.Barrier.wait, "threading.Barrier", _barrier_timeout)
    add(threading.Thread.join, "threading.Thread.join", _timeout_arg)
    add(queue.Queue.get, "queue.Queue.get", _blocking_timeout("block"))
    add(queue.Queue.put, "queue.Queue.put", _blocking_timeout("block"))
    add(asyncio.Lock.acquire, "asyncio.Lock", _asyncio_never)
    add(asyncio.Event.wait, "asyncio.Event", _asyncio_never)
    add(asyncio.Condition.wait, "asyncio.Condition", _asyncio_never)
    add(asyncio.Semaphore.acquire, "asyncio.Semaphore", _asyncio_never)
    add(asyncio.Queue.get, "asyncio.Queue.get", _asyncio_never)
    add(asyncio.Queue.put, "asyncio.Queue.put", _asyncio_never)
    barrier = getattr(asyncio, "Barrier", None)  # Python 3.11+
    if barrier is not None:
        add(barrier.wait, "asyncio.Barrier", _asyncio_never)
    return table


_ARGUMENT_NAMES = ("self", "timeout", "block", "blocking")


def _arguments(frame: types.FrameType) -> dict[str, Any]:
    """The few arguments of a standard library wait that say whether it has a timeout."""
    local = frame.f_locals
    return {name: local[name] for name in _ARGUMENT_NAMES if name in local}


# --- waits in C: the object named by the instruction being executed ---------------------------

_LOCK_TYPES: tuple[type, ...] = (type(threading.Lock()),)
_RLOCK_TYPES: tuple[type, ...] = tuple(
    {type(threading.RLock()), getattr(threading, "_PyRLock", type(threading.RLock()))}
)
_SIMPLE_QUEUE = queue.SimpleQueue
_OWNER = re.compile(r"\bowner=(\d+)")

_CALLS = {"CALL", "CALL_METHOD", "CALL_FUNCTION", "CALL_FUNCTION_KW", "CALL_KW"}
_WITH = {"BEFORE_WITH", "SETUP_WITH"}
_SKIPPED = {"PRECALL", "KW_NAMES", "CACHE", "EXTENDED_ARG", "PUSH_NULL", "NOP"}
_LOADS = {
    "LOAD_FAST", "LOAD_FAST_CHECK", "LOAD_FAST_BORROW", "LOAD_DEREF", "LOAD_CLASSDEREF",
    "LOAD_GLOBAL", "LOAD_NAME", "LOAD_CLOSURE",
}  # fmt: skip
_ARG_LOADS = _LOADS | {"LOAD_CONST", "LOAD_SMALL_INT"}


@functools.lru_cache(maxsize=512)
def _instructions(code: types.CodeType) -> tuple[list[dis.Instruction], dict[int, int]]:
    instructions = [i for i in dis.get_instructions(code) if i.opname != "CACHE"]
    return instructions, {ins.offset: n for n, ins in enumerate(instructions)}


def _name(ins: dis.Instruction) -> str | None:
    value = ins.argval
    if isinstance(value, tuple):  # LOAD_FAST_LOAD_FAST (a, b): b is pushed last
        value = value[-1]
    return value if isinstance(value, str) else None


def _load(frame: types.FrameType, ins: dis.Instruction) -> Any:
    """The value an instruction of ``_ARG_LOADS`` pushes, or ``_MISSING``."""
    if ins.opname in ("LOAD_CONST", "LOAD_SMALL_INT"):
        return ins.argval
    name = _name(ins)
    if name is None:
        return _MISSING
    if ins.opname == "LOAD_GLOBAL":
        scopes: tuple[Any, ...] = (frame.f_globals, frame.f_builtins)
    elif ins.opname == "LOAD_NAME":
        scopes = (frame.f_locals, frame.f_globals, frame.f_builtins)
    else:
        scopes = (frame.f_locals,)
    for scope in scopes:
        value = scope.get(name, _MISSING)
        if value is not _MISSING:
            return value
    return _MISSING


def _static_attribute(obj: Any, name: str) -> Any:
    """``obj.name`` when it is a plain value (instance dict, slot, module): no code runs."""
    try:
        value = inspect.getattr_static(obj, name)
    except AttributeError:
        return _MISSING
    if isinstance(value, types.MemberDescriptorType):  # a __slots__ member
        try:
            return value.__get__(obj, type(obj))
        except AttributeError:
            return _MISSING
    if hasattr(type(value), "__get__"):
        return _MISSING  # a property, or a method: reading it would run code, or is no object
    return value


def _expression(frame: types.FrameType, ins: list[dis.Instruction], k: int) -> tuple[Any, int]:
    """The value of a ``name(.attr)*`` or constant that ends at ``ins[k]``, and the index before it.

    ``(_MISSING, -1)`` when the instructions there are anything else.
    """
    attrs: list[str] = []
    while k >= 0 and ins[k].opname in ("LOAD_ATTR", "LOAD_METHOD"):
        name = _name(ins[k])
        if name is None:
            return _MISSING, -1
        attrs.append(name)
        k -= 1
    if k < 0 or ins[k].opname not in _ARG_LOADS:
        return _MISSING, -1
    value = _load(frame, ins[k])
    for name in reversed(attrs):
        if value is _MISSING:
            break
        value = _static_attribute(value, name)
    return value, k - 1


def _skip_values(ins: list[dis.Instruction], k: int, count: int) -> int:
    """The index before the ``count`` values pushed by straight-line code ending at ``ins[k]``."""
    depth = count
    while depth > 0:
        if k < 0 or ins[k].opname.startswith(("JUMP", "POP_JUMP", "RETURN", "FOR_ITER", "SEND")):
            return -1
        op = ins[k]
        try:
            depth -= dis.stack_effect(op.opcode, op.arg if op.opcode >= dis.HAVE_ARGUMENT else None)
        except ValueError:
            return -1
        k -= 1
    return k if depth == 0 else -1


def _call_at(frame: types.FrameType) -> tuple[Any, str, list[Any], dict[str, Any]] | None:
    """``(object, method, positional args, keyword args)`` of the C call ``frame`` is in.

    An argument is ``_MISSING`` when it is more than a name, an attribute or a constant; the
    method is ``__enter__`` for a ``with`` statement.
    """
    code = frame.f_code
    instructions, by_offset = _instructions(code)
    at = by_offset.get(frame.f_lasti)
    if at is None:
        return None
    op = instructions[at].opname
    if op in _WITH:
        obj, _ = _expression(frame, instructions, at - 1)
        return (obj, "__enter__", [], {}) if obj is not _MISSING else None
    argc = instructions[at].arg
    if op not in _CALLS or not isinstance(argc, int):
        return None
    k = at - 1
    names: tuple[str, ...] = ()
    while k >= 0 and instructions[k].opname in _SKIPPED:
        if instructions[k].opname == "KW_NAMES":
            index = instructions[k].arg
            names = code.co_consts[index] if isinstance(index, int) else ()
        k -= 1
    if op in ("CALL_KW", "CALL_FUNCTION_KW"):
        if k < 0 or not isinstance(instructions[k].argval, tuple):
            return None
        names = instructions[k].argval
        k -= 1
    args: list[Any] = []
    while len(args) < argc:
        value, before = _expression(frame, instructions, k)
        if before < 0 and value is _MISSING:
            k = _skip_values(instructions, k, argc - len(args))
            args.extend([_MISSING] * (argc - len(args)))
            break
        args.append(value)
        k = before
    args.reverse()
    if k < 0 or instructions[k].opname not in ("LOAD_ATTR", "LOAD_METHOD"):
        return None
    method = _name(instructions[k])
    obj, _ = _expression(frame, instructions, k - 1)
    if obj is _MISSING or method is None:
        return None
    keywords = dict(zip(names, args[len(args) - len(names) :], strict=True)) if names else {}
    return obj, method, args[: len(args) - len(names)], keywords


def _rlock_owner(lock: Any) -> int | None:
    owner = getattr(lock, "_owner", None)  # threading._PyRLock
    if isinstance(owner, int):
        return owner or None
    match = _OWNER.search(repr(lock))  # CPython's C RLock shows its owner only in its repr
    if match is None:
        return None
    ident = int(match.group(1))
    return ident or None


def _c_wait(frame: types.FrameType) -> Wait | None:
    found = _call_at(frame)
    if found is None:
        return None
    obj, method, args, kwargs = found
    if isinstance(obj, _LOCK_TYPES + _RLOCK_TYPES) and method in ("acquire", "__enter__"):
        kind = "threading.RLock" if isinstance(obj, _RLOCK_TYPES) else "threading.Lock"
        blocking = kwargs.get("blocking", args[0] if args else True)
        limit = kwargs.get("timeout", args[1] if len(args) > 1 else -1)
        owner = _rlock_owner(obj) if kind == "threading.RLock" else None
        return Wait(kind, _timed(blocking, limit, -1), owner, id(obj))
    if isinstance(obj, _SIMPLE_QUEUE) and method == "get":
        blocking = kwargs.get("block", args[0] if args else True)
        limit = kwargs.get("timeout", args[1] if len(args) > 1 else None)
        return Wait("queue.SimpleQueue.get", _timed(blocking, limit, None), None, id(obj))
    return None


def _timed(blocking: Any, limit: Any, forever: Any) -> bool | None:
    if blocking is _MISSING or limit is _MISSING:
        return None
    if not blocking:
        return True
    if limit is forever or limit is None:
        return False
    if isinstance(limit, (int, float)):
        return limit >= 0
    return None


# --- asyncio: a timeout around the task --------------------------------------------------------


def _task_has_timeout(task: asyncio.Task[Any]) -> bool | None:
    """Whether a timer of the task's loop will cancel it (``asyncio.timeout``, async_timeout)."""
    try:
        scheduled = getattr(task.get_loop(), "_scheduled", None)
    except Exception:
        return None
    if not isinstance(scheduled, list):
        return None
    for handle in list(scheduled):
        callback = getattr(handle, "_callback", None)
        owner = getattr(callback, "__self__", None)
        if owner is not None and getattr(owner, "_task", None) is task:
            cancelled = getattr(handle, "cancelled", None)
            if not (callable(cancelled) and cancelled()):
                return True
    return False


# --- the answer ------------------------------------------------------------------------------


def find(
    frames: list[types.FrameType],
    user: list[bool],
    task: asyncio.Task[Any] | None = None,
) -> Wait | None:
    """What the run whose frames these are (outermost first) waits on, if it is a known wait.

    ``user[i]`` says whether ``frames[i]`` is the user's code; ``task``: the run's asyncio
    task, when ``frames`` is its chain of coroutines.
    """
    if not frames:
        return None
    table = _python_waits()
    last_user = max((i for i, mine in enumerate(user) if mine), default=-1)
    for frame in frames[last_user + 1 :]:
        entry = table.get(frame.f_code)
        if entry is None:
            continue
        kind, timeout_of = entry
        values = _arguments(frame)
        obj = values.get("self")
        if kind.startswith("asyncio."):
            timeout = _task_has_timeout(task) if task is not None else None
        else:
            timeout = timeout_of(values)
        return Wait(kind, timeout, None, id(obj) if obj is not None else 0)
    if task is not None:
        return None  # a coroutine's frames are suspended at an await, never inside a C call
    try:
        return _c_wait(frames[-1])
    except Exception as exc:  # a bytecode layout this version does not know: no wait named
        errors.record("watchdog.waits", exc)
        return None


def thread_frames(frame: types.FrameType | None, limit: int = 400) -> list[types.FrameType]:
    """A thread's frames, outermost first (at most ``limit``, the innermost ones)."""
    frames: list[types.FrameType] = []
    while frame is not None and len(frames) < limit:
        frames.append(frame)
        frame = frame.f_back
    frames.reverse()
    return frames


def thread_owner_name(ident: int) -> str | None:
    """The name of the thread ``ident`` of this process, if it still runs."""
    thread = threading._active.get(ident)  # type: ignore[attr-defined]
    return thread.name if thread is not None else None
