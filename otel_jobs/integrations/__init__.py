"""Job framework integrations: one thin adapter module per framework.

An adapter maps a framework's hooks (signals, middleware, callbacks) onto the core's
lifecycle calls (``agent.start_run`` / ``run.activate`` / ``run.finish``) and holds no policy
of its own. Each module defines one :class:`~otel_jobs.integrations.base.Integration`
subclass; :func:`install_frameworks` installs those whose framework is importable (or the ones
named in ``frameworks=`` / ``OTEL_JOBS_FRAMEWORKS``), and ``uninstrument()`` undoes each.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .._adapters import install_adapters

if TYPE_CHECKING:
    from ..core.agent import Agent

logger = logging.getLogger("otel_jobs")

# framework name: (module that must be importable, adapter module)
FRAMEWORKS: dict[str, tuple[str, str]] = {
    "celery": ("celery", "otel_jobs.integrations.celery"),
    "rq": ("rq", "otel_jobs.integrations.rq"),
    "dramatiq": ("dramatiq", "otel_jobs.integrations.dramatiq"),
    "arq": ("arq", "otel_jobs.integrations.arq"),
    "huey": ("huey", "otel_jobs.integrations.huey"),
    "apscheduler": ("apscheduler", "otel_jobs.integrations.apscheduler"),
}


def install_frameworks(agent: Agent, names: tuple[str, ...] | None) -> list[Any]:
    """Install the adapters of the named frameworks (None: every installed one)."""

    def not_installed(name: str) -> None:
        if names is not None:  # asked for by name: say so; otherwise simply absent
            logger.warning("otel-jobs: frameworks=%r names %s, which is not installed", names, name)

    return install_adapters(
        agent,
        FRAMEWORKS,
        names,
        kind="integration",
        class_name="Integration",
        not_installed=not_installed,
    )
