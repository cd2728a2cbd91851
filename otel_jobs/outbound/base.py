"""What every outbound check shares: the policy, the call site, the report, the in-flight list.

An adapter (``otel_jobs/outbound/httpx.py``, ``redis.py``, ...) only knows its library: it says
how to read the calls of the methods it patches (:mod:`otel_jobs.outbound.adapter`), and the
one wrapper there hands every flagged call, and every call made inside a run, to a
:class:`Checker`. Everything else happens here, the same way for every library:

* **Call site.** ``module:function:line`` of the first frame outside the HTTP/DB client
  libraries, OpenTelemetry and otel-jobs itself (:data:`LIBRARY_MODULES`): the line of your
  code that made the call. Looked up only for a flagged call; whether a code object belongs to
  a library, and the text of a site, are cached per code location, so a lookup is a short
  walk up the stack with dictionary hits.
* **Report** of a flagged call: ``otel_jobs_outbound_calls_without_timeout_total{library,
  host, call_site}`` (host and call_site capped, overflow goes to ``__overflow__``);
  attributes on the call's own client span, when the current span is a recording CLIENT
  span (``otel_jobs.timeout.missing``, ``otel_jobs.timeout.policy``, ``otel_jobs.call_site``);
  one event ``otel_jobs.outbound.no_timeout`` on the current run's span per host and call site;
  a WARNING log the first time a call site is seen, then at most one a minute per call site
  (with the number of calls in between).
* **Policy** (``OTEL_JOBS_MISSING_TIMEOUT``): ``warn`` reports; ``enforce`` reports and the
  adapter applies ``OTEL_JOBS_DEFAULT_TIMEOUT`` to the missing parts only (but for the parts a
  :class:`Checker` is told never to enforce); ``raise`` reports and raises
  :class:`MissingTimeoutError` before anything is sent; ``off`` installs nothing.
* **In-flight calls.** Inside a run, every call (flagged or not) is in ``run.calls`` while it
  is in flight, so the watchdog can say "stuck 120 s in GET billing.internal (no read timeout)
  from jobs.sync:push:42"; the call site of a call with a timeout is looked up only if the
  watchdog asks. A completed call (returned or raised) is a heartbeat of its run.

Hosts are ``host`` or ``host:port``, never a user name, password, path or query string.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
import weakref
from types import FrameType
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind

from ..core import errors
from ..core.errors import JobTimeoutError
from ..core.redaction import host_of  # re-exported: part of this module's names
from ..core.run import OutboundCall, Run

if TYPE_CHECKING:
    from ..core.agent import Agent

logger = logging.getLogger("otel_jobs")

__all__ = [
    "LIBRARY_MODULES",
    "Checker",
    "MissingTimeoutError",
    "call_site",
    "host_of",
]

#: Top-level modules whose frames are never a call site: the client libraries, what they run
#: on, OpenTelemetry, and otel-jobs itself. The call site is the first frame outside them.
LIBRARY_MODULES: frozenset[str] = frozenset(
    (
        "otel_jobs", "opentelemetry", "wrapt",
        "httpx", "httpcore", "h11", "h2", "hpack", "anyio", "sniffio", "certifi",
        "requests", "urllib3", "urllib", "http", "socket", "ssl", "selectors",
        "aiohttp", "aiohappyeyeballs", "aiosignal", "yarl", "multidict", "async_timeout",
        "redis", "hiredis", "psycopg", "psycopg_c", "psycopg_binary", "psycopg_pool",
        "asyncio", "concurrent", "contextlib", "functools", "threading",
    )
)  # fmt: skip

#: Job frameworks: a call whose call site is in one of them, made outside any run, is the
#: framework's own (broker polling, worker heartbeats), which a user cannot give a timeout; it is
#: not flagged. Inside a run, a call through a framework (enqueueing a job) is the job's and is.
FRAMEWORK_MODULES: frozenset[str] = frozenset(
    ("celery", "kombu", "billiard", "rq", "dramatiq", "huey", "arq", "apscheduler")
)

#: A library call's positional and keyword arguments, and the parts of its timeout it misses.
Args = tuple[Any, ...]
Kwargs = dict[str, Any]
Missing = tuple[str, ...]

UNKNOWN_SITE = "unknown"
LOG_INTERVAL = 60.0  # seconds between two logs of the same call site, after the first
_MAX_CACHED = 10_000  # entries per cache before it is cleared (bounded memory)
_MAX_LOGGED_SITES = 1_000  # call sites with their own log rate limit; the rest share one


class MissingTimeoutError(JobTimeoutError):
    """An outbound call refused by ``OTEL_JOBS_MISSING_TIMEOUT=raise``: it had no timeout.

    Raised before anything is sent. ``library``, ``method``, ``host``, ``missing`` (the parts
    without a timeout, e.g. ``("connect", "read")``) and ``call_site`` say which call.

    >>> try:
    ...     httpx.get(url, timeout=None)
    ... except otel_jobs.MissingTimeoutError as exc:
    ...     print(exc.call_site)
    """

    def __init__(
        self, library: str, method: str, host: str, missing: tuple[str, ...], call_site: str
    ) -> None:
        self.library, self.method, self.host = library, method, host
        self.missing, self.call_site = missing, call_site
        super().__init__(
            f"otel-jobs refused {method} {host} via {library}: no {'/'.join(missing)} timeout, "
            f"from {call_site} (OTEL_JOBS_MISSING_TIMEOUT=raise); give the call or its client a timeout"
        )


# --- call site ---------------------------------------------------------------------------

_is_library: dict[Any, bool] = {}  # code object -> whether its module is in LIBRARY_MODULES
_sites: dict[tuple[Any, int], str] = {}  # (code object, line) -> "module:function:line"


def _in_library(frame: FrameType) -> bool:
    code = frame.f_code
    known = _is_library.get(code)
    if known is None:
        module = frame.f_globals.get("__name__") or ""
        # The demo plays the part of a user's code: its frames are call sites.
        known = module.partition(".")[0] in LIBRARY_MODULES and module != "otel_jobs.demo.jobs"
        if len(_is_library) >= _MAX_CACHED:
            _is_library.clear()
        _is_library[code] = known
    return known


def is_framework_site(site: str) -> bool:
    """Whether a call site (:func:`call_site`) is in a job framework's own code."""
    return site.partition(".")[0].partition(":")[0] in FRAMEWORK_MODULES


