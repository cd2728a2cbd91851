"""The public entry points: ``instrument()``, ``uninstrument()``, ``@job``, ``job_run``.

Call :func:`instrument` once where a worker process starts. It reads the settings
(keyword arguments over ``OTEL_JOBS_*`` environment variables), chooses or creates the
OpenTelemetry providers, serves ``/metrics``, starts the watchdog, and hooks the job
frameworks and outbound libraries that are installed.

Runs of code that no framework drives are marked with :func:`job` (a decorator for sync and
async functions) or :func:`job_run` (a context manager, ``with`` or ``async with``).
When otel-jobs is not instrumented, both call straight through.
"""

from __future__ import annotations

import functools
import inspect
import logging
import reprlib
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar, overload

from .core import agent as _agent_mod
from .core import config as _config
from .core.plain_runs import plan as plain_plan
from .core.plain_runs import start_run as start_plain_run
from .core.run import Run, classify

logger = logging.getLogger("otel_jobs")

F = TypeVar("F", bound=Callable[..., Any])
_said_twice = False


def instrument(**options: Any) -> None:
    """Start otel-jobs in this process (idempotent).

    >>> import otel_jobs
    >>> otel_jobs.instrument(prometheus_port=9464, max_duration=600)

    Accepts every setting of the configuration table (``docs/configuration.md``) as a keyword
    argument, plus
    ``jobs={"name": {"max_duration": ..., "heartbeat_timeout": ..., "on_stall": ...,
    "expected_every": ...}}``,
    ``tracer_provider=`` and ``meter_provider=``. Raises
    :class:`~otel_jobs.ConfigurationError` for an invalid value. A second call does nothing
    (and says so once in the log); call :func:`uninstrument` first to change settings.
    """
    global _said_twice
    tracer_provider = options.pop("tracer_provider", None)
    meter_provider = options.pop("meter_provider", None)
    settings = _config.load(**options)
    with _agent_mod.lock():
        if _agent_mod.current() is not None:
            if not _said_twice:
                _said_twice = True
                logger.info(
                    "otel-jobs: instrument() called again; already instrumented, nothing changed"
                )
            return
        agent = _agent_mod.Agent(settings, tracer_provider, meter_provider)
        _agent_mod.install(agent)
        try:
            agent.start()
        except BaseException:
            _agent_mod.uninstall()
            agent.stop()
            raise
        if agent.server is not None:
            logger.info("otel-jobs: serving metrics on %s", agent.server.url)


def uninstrument() -> None:
    """Undo :func:`instrument`: unpatch every framework and library, stop the watchdog and the endpoint."""
    global _said_twice
    with _agent_mod.lock():
        agent = _agent_mod.uninstall()
        _said_twice = False
    if agent is not None:
        agent.stop()


def is_instrumented() -> bool:
    """Whether :func:`instrument` is in effect in this process."""
    return _agent_mod.current() is not None


def metrics_url() -> str | None:
    """The URL of this process's ``/metrics`` endpoint, if it serves one.

    Asking for it starts the endpoint and the watchdog if they have not started yet (they
    start lazily by default, see ``start`` in ``docs/configuration.md``): a process that wants
    its URL serves. ``None`` when not instrumented, with ``prometheus=False``, in a forked
    child (its parent serves) or when the port could not be bound.

    >>> otel_jobs.metrics_url()
    'http://127.0.0.1:9464/metrics'
    """
    agent = _agent_mod.current()
    if agent is None:
        return None
    agent.start_serving()
    return agent.server.url if agent.server is not None else None


def _settle(run: Run) -> None:
    """Deactivate ``run``, finishing it as ``timeout`` if it is not finished yet.

    That happens only when the watchdog's cancel (an exception raised asynchronously in the
    thread) lands between the job's last line and the start of ``run.finish``.
    """
    try:
        if not run.finished:
            run.finish("timeout")
    finally:
        run.deactivate()


