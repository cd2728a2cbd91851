"""The last few log records of each run, for the watchdog's verdict ("last log 4m12s ago").

While the watchdog runs, otel-jobs wraps :func:`logging.getLogRecordFactory`: every record the
application creates while a run is current in its thread or asyncio task is also kept, by
reference, in that run's ``run.logs`` (a deque of the last :data:`MAX_RECORDS`). The watchdog
renders them only when it gives a verdict (:func:`last_lines`): time, level, logger and
message, each message passed through :func:`otel_jobs.core.redaction.redact` (URL credentials
and query strings, ``password=`` / ``token=`` pairs) and cut to :data:`MAX_MESSAGE_CHARS`.

Why a record factory and not a handler on the root logger: a handler there would silence
Python's last-resort output to stderr (the WARNINGs of an application that configures no
logging) and turn the application's later ``logging.basicConfig()`` into a no-op.

Invariants:

* Cheap: a record outside any run costs one function call and one context variable read; one
  inside a run, one deque append (``bench/bench_loop.py``: well under a microsecond).
* Nothing beyond what the application logged: a record exists only for a logger call at a level
  its logger has enabled; it is kept as it is, never copied or formatted on the job's thread.
* Bounded: at most :data:`MAX_RECORDS` records per run in flight, released with the run.
* Never raises into the application's logging; rendering happens on the watchdog's thread, and
  a message that cannot be rendered is shown as such.
* Reversible: :func:`uninstall` puts the previous factory back, or, when another library has
  wrapped this one since, leaves it in place passing records straight through.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .redaction import redact
from .run import _current

if TYPE_CHECKING:
    from .run import Run

#: Records kept per run.
MAX_RECORDS = 5
#: A rendered message is cut to this many characters.
MAX_MESSAGE_CHARS = 200

_previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()
_active = False
_in_chain = False  # _keeping_factory is in the chain of record factories


def _keeping_factory(
    name: str,
    level: int,
    fn: str,
    lno: int,
    msg: object,
    args: Any,
    exc_info: Any,
    func: str | None = None,
    sinfo: str | None = None,
    **kwargs: Any,
) -> logging.LogRecord:
    # LogRecord's own signature, passed on positionally: packing *args costs more than the rest.
    if kwargs:
        record = _previous(name, level, fn, lno, msg, args, exc_info, func, sinfo, **kwargs)
    else:
        record = _previous(name, level, fn, lno, msg, args, exc_info, func, sinfo)
    if _active:
        run = _current.get()
        if run is not None:
            logs = run.logs
            if logs is None:
                logs = run.logs = collections.deque(maxlen=MAX_RECORDS)
            logs.append(record)
    return record


def install() -> None:
    """Keep the records of runs from now on (idempotent)."""
    global _previous, _active, _in_chain
    if not _in_chain:
        _previous = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_keeping_factory)
        _in_chain = True
    _active = True


def uninstall() -> None:
    """Stop keeping records; put the previous record factory back if nobody wrapped ours."""
    global _active, _in_chain
    _active = False
    if logging.getLogRecordFactory() is _keeping_factory:
        logging.setLogRecordFactory(_previous)
        _in_chain = False


def _message(record: logging.LogRecord) -> str:
    # Another handler's formatter may have rendered it already (Formatter.format sets it).
    text = record.__dict__.get("message")
    if not isinstance(text, str):
        try:
            text = record.getMessage()
        except Exception:
            text = f"{record.msg!s:.{MAX_MESSAGE_CHARS}} (its arguments could not be formatted)"
    text = redact(" ".join(text.split()))  # one line; secrets out before the cut
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    return text


def last_lines(run: Run, now_wall: float | None = None) -> list[dict[str, Any]]:
    """The run's kept records, oldest first: ``{"age_s", "level", "logger", "message"}``."""
    logs = run.logs
    if not logs:
        return []
    now_wall = time.time() if now_wall is None else now_wall
    out = []
    for record in list(logs):
        try:
            out.append(
                {
                    "age_s": round(max(now_wall - record.created, 0.0), 3),
                    "level": str(record.levelname),
                    "logger": str(record.name),
                    "message": _message(record),
                }
            )
        except Exception:
            continue
    return out
