"""Outbound-call checks: one thin adapter module per client library.

Each adapter finds the effective timeout of every call its library makes and reports the
calls that could hang forever (see :mod:`otel_jobs.outbound.base`). A library that is not
installed is skipped without a word.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._adapters import install_adapters

if TYPE_CHECKING:
    from ..core.agent import Agent

# library name: (module that must be importable, adapter module)
LIBRARIES: dict[str, tuple[str, str]] = {
    "httpx": ("httpx", "otel_jobs.outbound.httpx"),
    "requests": ("requests", "otel_jobs.outbound.requests"),
    "urllib3": ("urllib3", "otel_jobs.outbound.urllib3"),
    "urllib": ("urllib.request", "otel_jobs.outbound.urllib"),
    "aiohttp": ("aiohttp", "otel_jobs.outbound.aiohttp"),
    "redis": ("redis", "otel_jobs.outbound.redis"),
    "psycopg": ("psycopg", "otel_jobs.outbound.psycopg"),
}


def install_outbound(agent: Agent, names: tuple[str, ...] | None) -> list[Any]:
    """Install the adapters of the named libraries (None: every installed one)."""
    if agent.settings.missing_timeout == "off":
        return []
    return install_adapters(agent, LIBRARIES, names, kind="outbound", class_name="Adapter")