def _run_options(
    queue: str | None,
    max_duration: float | None,
    heartbeat_timeout: float | None,
    on_stall: str | None,
    expected_every: float | None,
) -> dict[str, Any]:
    """The options a run of ``@job`` or ``job_run`` passes to the agent, validated (an invalid
    value raises :class:`~otel_jobs.ConfigurationError` naming it): only those given, as each
    keyword argument costs every run its binding."""
    settings = _config.parse_job_settings(
        "job",
        {
            "max_duration": max_duration,
            "heartbeat_timeout": heartbeat_timeout,
            "on_stall": on_stall,
            "expected_every": expected_every,
        },
    )
    given = {
        "queue": queue,
        "max_duration": settings.max_duration,
        "heartbeat_timeout": settings.heartbeat_timeout,
        "on_stall": settings.on_stall,
        "expected_every": settings.expected_every,
    }
    return {key: value for key, value in given.items() if value is not None}


def _enter(run: Run) -> Run:
    """Make a started ``run`` current; if that fails (out of stack, say), end it: never leave a
    run in flight."""
    try:
        run.activate()
    except BaseException as exc:
        try:
            run.finish(classify(exc), exc)
        finally:
            run.deactivate()
        raise
    return run


def _first_run(
    agent: Any, known: list[Any], name: str, options: dict[str, Any], args: Any, kw: Any
) -> Run:
    """Start a run of ``@job`` ``name`` through :meth:`Agent.start_run`, when its plan is not
    known in these instruments yet (kept in ``known`` for the later runs), or never kept (an
    agent with ``capture_args`` records each call's arguments)."""
    if agent.settings.capture_args:
        return agent.start_run(name, attributes=_args_attributes(args, kw), **options)
    run = agent.start_run(name, **options)
    known[0] = plain_plan(agent, run, options)
    return run


def _exit(run: Run, exc: BaseException | None) -> None:
    """End ``run`` with the outcome of ``exc`` (None: success) and make it no longer current."""
    try:
        run.finish(classify(exc), exc)
    finally:
        _settle(run)


class _NoRun:
    """Stands in for a run when otel-jobs is not instrumented."""

    def heartbeat(self, progress: float | None = None, **details: Any) -> None:
        pass

    def finish(self, outcome: str = "success", exc: BaseException | None = None) -> None:
        pass


class job_run:
    """Mark a block of code as one run of a job (``with`` or ``async with``).

    >>> with otel_jobs.job_run("reports.nightly", queue="reports", max_duration=1800) as run:
    ...     for page in pages:
    ...         render(page)
    ...         run.heartbeat()

    An exception leaving the block ends the run with outcome ``failure`` (``timeout`` for a
    :class:`~otel_jobs.JobTimeoutError` or ``TimeoutError``) and propagates unchanged.
    ``expected_every``: how often (seconds) the job must succeed, for the
    ``OtelJobsNoRecentSuccess`` alert (``otel_jobs_run_expected_every_seconds``).
    """

    def __init__(
        self,
        name: str,
        *,
        queue: str | None = None,
        job_id: str | None = None,
        enqueued_at: float | None = None,
        attempt: int = 1,
        max_duration: float | None = None,
        heartbeat_timeout: float | None = None,
        on_stall: str | None = None,
        expected_every: float | None = None,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise _config.ConfigurationError("name", name, "a non-empty job name")
        options = _run_options(queue, max_duration, heartbeat_timeout, on_stall, expected_every)
        self._kwargs = {**options, "job_id": job_id, "attempt": attempt, "enqueued_at": enqueued_at}
        self._name = name
        self._run: Run | None = None

    def __enter__(self) -> Run | _NoRun:
        agent = _agent_mod.current()
        if agent is None:
            return _NoRun()
        self._run = _enter(agent.start_run(self._name, **self._kwargs))
        return self._run

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        run, self._run = self._run, None
        if run is not None:
            _exit(run, exc)

    async def __aenter__(self) -> Run | _NoRun:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


#: The longest ``job.args`` attribute recorded with ``capture_args`` (longer ones are cut).
MAX_ARGS_CHARS = 1024
_args_repr = reprlib.Repr()
_args_repr.maxstring = _args_repr.maxother = 120
_args_repr.maxlist = _args_repr.maxtuple = _args_repr.maxdict = _args_repr.maxset = 10
_args_repr.maxlevel = 3


def _args_attributes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, str]:
    """``{"job.args": "(1, 'x', key=...)"}``: a bounded repr, only with ``capture_args`` on.

    reprlib bounds each value (120 characters, 10 items, 3 levels) and stands in for a value
    whose ``repr()`` raises; the whole is cut at :data:`MAX_ARGS_CHARS`.
    """
    try:
        parts = [_args_repr.repr(a) for a in args]
        parts.extend(f"{k}={_args_repr.repr(v)}" for k, v in kwargs.items())
        text = "(" + ", ".join(parts) + ")"
    except Exception:
        text = "(<arguments not representable>)"
    if len(text) > MAX_ARGS_CHARS:
        text = text[: MAX_ARGS_CHARS - 3] + "..."
    return {"job.args": text}


