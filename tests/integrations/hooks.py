"""Checks that an integration patches its framework only when asked to."""

from __future__ import annotations

from typing import Any

import otel_jobs


def assert_untouched_by(owner: Any, attribute: str, frameworks: list[str]) -> None:
    """``instrument(frameworks=frameworks)`` (another framework's) leaves ``owner.attribute``
    as it is."""
    original = getattr(owner, attribute)
    otel_jobs.instrument(frameworks=frameworks, prometheus=False, watchdog=False)
    try:
        assert getattr(owner, attribute) is original
    finally:
        otel_jobs.uninstrument()
