"""Telemetry never breaks the job: internal errors are caught, counted and logged once.

Every hook otel-jobs runs inside a user's process goes through :func:`guard` (a context
manager) or :func:`guarded` (a decorator). An exception inside is swallowed, counted in
``otel_jobs_internal_errors_total{component}`` and logged once per component and exception
type, with its traceback, so a persistent fault does not flood the logs.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

logger = logging.getLogger("otel_jobs")

F = TypeVar("F", bound=Callable[..., Any])


class OtelJobsWarning(UserWarning):
    """Warnings about otel-jobs' own use (the test suite turns them into errors)."""


class JobTimeoutError(Exception):
    """Raised inside a run that the watchdog cancelled, or an outbound call refused by policy.

    A run that ends with this exception is recorded with outcome ``timeout``.
    """


_lock = threading.Lock()
_counts: dict[str, int] = {}
_logged: set[tuple[str, str]] = set()


#: Set by the watchdog: settles a run whose ``cancel`` exception landed in otel-jobs' own code
#: (returns True: not an internal error).
cancel_landed: Callable[[BaseException], bool] | None = None


def record(component: str, exc: BaseException) -> None:
    """Count an internal error of ``component`` and log it the first time it is seen.

    The watchdog's ``cancel`` exception is not one: raised asynchronously in the run's thread,
    it can land in an adapter's hook as the job ends (before the hook finishes the run); the
    run is then finished as ``timeout`` here, so that it does not stay in flight.
    """
    if cancel_landed is not None and cancel_landed(exc):
        return
    key = (component, type(exc).__name__)
    with _lock:
        _counts[component] = _counts.get(component, 0) + 1
        first = key not in _logged
        if first:
            _logged.add(key)
    if first:
        logger.error(
            "otel-jobs internal error in %s (the job is not affected; further %s errors are only counted)",
            component,
            type(exc).__name__,
            exc_info=exc,
        )


def counts() -> dict[str, int]:
    """A copy of the internal error counts, by component."""
    with _lock:
        return dict(_counts)


def reset_after_fork() -> None:
    global _lock
    _lock = threading.Lock()
    _counts.clear()


@contextmanager
def guard(component: str) -> Iterator[None]:
    """Run the block; if it raises, record the error and go on."""
    try:
        yield
    except Exception as exc:
        record(component, exc)


def guarded(component: str, default: Any = None) -> Callable[[F], F]:
    """Decorate a hook so that any exception it raises is recorded and ``default`` returned."""

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except Exception as exc:
                record(component, exc)
                return default

        return wrapper  # type: ignore[return-value]

    return decorate