@overload
def job(func: F, /) -> F: ...


@overload
def job(
    *,
    name: str | None = ...,
    queue: str | None = ...,
    max_duration: float | None = ...,
    heartbeat_timeout: float | None = ...,
    on_stall: str | None = ...,
    expected_every: float | None = ...,
) -> Callable[[F], F]: ...


def job(
    func: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    queue: str | None = None,
    max_duration: float | None = None,
    heartbeat_timeout: float | None = None,
    on_stall: str | None = None,
    expected_every: float | None = None,
) -> Any:
    """Make every call of a function (sync or async) one run of a job.

    >>> @otel_jobs.job(queue="billing", max_duration=300, heartbeat_timeout=30)
    ... def sync_invoices(account_id):
    ...     ...

    The job name defaults to ``module.qualname`` of the function. Settings are validated
    when the decorator is applied. The call's arguments are recorded on the run's span (the
    ``job.args`` attribute, a repr cut at :data:`MAX_ARGS_CHARS`) only with ``capture_args``
    (``OTEL_JOBS_CAPTURE_ARGS=true``): off by default, as arguments often hold personal data,
    tokens or passwords that would then be stored by the tracing backend.
    ``expected_every``: how often (seconds) the job must succeed; a job that has not succeeded
    for longer (plus a grace) fires ``OtelJobsNoRecentSuccess``:

    >>> @otel_jobs.job(expected_every=24 * 3600)
    ... def nightly_export():
    ...     ...
    """
    kwargs = _run_options(queue, max_duration, heartbeat_timeout, on_stall, expected_every)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        job_name = name or f"{fn.__module__}.{fn.__qualname__}"
        agents = _agent_mod  # the running agent is read from the module: no call per run
        # This job's plan in this process's instruments (core/plain_runs.py: its series, span
        # attributes and thresholds, worked out at its first run), for as long as the process
        # has the same instruments (and records no arguments: the plan of an agent with
        # capture_args is never kept here).
        known: list[Any] = [None]

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kw: Any) -> Any:
                agent = agents._agent
                if agent is None:
                    return await fn(*args, **kw)
                plan = known[0]
                if plan is not None and plan.telemetry is agent._telemetry:
                    run = start_plain_run(agent, plan)
                else:
                    run = _first_run(agent, known, job_name, kwargs, args, kw)
                run = _enter(run)
                try:
                    result = await fn(*args, **kw)
                except BaseException as exc:
                    _exit(run, exc)
                    raise
                _exit(run, None)
                return result

            return async_wrapper

        @functools.wraps(fn)
        def wrapper(*args: Any, **kw: Any) -> Any:
            agent = agents._agent
            if agent is None:
                return fn(*args, **kw)
            plan = known[0]
            if plan is not None and plan.telemetry is agent._telemetry:
                run = start_plain_run(agent, plan)
            else:
                run = _first_run(agent, known, job_name, kwargs, args, kw)
            try:
                run.activate()
                result = fn(*args, **kw)
            except BaseException as exc:
                run.finish(classify(exc), exc)
                raise
            else:
                run.finish("success")
                return result
            finally:
                if run.finished:
                    run.deactivate()
                else:
                    _settle(run)

        return wrapper

    if func is not None:
        return decorate(func)
    return decorate
