"""Post-import hooks (``otel_jobs.core.imports``): a library patched when it is imported.

Each test writes a real package of its own into a temporary directory on ``sys.path`` and
imports it with the real import system.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from otel_jobs.core import errors, imports


@pytest.fixture
def package(tmp_path: Path) -> Iterator[str]:
    """A fresh package ``otj_hooked_<n>`` with a submodule; removed from sys.modules after."""
    name = f"otj_hooked_{tmp_path.name.replace('-', '_')}"
    root = tmp_path / name
    root.mkdir()
    (root / "__init__.py").write_text("from . import sub\nVALUE = sub.VALUE + 1\n")
    (root / "sub.py").write_text("VALUE = 41\n")
    sys.path.insert(0, str(tmp_path))
    yield name
    sys.path.remove(str(tmp_path))
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def _finder_present() -> bool:
    return any(type(f).__module__ == imports.__name__ for f in sys.meta_path)


def test_the_callback_runs_once_after_the_import(package: str) -> None:
    seen: list[ModuleType] = []
    imports.when_imported(package, seen.append)
    assert package not in sys.modules and seen == []
    assert _finder_present()

    module = importlib.import_module(package)
    assert seen == [module]
    assert module.VALUE == 42  # the module's code had run when the callback saw it
    # The module keeps its real loader: nothing shows otel-jobs was there.
    assert isinstance(module.__loader__, importlib.machinery.SourceFileLoader)
    assert module.__spec__ is not None and module.__spec__.loader is module.__loader__
    assert importlib.util.find_spec(package) is not None
    importlib.reload(module)
    assert seen == [module]  # once
    assert package not in imports.waiting()
    assert not _finder_present()


def test_an_imported_module_is_handed_over_at_once(package: str) -> None:
    module = importlib.import_module(package)
    seen: list[ModuleType] = []
    imports.when_imported(package, seen.append)
    assert seen == [module]
    assert not _finder_present()


def test_a_cancelled_hook_never_runs(package: str) -> None:
    seen: list[ModuleType] = []
    cancel = imports.when_imported(package, seen.append)
    cancel()
    cancel()  # twice is harmless
    assert not _finder_present()
    importlib.import_module(package)
    assert seen == []


@pytest.mark.internal_errors("imports")
def test_a_failing_callback_never_breaks_the_import(package: str) -> None:
    class HookFault(RuntimeError):
        pass

    def broken(module: ModuleType) -> None:
        raise HookFault("patching failed")

    seen: list[ModuleType] = []
    before = errors.counts().get("imports.test", 0)
    imports.when_imported(package, broken, "imports.test")
    imports.when_imported(package, seen.append)
    module = importlib.import_module(package)
    assert module.VALUE == 42
    assert seen == [module]  # the next hook still ran
    assert errors.counts()["imports.test"] == before + 1


def test_a_module_that_fails_to_import_keeps_its_hook(package: str, tmp_path: Path) -> None:
    init = tmp_path / package / "__init__.py"
    init.write_text("raise ImportError('not today')\n")
    seen: list[ModuleType] = []
    cancel = imports.when_imported(package, seen.append)
    with pytest.raises(ImportError, match="not today"):
        importlib.import_module(package)
    assert package in imports.waiting() and seen == []
    init.write_text("VALUE = 1\n")
    importlib.invalidate_caches()
    module = importlib.import_module(package)
    assert seen == [module]
    cancel()


def test_a_submodule_import_hooks_its_parent(package: str) -> None:
    seen: list[str] = []
    imports.when_imported(package, lambda m: seen.append(m.__name__))
    importlib.import_module(f"{package}.sub")  # imports the package first
    assert seen == [package]
