"""Polling with a generous deadline: the machine is shared and slow, so a deadline only stops a
test that would otherwise hang; it is never a timing assertion."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: The default deadline, in seconds: far above what any wait takes on a loaded machine.
WAIT = 120.0


def wait_for(
    what: str,
    check: Callable[[], T | None],
    timeout: float = WAIT,
    *,
    interval: float = 0.1,
    log: Path | None = None,
) -> T:
    """Poll ``check`` until it returns something true, and return that.

    An ``OSError``, ``AssertionError`` or ``ValueError`` raised by ``check`` counts as "not yet"
    (a server not up yet, a sample not there yet, a line half written); after ``timeout`` seconds the test fails, naming ``what``,
    the last value or error, and the tail of ``log`` if given.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (OSError, AssertionError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval)
    tail = f"\n--- log\n{log.read_text(errors='replace')[-4000:]}" if log is not None else ""
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}{tail}")
