"""Post-import hooks: patch a library when the application imports it, not before.

``instrument()`` runs early, often before the application has imported its job framework.
Importing the framework then, only to patch it, changes the application: a library that reads
its configuration at import time (RQ's ``RQ_KEY_PREFIX``) would read it before the application
set it, and every process pays for imports it may never use. An adapter that can wait asks:

>>> cancel = when_imported("rq", lambda module: patch(module))
>>> cancel()    # in uninstall: the hook is dropped if it has not run yet

``callback(module)`` runs at once if the module is already imported, else right after the
module's own code has run (inside that import, before the importer gets the module). It runs
once; an exception in it is counted as an internal error of ``component`` and never reaches
the import.

How: while hooks wait, one finder sits first in ``sys.meta_path``. For a hooked name it asks the
other finders for the module's spec and wraps the spec's loader so that the callbacks run after
``exec_module``; the module gets its real loader back before its code runs, so nothing about it
shows otel-jobs was there. Other names cost one dictionary lookup per import. The finder leaves
``sys.meta_path`` when no hook waits.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

from . import errors

Callback = Callable[[ModuleType], None]

_lock = threading.Lock()
_hooks: dict[str, list[tuple[Callback, str]]] = {}


def when_imported(name: str, callback: Callback, component: str = "imports") -> Callable[[], None]:
    """Call ``callback(module)`` once ``name`` is imported (see the module docstring).

    Returns a function that cancels the hook if it has not run yet.
    """
    entry = (callback, component)
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _hooks.setdefault(name, []).append(entry)
            if not any(isinstance(f, _Finder) for f in sys.meta_path):
                sys.meta_path.insert(0, _FINDER)
    if module is not None:
        _call(module, entry)

    def cancel() -> None:
        with _lock:
            waiting = _hooks.get(name)
            if waiting is not None and entry in waiting:
                waiting.remove(entry)
                if not waiting:
                    del _hooks[name]
            _drop_finder_if_idle()

    return cancel


def waiting() -> list[str]:
    """The module names whose hooks have not run yet (for tests and diagnostics)."""
    with _lock:
        return sorted(_hooks)


def _call(module: ModuleType, entry: tuple[Callback, str]) -> None:
    callback, component = entry
    try:
        callback(module)
    except Exception as exc:
        errors.record(component, exc)


def _drop_finder_if_idle() -> None:  # under _lock
    if not _hooks:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


def _imported(name: str, module: ModuleType) -> None:
    with _lock:
        entries = _hooks.pop(name, [])
        _drop_finder_if_idle()
    for entry in entries:
        _call(module, entry)


class _Loader:
    """Runs the real loader, then the hooks of the module."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        create = getattr(self._loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        # The real loader back in place before the module's code runs.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _imported(self._name, module)

    def __getattr__(self, attribute: str) -> Any:  # get_code, is_package, get_resource_reader
        return getattr(self._loader, attribute)


class _Finder:
    """First in ``sys.meta_path`` while hooks wait; wraps the loader of a hooked module."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in _hooks:
            return None
        for finder in list(sys.meta_path):
            if finder is self or isinstance(finder, _Finder):
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            try:
                spec = find_spec(fullname, path, target)
            except Exception:
                continue
            if spec is None:
                continue
            if spec.loader is None or not hasattr(spec.loader, "exec_module"):
                return None  # a namespace package or an old-style loader: import it as usual
            spec.loader = _Loader(spec.loader, fullname)
            return spec
        return None

    def invalidate_caches(self) -> None:
        pass


_FINDER = _Finder()


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