def call_site(frame: FrameType | None) -> str:
    """``module:function:line`` of the first frame at or above ``frame`` outside the libraries.

    >>> call_site(sys._getframe())   # in jobs/sync.py, function push, line 42
    'jobs.sync:push:42'
    """
    while frame is not None:
        if not _in_library(frame):
            code = frame.f_code
            key = (code, frame.f_lineno)
            site = _sites.get(key)
            if site is None:
                module = frame.f_globals.get("__name__") or "?"
                function = getattr(code, "co_qualname", code.co_name)
                site = f"{module}:{function}:{frame.f_lineno}"
                if len(_sites) >= _MAX_CACHED:
                    _sites.clear()
                _sites[key] = site
            return site
        frame = frame.f_back
    return UNKNOWN_SITE


# --- in-flight calls ---------------------------------------------------------------------


class InFlightCall(OutboundCall):
    """An entry of ``run.calls`` whose call site is looked up only when someone reads it.

    A sync call keeps the frame that made it (alive anyway while the call runs) and walks up
    from it on demand, so a call with a timeout costs no stack walk at all.
    """

    __slots__ = ("_frame", "_site", "_waiting")

    def __init__(
        self,
        library: str,
        method: str,
        host: str,
        missing: tuple[str, ...],
        site: str | None,
        frame: FrameType | None,
    ) -> None:
        self._frame = frame
        self._site = site
        self._waiting: contextvars.Token[bool] | None = None  # set while the call waits
        super().__init__(library, method, host, missing, site or "")

    @property
    def call_site(self) -> str:
        if self._site is None:
            self._site = call_site(self._frame)
            self._frame = None
        return self._site

    @call_site.setter
    def call_site(self, value: str) -> None:
        if value:
            self._site = value


