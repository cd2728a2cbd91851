"""Loading the adapters: shared by the job-framework integrations and the outbound checks.

Both install, for each name asked for (None: every one of their kind in
:data:`otel_jobs.support.LIBRARIES`), the adapter of a library that is installed:

* not installed: skipped (``not_installed(name)`` is told);
* installed outside the range otel-jobs supports: one :class:`~otel_jobs.OtelJobsWarning`
  naming the version and the range, and skipped, rather than half-working;
* an adapter that fails to import or install is recorded as otel-jobs' own error
  (:mod:`otel_jobs.core.errors`) and skipped: instrumentation never breaks the application.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from .core import errors
from .core.errors import OtelJobsWarning
from .support import of_kind, outside_range

if TYPE_CHECKING:
    from .core.agent import Agent


class Adapter(Protocol):
    """What the agent keeps of an installed adapter: a framework integration
    (:class:`~otel_jobs.integrations.base.Integration`) or an outbound check
    (:class:`~otel_jobs.outbound.adapter.MethodAdapter`). ``uninstall`` undoes ``install``."""

    name: str

    def install(self) -> None: ...

    def uninstall(self) -> None: ...


def available(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def install_adapters(
    agent: Agent,
    kind: str,
    names: tuple[str, ...] | None,
    *,
    class_name: str,
    not_installed: Callable[[str], None] | None = None,
) -> list[Adapter]:
    """Install ``<adapter module>.<class_name>(agent)`` for each library of ``kind`` installed.

    ``kind``: :data:`~otel_jobs.support.FRAMEWORK` or :data:`~otel_jobs.support.OUTBOUND`;
    errors are recorded as ``integration.<name>`` or ``outbound.<name>``.
    """
    table = {lib.name: lib for lib in of_kind(kind)}
    installed: list[Adapter] = []
    for name in names if names is not None else tuple(table):
        lib = table[name]
        if not available(lib.module):
            if not_installed is not None:
                not_installed(name)
            continue
        refusal = outside_range(lib)
        if refusal is not None:
            warnings.warn(refusal, OtelJobsWarning, stacklevel=2)
            continue
        component = f"{'integration' if kind == 'framework' else kind}.{name}"
        try:
            module = importlib.import_module(lib.adapter)
        except ModuleNotFoundError as exc:
            if exc.name == lib.adapter:
                continue  # no adapter written for this library yet
            errors.record(component, exc)
            continue
        except Exception as exc:  # a library that breaks on import: skip it
            errors.record(component, exc)
            continue
        with errors.guard(component):
            adapter = getattr(module, class_name)(agent)
            adapter.install()
            installed.append(adapter)
    return installed
