"""Job framework integrations: one thin adapter module per framework.

An adapter maps a framework's hooks (signals, middleware, callbacks) onto the core's
lifecycle calls (``agent.start_run`` / ``run.activate`` / ``run.finish``) and holds no policy
of its own. Each module defines one :class:`~otel_jobs.integrations.base.Integration`
subclass; :func:`install_frameworks` installs those whose framework is importable (or the ones
named in ``frameworks=`` / ``OTEL_JOBS_FRAMEWORKS``), and ``uninstrument()`` undoes each.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .._adapters import Adapter, install_adapters
from ..support import FRAMEWORK, of_kind

if TYPE_CHECKING:
    from ..core.agent import Agent

logger = logging.getLogger("otel_jobs")

#: framework name: (module that must be importable, adapter module), from otel_jobs.support
FRAMEWORKS: dict[str, tuple[str, str]] = {
    lib.name: (lib.module, lib.adapter) for lib in of_kind(FRAMEWORK)
}


def install_frameworks(agent: Agent, names: tuple[str, ...] | None) -> list[Adapter]:
    """Install the adapters of the named frameworks (None: every installed one)."""

    def not_installed(name: str) -> None:
        if names is not None:  # asked for by name: say so; otherwise simply absent
            logger.warning("otel-jobs: frameworks=%r names %s, which is not installed", names, name)

    return install_adapters(
        agent, FRAMEWORK, names, class_name="Integration", not_installed=not_installed
    )
