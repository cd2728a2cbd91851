"""Loading the adapters: shared by the job-framework integrations and the outbound checks.

Both keep a table ``name: (module that must be importable, adapter module)`` and install, for
each name asked for (None: every one in the table), the adapter of a library that is installed.
An adapter that fails to import or install is recorded as otel-jobs' own error
(:mod:`otel_jobs.core.errors`) and skipped: instrumentation never breaks the application.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .core import errors

if TYPE_CHECKING:
    from .core.agent import Agent


def available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_adapters(
    agent: Agent,
    table: dict[str, tuple[str, str]],
    names: tuple[str, ...] | None,
    *,
    kind: str,
    class_name: str,
    not_installed: Callable[[str], None] | None = None,
) -> list[Any]:
    """Install ``module.<class_name>(agent)`` for each name whose library is installed.

    ``kind`` prefixes the names of the recorded errors (``integration.celery``,
    ``outbound.httpx``); ``not_installed(name)`` is called for a name whose library is not.
    """
    installed = []
    for name in names if names is not None else tuple(table):
        library, adapter_module = table[name]
        if not available(library):
            if not_installed is not None:
                not_installed(name)
            continue
        try:
            module = importlib.import_module(adapter_module)
        except ModuleNotFoundError as exc:
            if exc.name == adapter_module:
                continue  # no adapter written for this library yet
            errors.record(f"{kind}.{name}", exc)
            continue
        except Exception as exc:  # a library that breaks on import: skip it
            errors.record(f"{kind}.{name}", exc)
            continue
        with errors.guard(f"{kind}.{name}"):
            adapter = getattr(module, class_name)(agent)
            adapter.install()
            installed.append(adapter)
    return installed
