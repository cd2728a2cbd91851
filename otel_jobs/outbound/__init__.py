"""Outbound-call checks: one thin adapter module per client library.

Each adapter finds the effective timeout of every call its library makes and reports the
calls that could hang forever (see :mod:`otel_jobs.outbound.base`). A library that is not
installed is skipped without a word.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._adapters import Adapter, install_adapters
from ..support import OUTBOUND, of_kind

if TYPE_CHECKING:
    from ..core.agent import Agent

#: library name: (module that must be importable, adapter module), from otel_jobs.support
LIBRARIES: dict[str, tuple[str, str]] = {
    lib.name: (lib.module, lib.adapter) for lib in of_kind(OUTBOUND)
}


def install_outbound(agent: Agent, names: tuple[str, ...] | None) -> list[Adapter]:
    """Install the adapters of the named libraries (None: every installed one)."""
    if agent.settings.missing_timeout == "off":
        return []
    return install_adapters(agent, OUTBOUND, names, class_name="Adapter")
