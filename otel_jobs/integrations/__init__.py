"""Job framework integrations: one thin adapter module per framework.

An adapter maps a framework's hooks (signals, middleware, callbacks) onto the core's
lifecycle calls (``agent.start_run`` / ``run.activate`` / ``run.finish``) and holds no policy
of its own. Each module defines one :class:`~otel_jobs.integrations.base.Integration`
subclass; :func:`install_frameworks` installs those whose framework is importable (or the ones
named in ``frameworks=`` / ``OTEL_JOBS_FRAMEWORKS``), and ``uninstrument()`` undoes each.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import TYPE_CHECKING, Any

from ..core import errors

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


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_frameworks(agent: Agent, names: tuple[str, ...] | None) -> list[Any]:
    """Install the adapters of the named frameworks (None: every installed one)."""
    installed = []
    explicit = names is not None
    for name in names if names is not None else tuple(FRAMEWORKS):
        library, adapter_module = FRAMEWORKS[name]
        if not _available(library):
            if explicit:
                logger.warning(
                    "otel-jobs: frameworks=%r names %s, which is not installed", names, name
                )
            continue
        try:
            module = importlib.import_module(adapter_module)
        except ModuleNotFoundError as exc:
            if exc.name == adapter_module:
                continue  # no adapter written for this framework yet
            errors.record(f"integration.{name}", exc)
            continue
        with errors.guard(f"integration.{name}"):
            adapter = module.Integration(agent)
            adapter.install()
            installed.append(adapter)
    return installed
