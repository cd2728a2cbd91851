"""What the test apps' jobs do, imported by the app modules the worker tests write (their
workers have the repository on ``PYTHONPATH``)."""

from __future__ import annotations

import os


def fail_first_attempt(state: str, key: str) -> None:
    """Raise on the first call for ``key`` only: the marker file in ``state`` survives the
    retry."""
    try:
        os.close(os.open(os.path.join(state, key), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return None
    raise RuntimeError("first attempt fails")
