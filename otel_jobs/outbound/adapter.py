"""The one wrapper of every outbound check, and the adapter that installs it.

An adapter module (``httpx.py``, ``redis.py``, ...) says, for each library method it checks,
how to read a call in a :class:`CallCheck` (where the effective timeout is, which parts are
missing, the method and host, how to apply the default timeout, a hook before or after the call
where the library needs one) and lists those methods as :class:`Target` s of its
:class:`MethodAdapter`. :func:`wrap_sync` / :func:`wrap_async` do the rest, the same way for
every library: read the timeout, hand a flagged call or a call made inside a run to the
:class:`~otel_jobs.outbound.base.Checker` (report, refuse, track in flight), apply the default
under ``enforce``, call, end the in-flight entry (a heartbeat).

Invariants: on the hot path (a call with a timeout, outside any run) the wrapper reads the
timeout and calls through, nothing else; otel-jobs' own errors are counted
(``outbound.<library>``) and the call goes on as it was made; only
:class:`~otel_jobs.outbound.base.MissingTimeoutError` (policy ``raise``) and what an ``after``
hook raises on purpose reach the caller.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from ..core import errors
from ..core.patching import Patches
from ..core.run import Run, current_run
from .base import (
    Args,
    Checker,
    InFlightCall,
    Kwargs,
    Missing,
    MissingTimeoutError,
    call_site,
    is_framework_site,
)

if TYPE_CHECKING:
    from ..core.agent import Agent


_enabled: Callable[[], bool] | None = None


def is_instrumentation_enabled() -> bool:
    """Whether OpenTelemetry instrumentation is on here (an exporter turns it off around its own
    calls): contrib's function, imported at the first checked call rather than at install. It
    imports wrapt and the propagators (about 30 ms), and prometheus-client's own import of
    ``urllib.request`` installs the urllib check at every ``instrument()``."""
    global _enabled
    if _enabled is None:
        from opentelemetry.instrumentation.utils import is_instrumentation_enabled as enabled

        _enabled = enabled
    return _enabled()


def value_or_default(value: float | None, default: float) -> float:
    """``value`` when the caller set it, else the enforced default."""
    return default if value is None else value


#: True while a sync call of an ``outermost_only`` check is being checked: a library that calls
#: another one underneath (requests over urllib3, urllib3 retrying, urllib following a
#: redirect) is checked once.
_in_checked_call: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "otel_jobs_outbound", default=False
)


# --- one library call, read by its adapter -----------------------------------------------


@dataclass(frozen=True)
class CallCheck:
    """How an adapter reads one library call, for :func:`wrap_sync` / :func:`wrap_async`.

    Each function gets the wrapped call's ``args`` (``self``, or the class, first) and
    ``kwargs``; ``found`` is what ``timeout`` returned first (the call's timeout, or whatever
    the adapter reads it from: a request, a pool, a lock):

    * ``timeout(args, kwargs) -> (found, missing)``: the missing parts (``()`` when nothing is
      missing); called on every call, so it must be cheap.
    * ``describe(args, kwargs, found) -> (method, host)``, or None for a call that makes no
      network call (never checked); called only for a flagged call or one made inside a run.
    * ``enforce(args, kwargs, found, missing, default) -> (args, kwargs)``: what to call with
      under ``enforce``, ``default`` on the missing parts only; None: nothing to change.
    * ``before(args, kwargs)``: run first on every call (a coroutine function for an async
      target), e.g. to learn a session's timeout; it counts its own errors.
    * ``after(args, kwargs, result, enforced) -> result``: run when the call has returned
      (a coroutine function or not, for an async target); ``enforced`` is the parts given the
      default. What it raises reaches the caller: it counts its own errors.
    * ``outermost_only``: a call made while OpenTelemetry suppresses instrumentation (an
      exporter's own) is not checked, nor, for a sync call, one made underneath another
      checked call of such a check (requests over urllib3, a retry, a redirect).
    * ``waits``: the call waits for something (a lock) by polling: the calls it makes
      underneath are not heartbeats of the run, so a run stuck waiting is seen as stalled; the
      call itself, once it returns, is.
    * ``framework_own(found) -> bool`` and ``mark_framework_own(found)``: a connection (what
      ``timeout`` found: a redis-py pool) that the job framework itself uses, a worker's broker
      connection. Its first call without a timeout made by the framework outside any run marks
      it; from then on its calls outside runs are not checked (not described, no stack walk):
      a worker sends several per job. Calls made on it inside a run are checked as any other.
    """

    timeout: Callable[[Args, Kwargs], tuple[Any, Missing]]
    describe: Callable[[Args, Kwargs, Any], tuple[str, str] | None]
    enforce: Callable[[Args, Kwargs, Any, Missing, float], tuple[Args, Kwargs]] | None = None
    before: Callable[[Args, Kwargs], Any] | None = None
    after: Callable[[Args, Kwargs, Any, Missing], Any] | None = None
    outermost_only: bool = False
    waits: bool = False
    framework_own: Callable[[Any], bool] | None = None
    mark_framework_own: Callable[[Any], None] | None = None


Started = tuple[Run | None, InFlightCall | None, Args, Kwargs, Missing]


def _starter(
    checker: Checker, check: CallCheck, lazy_site: bool
) -> Callable[[Args, Kwargs], Started | None]:
    """What the wrapper does before the call, shared by sync and async calls.

    ``start(args, kwargs)`` reads the call's timeout and returns None for a call with a timeout
    made outside any run (the hot path: nothing else to do) or one whose timeout cannot be read.
    Else it reports the call (raising MissingTimeoutError under ``raise``), puts it in its run's
    in-flight calls, applies the default timeout under ``enforce``, and returns ``(run, call,
    args, kwargs, enforced)``: the call's in-flight entry, the arguments to call with, the parts
    given the default. Called by the wrapper itself, so that the wrapper's frame is the caller's
    (``lazy_site`` False for a coroutine: a suspended coroutine's frame has no ``f_back``).
    """
    read, describe, enforce, waits = check.timeout, check.describe, check.enforce, check.waits
    own, mark_own = check.framework_own, check.mark_framework_own
    component = f"outbound.{checker.library}"

    def start(args: Args, kwargs: Kwargs) -> Started | None:
        run = current_run()
        try:
            found, missing = read(args, kwargs)
            if run is None and (not missing or (own is not None and own(found))):
                return None  # the hot path; or the framework's own connection, outside any run
        except Exception as exc:  # unreadable: neither flagged nor tracked
            errors.record(component, exc)
            return None
        call = None
        enforced: Missing = ()
        try:
            described = describe(args, kwargs, found)
            if described is not None:
                method, host = described
                frame = sys._getframe(1)  # the wrapper's
                call = checker.begin(
                    run, method, host, missing, frame, lazy_site=lazy_site, waits=waits
                )
                if run is None and mark_own is not None and is_framework_site(call_site(frame)):
                    mark_own(found)
                if missing and enforce is not None and checker.applies_default_timeout:
                    args, kwargs = enforce(args, kwargs, found, missing, checker.default_timeout)
                    enforced = missing
        except MissingTimeoutError:
            raise
        except Exception as exc:  # otel-jobs' own fault: the call goes on as it was made
            errors.record(component, exc)
        return run, call, args, kwargs, enforced

    return start


def wrap_sync(
    checker: Checker, check: CallCheck, original: Callable[..., Any]
) -> Callable[..., Any]:
    """``original`` checked by ``checker`` as ``check`` says (see :class:`CallCheck`).

    >>> patches.wrap(HTTPAdapter, "send", functools.partial(wrap_sync, checker, CHECK))
    """
    start, before, after = _starter(checker, check, True), check.before, check.after

    def checked_call(*args: Any, **kwargs: Any) -> Any:
        if before is not None:
            before(args, kwargs)
        started = start(args, kwargs)
        if started is None:
            result = original(*args, **kwargs)
            return result if after is None else after(args, kwargs, result, ())
        run, call, args, kwargs, enforced = started
        try:
            result = original(*args, **kwargs)
        finally:
            if call is not None:
                checker.end(run, call)
        return result if after is None else after(args, kwargs, result, enforced)

    if not check.outermost_only:
        return checked_call

    def outermost_call(*args: Any, **kwargs: Any) -> Any:
        if _in_checked_call.get() or not is_instrumentation_enabled():
            return original(*args, **kwargs)
        token = _in_checked_call.set(True)
        try:
            return checked_call(*args, **kwargs)
        finally:
            _in_checked_call.reset(token)

    return outermost_call


def wrap_async(
    checker: Checker, check: CallCheck, original: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    """The coroutine function ``original`` checked by ``checker`` (see :class:`CallCheck`).

    >>> patches.wrap(ClientSession, "_request", functools.partial(wrap_async, checker, CHECK))
    """
    start, before, after = _starter(checker, check, False), check.before, check.after
    before_awaits = inspect.iscoroutinefunction(before)
    after_awaits = inspect.iscoroutinefunction(after)
    unless_suppressed = check.outermost_only

    async def checked_call(*args: Any, **kwargs: Any) -> Any:
        if unless_suppressed and not is_instrumentation_enabled():
            return await original(*args, **kwargs)
        if before is not None:
            await before(args, kwargs) if before_awaits else before(args, kwargs)
        started = start(args, kwargs)
        enforced: Missing = ()
        if started is None:
            result = await original(*args, **kwargs)
        else:
            run, call, args, kwargs, enforced = started
            try:
                result = await original(*args, **kwargs)
            finally:
                if call is not None:
                    checker.end(run, call)
        if after is None:
            return result
        if after_awaits:
            return await after(args, kwargs, result, enforced)
        return after(args, kwargs, result, enforced)

    return checked_call


def argument(args: Args, kwargs: Kwargs, index: int, name: str, default: Any) -> Any:
    """The argument at ``args[index]`` or ``kwargs[name]`` (``default`` when not passed)."""
    return args[index] if len(args) > index else kwargs.get(name, default)


def replace_argument(
    args: Args, kwargs: Kwargs, index: int, name: str, value: Any
) -> tuple[Args, Kwargs]:
    """``args`` and ``kwargs`` with the argument at ``args[index]`` or ``kwargs[name]`` set."""
    if len(args) > index:
        return (*args[:index], value, *args[index + 1 :]), kwargs
    return args, {**kwargs, name: value}


# --- adapters --------------------------------------------------------------------------------


class Target(NamedTuple):
    """A method an adapter checks: ``owner.attribute`` (a coroutine function if ``is_async``),
    read as ``check`` says, reported by ``checker`` (None: the adapter's own)."""

    owner: Any
    attribute: str
    check: CallCheck
    is_async: bool = False
    checker: Checker | None = None


class MethodAdapter:
    """An outbound adapter: checks the calls of its library's :meth:`targets`.

    A subclass gives its library's ``name``, its ``hint`` (how to fix a call) and
    ``targets()``, which imports the library (only at install time) and lists the methods to
    check. Install and uninstall mirror each other (:class:`otel_jobs.core.patching.Patches`).
    """

    name: str
    hint: str

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.checker = Checker(agent, self.name, self.hint)
        self.patches = Patches()

    def targets(self) -> Iterable[Target]:
        raise NotImplementedError

    def install(self) -> None:
        for owner, attribute, check, is_async, checker in list(self.targets()):
            wrap = wrap_async if is_async else wrap_sync
            make = functools.partial(wrap, checker or self.checker, check)
            self.patches.wrap(owner, attribute, make)

    def uninstall(self) -> None:
        self.patches.undo()
