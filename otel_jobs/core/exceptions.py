"""The exception event otel-jobs records on a span: redacted, bounded, and never raising.

:func:`record_exception` stands in for the SDK's ``Span.record_exception`` on every span
otel-jobs ends (a run's, a lost run's): the message and traceback go through
:func:`~otel_jobs.core.redaction.redact`, the traceback is bounded (:func:`format_stacktrace`),
lone surrogates (a file name that is not UTF-8 in the message) are replaced, as OTLP's strings
must be UTF-8, and an exception whose ``__str__`` raises is recorded with a placeholder. Nothing
here may raise.
"""

from __future__ import annotations

import traceback
from typing import Any

from opentelemetry import trace

from .labels import utf8
from .redaction import redact

#: Frames of a traceback recorded on a span at most: the innermost, where it was raised.
MAX_STACK_FRAMES = 64
#: Exceptions of a chain (``raise ... from``, or raised while handling another) recorded at most.
MAX_CHAINED = 4


def format_stacktrace(exc: BaseException) -> str:
    """``exc``'s traceback as Python prints it, bounded: at most :data:`MAX_STACK_FRAMES` frames
    of each exception of its chain (the innermost; a line says how many outer ones are left
    out), at most :data:`MAX_CHAINED` exceptions, and no column carets.

    Formatting every frame, as ``traceback.format_exception`` does, costs in proportion to the
    depth: a recursive job at the recursion limit ends about 500 runs, each with the traceback
    of the same RecursionError, and spent 20 to 40 s formatting them (quadratic). Bounded, a run
    costs at most a walk along the traceback and 64 formatted frames.
    """
    chain: list[tuple[BaseException, str]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link = ""
    while current is not None and id(current) not in seen and len(chain) < MAX_CHAINED:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, _CAUSE
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, _CONTEXT
        else:
            current = None
    parts: list[str] = []
    for error, link in reversed(chain):
        entries = list(traceback.walk_tb(error.__traceback__))
        left_out = len(entries) - MAX_STACK_FRAMES
        if entries:
            parts.append("Traceback (most recent call last):\n")
            if left_out > 0:
                parts.append(f"  [{left_out} outer frames left out]\n")
                entries = entries[left_out:]
            parts.extend(traceback.StackSummary.extract(iter(entries)).format())
        parts.extend(traceback.format_exception_only(type(error), error))
        parts.append(link)
    return "".join(parts)


_CAUSE = "\nThe above exception was the direct cause of the following exception:\n\n"
_CONTEXT = "\nDuring handling of the above exception, another exception occurred:\n\n"


def record_exception(
    span: trace.Span, exc: BaseException, attributes: dict[str, Any] | None = None
) -> None:
    """Add ``exc`` to ``span`` as the OpenTelemetry ``exception`` event, safely.

    What the SDK's ``Span.record_exception`` records, with two differences: the message and
    the traceback go through :func:`~otel_jobs.core.redaction.redact` (a requests
    ``ConnectionError`` carries the URL's ``?token=...``), and an exception whose ``__str__``
    raises (anything, ``SystemExit`` included) is recorded with a placeholder message instead
    of raising out of here.
    """
    kind = type(exc)
    module = kind.__module__
    name = f"{module}.{kind.__qualname__}" if module and module != "builtins" else kind.__qualname__
    try:
        message = utf8(redact(str(exc)))
    except BaseException:  # noqa: B036 - a __str__ that raises, whatever it raises
        message = f"<{kind.__qualname__}: str() failed>"
    try:
        stacktrace = utf8(redact(format_stacktrace(exc)))
    except BaseException:  # noqa: B036
        stacktrace = ""
    event: dict[str, Any] = {
        "exception.type": name,
        "exception.message": message,
        "exception.stacktrace": stacktrace,
        "exception.escaped": "False",
    }
    if attributes:
        event.update(attributes)
    span.add_event("exception", event)
