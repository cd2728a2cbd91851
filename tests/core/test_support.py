"""The supported versions (otel_jobs/support.py): one table, read by the installer, the
instrumentor, the docs page and pyproject.toml's extras; a library outside its range is skipped."""

from __future__ import annotations

import doctest
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.instrumentation.dependencies import get_dependency_conflicts
from packaging.requirements import Requirement

import otel_jobs
from otel_jobs import support
from otel_jobs.instrumentor import OtelJobsInstrumentor

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "supported-versions.md"


def test_the_docs_table_is_generated_from_the_table() -> None:
    text = PAGE.read_text()
    start = text.index("<!-- support-table:start -->") + len("<!-- support-table:start -->")
    end = text.index("<!-- support-table:end -->")
    assert text[start:end].strip() == support.markdown_table(), (
        "regenerate it: python -m otel_jobs.support"
    )


def test_the_extras_declare_the_same_ranges() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    for lib in support.LIBRARIES:
        if lib.distribution is None:
            continue
        extra = lib.name if lib.kind == support.FRAMEWORK else "outbound"
        (declared,) = [
            r for r in map(Requirement, extras[extra]) if r.name.lower() == lib.distribution
        ]
        assert str(declared.specifier) == str(Requirement(lib.requirement).specifier), (
            f"pyproject's {extra} extra says {declared}, otel_jobs/support.py {lib.requirement}"
        )


@pytest.mark.parametrize("lib", support.LIBRARIES, ids=lambda lib: lib.name)
def test_the_installed_versions_are_supported(lib: support.Library) -> None:
    assert support.outside_range(lib) is None
    if lib.distribution is not None:
        assert support.installed_version(lib) == version(lib.distribution)


def test_the_module_examples_hold() -> None:
    assert doctest.testmod(support).failed == 0


def test_instrumentation_dependencies_is_the_range_of_each_installed_library() -> None:
    dependencies = list(OtelJobsInstrumentor().instrumentation_dependencies())
    assert "celery>=5.3,<6" in dependencies and "rq>=1.16,<4" in dependencies
    assert dependencies == [
        lib.requirement for lib in support.LIBRARIES if support.installed_version(lib)
    ]
    assert get_dependency_conflicts(dependencies) is None  # every one installed, in range


@pytest.fixture
def old_huey(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed huey 1.0 as far as its distribution metadata says (the module stays)."""
    info = tmp_path / "huey-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: huey\nVersion: 1.0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert version("huey") == "1.0"


@pytest.mark.usefixtures("old_huey")
def test_a_framework_outside_its_range_is_skipped_with_one_warning(
    instrumented: Callable[..., Any],
) -> None:
    with pytest.warns(otel_jobs.OtelJobsWarning) as warned:
        agent = instrumented(frameworks=["huey", "rq"], outbound=[], watchdog=False)
    (warning,) = warned.list
    message = str(warning.message)
    assert "huey 1.0 is outside the versions otel-jobs supports (huey>=2.5,<4)" in message
    assert "framework adapter is not installed" in message
    assert [a.name for a in agent.adapters] == ["rq"]  # the other one is installed


@pytest.mark.usefixtures("old_huey")
def test_the_instrumentor_names_the_conflict_and_installs_the_others(
    instrumented: Callable[..., Any],
) -> None:
    instrumentor = OtelJobsInstrumentor()
    conflict = get_dependency_conflicts(instrumentor.instrumentation_dependencies())
    assert conflict is not None and "huey 1.0" in str(conflict)
    with pytest.warns(otel_jobs.OtelJobsWarning, match="huey 1.0"):
        instrumentor.instrument(prometheus_port=0, watchdog=False, outbound=[])
    try:
        from otel_jobs.core import agent as agent_mod

        current = agent_mod.current()
        assert current is not None
        names = [a.name for a in current.adapters]
        assert "huey" not in names and "celery" in names and "rq" in names
    finally:
        instrumentor.uninstrument()