#: True while a call that waits (a lock acquire polling Redis) is in flight: the calls it makes
#: underneath are answered, but the run is still waiting, so they are not heartbeats of the run.
waiting: contextvars.ContextVar[bool] = contextvars.ContextVar("otel_jobs_waiting", default=False)


# --- the checker -------------------------------------------------------------------------


class _Reporter:
    """Per-agent state of the reports: log rate limits and the run events already added."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.logged: dict[str, list[float]] = {}  # site -> [next log time, calls not logged]
        self.run_events: weakref.WeakKeyDictionary[Run, set[tuple[str, str, str]]] = (
            weakref.WeakKeyDictionary()
        )

    def log_due(self, site: str, now: float) -> int | None:
        """None: stay quiet; else the number of calls not logged since the last log."""
        with self.lock:
            if site not in self.logged and len(self.logged) >= _MAX_LOGGED_SITES:
                site = "__overflow__"
            state = self.logged.get(site)
            if state is None:
                self.logged[site] = [now + LOG_INTERVAL, 0]
                return 0
            if now < state[0]:
                state[1] += 1
                return None
            skipped = int(state[1])
            state[0], state[1] = now + LOG_INTERVAL, 0
            return skipped

    def first_in_run(self, run: Run, key: tuple[str, str, str]) -> bool:
        with self.lock:
            seen = self.run_events.get(run)
            if seen is None:
                seen = self.run_events[run] = set()
            if key in seen:
                return False
            seen.add(key)
            return True


_reporters: weakref.WeakKeyDictionary[Any, _Reporter] = weakref.WeakKeyDictionary()
_reporters_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would stay held forever in the child.
    global _reporters_lock
    _reporters_lock = threading.Lock()
    for reporter in list(_reporters.values()):
        reporter.lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _reporter_for(agent: Agent) -> _Reporter:
    with _reporters_lock:
        found = _reporters.get(agent)
        if found is None:
            found = _reporters[agent] = _Reporter()
        return found


class Checker:
    """One library's view of the policy: report flagged calls, track calls in flight.

    The wrapper (:func:`wrap_sync` / :func:`wrap_async`) reads a call's timeout itself, then
    calls :meth:`begin` only for a call that is flagged (``missing`` not empty) or made inside a
    run, and :meth:`end` when that call returns or raises. ``never_enforced`` names the parts
    that ``enforce`` leaves as they are (a lock's expiry: one chosen by otel-jobs could end a
    lock while its holder still works); they are reported all the same.
    """

    def __init__(
        self, agent: Agent, library: str, hint: str, *, never_enforced: tuple[str, ...] = ()
    ) -> None:
        self.agent = agent
        self.library = library
        self.hint = hint
        self.never_enforced = never_enforced
        settings = agent.settings
        self.policy = settings.missing_timeout
        #: ``enforce``: the adapter gives the missing parts ``default_timeout``.
        self.applies_default_timeout = self.policy == "enforce"
        #: ``raise``: a flagged call is refused with MissingTimeoutError before it is sent.
        self.refuses_flagged_calls = self.policy == "raise"
        self.default_timeout = settings.default_timeout
        self._reporter = _reporter_for(agent)

    def begin(
        self,
        run: Run | None,
        method: str,
        host: str,
        missing: tuple[str, ...],
        frame: FrameType | None,
        *,
        lazy_site: bool = True,
        waits: bool = False,
    ) -> InFlightCall | None:
        """Report a flagged call (policy ``raise``: refuse it) and put it in ``run.calls``.

        ``frame`` is the adapter's own frame (the call site is found above it). ``lazy_site``
        must be False for a coroutine: a suspended coroutine's frame has no ``f_back``.
        ``waits``: the call waits (polls) for something, until :meth:`end` (see :data:`waiting`).
        """
        site: str | None = None
        if missing:
            site = call_site(frame)
            if run is None and is_framework_site(site):
                missing = ()  # the framework's own call, outside any run: not the user's to fix
        if missing:
            assert site is not None
            with errors.guard(f"outbound.{self.library}"):
                self._report(run, method, host, missing, site)
            if self.refuses_flagged_calls:
                raise MissingTimeoutError(self.library, method, host, missing, site)
        if run is None:
            return None
        if site is None and not lazy_site:
            site = call_site(frame)
        call = InFlightCall(self.library, method, host, missing, site, frame)
        if waits:
            call._waiting = waiting.set(True)
        run.add_call(call)
        return call

    def end(self, run: Run | None, call: InFlightCall | None) -> None:
        """The call returned or raised: out of ``run.calls``, and a heartbeat of the run (but
        for a call made underneath one that waits, see :data:`waiting`)."""
        if call is not None:
            # The call kept the frame that made it, and that frame holds the call: a reference
            # cycle that would keep the caller's objects (a redis Pipeline, say) alive until the
            # cyclic GC, which may then run their __del__ while their library holds a lock.
            call._frame = None
        if run is None or call is None:
            return
        if call._waiting is not None:
            try:
                waiting.reset(call._waiting)
            except (ValueError, RuntimeError):  # ended in another context: nothing to undo here
                pass
            call._waiting = None
        if not waiting.get():
            run.last_beat = time.monotonic()
        run.remove_call(call)

    # --- the report ----------------------------------------------------------------------

    def _report(
        self, run: Run | None, method: str, host: str, missing: tuple[str, ...], site: str
    ) -> None:
        library = self.library
        self.agent.telemetry.record_no_timeout(library, host, site)
        policy = self.policy
        span = trace.get_current_span()
        if (
            getattr(span, "kind", None) is SpanKind.CLIENT
            and span.is_recording()
            and (run is None or span is not run.span)
        ):
            span.set_attribute("otel_jobs.timeout.missing", missing)
            span.set_attribute("otel_jobs.timeout.policy", policy)
            span.set_attribute("otel_jobs.call_site", site)
        if run is not None and run.span.is_recording():
            if self._reporter.first_in_run(run, (library, host, site)):
                run.span.add_event(
                    "otel_jobs.outbound.no_timeout",
                    {
                        "otel_jobs.outbound.library": library,
                        "otel_jobs.outbound.method": method,
                        "otel_jobs.outbound.host": host,
                        "otel_jobs.timeout.missing": missing,
                        "otel_jobs.timeout.policy": policy,
                        "otel_jobs.call_site": site,
                    },
                )
        skipped = self._reporter.log_due(site, time.monotonic())
        if skipped is None:
            return
        more = f" ({skipped} more such calls from there in the last minute)" if skipped else ""
        logger.warning(
            "otel-jobs: %s %s via %s has no %s, from %s: %s%s. Fix: %s",
            method, host, library, self.missing_text(missing), site, self._outcome(missing),
            more, self.hint,
        )  # fmt: skip

    def missing_text(self, missing: tuple[str, ...]) -> str:
        """The missing parts as the log names them: ``connect/read timeout``. An adapter whose
        parts read better otherwise (psycopg's lock part) words them in a subclass."""
        return "/".join(missing) + " timeout"

    def _outcome(self, missing: tuple[str, ...]) -> str:
        """What the policy does to a call missing these parts, for the log."""
        if self.policy == "raise":
            return "otel-jobs refused it"
        if self.policy != "enforce":
            return "it can hang forever"
        kept = "/".join(part for part in missing if part in self.never_enforced)
        if not kept:
            return f"otel-jobs applied {self.default_timeout:g} s to the missing parts"
        applied = "/".join(part for part in missing if part not in self.never_enforced)
        if not applied:
            return f"otel-jobs never enforces the {kept} part: set it yourself"
        return (
            f"otel-jobs applied {self.default_timeout:g} s to the {applied} part; it never "
            f"enforces the {kept} part: set it yourself"
        )
