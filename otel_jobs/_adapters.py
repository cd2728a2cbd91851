"""Loading the adapters: shared by the job-framework integrations and the outbound checks.

Both install, for each name asked for (None: every one of their kind in
:data:`otel_jobs.support.LIBRARIES`), the adapter of a library that is installed, when the
application imports that library (:func:`otel_jobs.core.imports.when_imported`; at once if it
already has): ``instrument()`` never imports a framework or client on the application's behalf,
which would cost every process the imports of every library installed (about a second with all
the extras) and read their configuration before the application set it.

* not installed: skipped (``not_installed(name)`` is told);
* installed outside the range otel-jobs supports: one :class:`~otel_jobs.OtelJobsWarning`
  naming the version and the range, and skipped, rather than half-working;
* an adapter that fails to import or install is recorded as otel-jobs' own error
  (:mod:`otel_jobs.core.errors`) and skipped: instrumentation never breaks the application.

Until then a :class:`Waiting` adapter stands in ``agent.adapters`` for it (same name), and
``uninstrument()`` drops its hook or uninstalls the real adapter.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

from .core import errors, imports
from .core.errors import OtelJobsWarning
from .support import Library, of_kind, outside_range

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
    """Install ``<adapter module>.<class_name>(agent)`` for each library of ``kind`` installed:
    at once if the application imported it already, else when it does (a :class:`Waiting`
    adapter stands in for it until then).

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
        refusal = outside_range(lib)  # said at instrument(), imported or not
        if refusal is not None:
            warnings.warn(refusal, OtelJobsWarning, stacklevel=2)
            continue
        component = f"{'integration' if kind == 'framework' else kind}.{name}"
        if lib.module in sys.modules:
            adapter = _load(agent, lib, class_name, component)
        else:
            adapter = Waiting(agent, lib, class_name, component)
            adapter.install()
        if adapter is not None:
            installed.append(adapter)
    return installed


class Waiting:
    """The adapter of a library the application has not imported yet: installs the real one
    when it does (:func:`otel_jobs.core.imports.when_imported`); ``uninstall`` drops the hook,
    or uninstalls the real adapter."""

    def __init__(self, agent: Agent, lib: Library, class_name: str, component: str) -> None:
        self.name = lib.name
        self.adapter: Adapter | None = None
        self._agent = agent
        self._lib = lib
        self._class_name = class_name
        self._component = component
        self._cancel: Callable[[], None] | None = None

    def install(self) -> None:
        self._cancel = imports.when_imported(self._lib.module, self._imported, self._component)

    def _imported(self, module: ModuleType) -> None:
        self.adapter = _load(self._agent, self._lib, self._class_name, self._component)

    def uninstall(self) -> None:
        if self._cancel is not None:
            self._cancel()
            self._cancel = None
        adapter, self.adapter = self.adapter, None
        if adapter is not None:
            adapter.uninstall()


def _load(agent: Agent, lib: Library, class_name: str, component: str) -> Adapter | None:
    """The adapter of ``lib``, installed (None: failed, or the agent stopped meanwhile)."""
    if agent.stopped:
        return None
    try:
        module = importlib.import_module(lib.adapter)
    except ModuleNotFoundError as exc:
        if exc.name != lib.adapter:
            errors.record(component, exc)
        return None  # (no adapter written for this library yet)
    except Exception as exc:  # a library that breaks on import: skip it
        errors.record(component, exc)
        return None
    with errors.guard(component):
        adapter: Adapter = getattr(module, class_name)(agent)
        adapter.install()
        return adapter
    return None
