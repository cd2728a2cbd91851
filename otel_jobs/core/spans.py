"""The ``job.*`` attributes of a run's span and its status, set the same way wherever a run's span
is made: a run's own (:meth:`Agent.start_run`), a run another process runs
(:mod:`.forked_runs`), a run whose process died (:mod:`.lost_runs`)."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from .exceptions import record_exception

#: Outcomes that set a span's status to ERROR.
FAILED = ("failure", "timeout")


def job_attributes(
    name: str, queue: str, attempt: int, framework: str, job_id: str | None
) -> dict[str, Any]:
    """``job.name``, ``job.queue``, ``job.attempt``, ``job.framework`` and ``job.id`` if known."""
    attrs: dict[str, Any] = {
        "job.name": name,
        "job.queue": queue,
        "job.attempt": attempt,
        "job.framework": framework,
    }
    if job_id is not None:
        attrs["job.id"] = job_id
    return attrs


def record_outcome(
    span: trace.Span, outcome: str, exc: BaseException | None, expected: bool = False
) -> None:
    """The status and exception event of a run's own span, from its outcome (an expected
    exception is recorded without an ERROR status)."""
    if exc is not None and expected:
        record_exception(span, exc, {"job.expected_exception": True})
    elif exc is not None and outcome in FAILED:
        record_exception(span, exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
    elif outcome in FAILED:
        span.set_status(Status(StatusCode.ERROR, outcome))
