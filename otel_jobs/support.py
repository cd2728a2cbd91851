"""What otel-jobs supports: every job framework and client library it adapts, with the range of
versions each adapter is written and tested for. The one table of them.

Read by the adapters' installer (:mod:`otel_jobs._adapters`: a library installed outside its
range gets one :class:`~otel_jobs.OtelJobsWarning` and its adapter is skipped rather than left
half-working), by :mod:`otel_jobs.core.config` (the names ``frameworks=`` / ``outbound=``
accept), by the instrumentor's ``instrumentation_dependencies()``, and by the docs table
``docs/supported-versions.md`` (``python -m otel_jobs.support`` prints it;
``tests/core/test_support.py`` keeps it, and the extras of ``pyproject.toml``, equal to this).

A range moves only after the adapter has been run against the new version: the lower bound is
the oldest version whose API the adapter uses (``.ci/test.sh`` runs the Celery and RQ tests
against the oldest Celery and RQ in a second virtualenv), the upper bound the next major version.

>>> from otel_jobs.support import LIBRARIES
>>> [lib.requirement for lib in LIBRARIES if lib.name == "celery"]
['celery>=5.3,<6']
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

FRAMEWORK = "framework"
OUTBOUND = "outbound"


@dataclass(frozen=True)
class Library:
    """One framework or client library otel-jobs adapts."""

    name: str  # the name frameworks= / outbound= take
    kind: str  # FRAMEWORK or OUTBOUND
    module: str  # importable when the library is installed
    adapter: str  # the otel-jobs module that adapts it
    distribution: str | None  # its name on PyPI; None: the standard library
    versions: str  # the supported range (PEP 440 specifiers); "" for the standard library
    note: str  # what sets the range, for the docs table

    @property
    def requirement(self) -> str:
        """``celery>=5.3,<6``: the distribution with its range (empty for the standard library)."""
        return f"{self.distribution}{self.versions}" if self.distribution else ""


def _framework(name: str, versions: str, note: str = "") -> Library:
    """A job framework: imported, and on PyPI, as ``name``; adapted by ``integrations.<name>``."""
    return Library(name, FRAMEWORK, name, f"otel_jobs.integrations.{name}", name, versions, note)


def _outbound(
    name: str, versions: str | None, note: str = "", module: str | None = None
) -> Library:
    """A client library: imported as ``module`` (default ``name``), on PyPI as ``name``
    (``versions=None``: part of the standard library); adapted by ``outbound.<name>``."""
    distribution = name if versions is not None else None
    adapter = f"otel_jobs.outbound.{name}"
    return Library(name, OUTBOUND, module or name, adapter, distribution, versions or "", note)


_PRIVATE = "private names read, checked by tests/outbound/test_internals.py"

LIBRARIES: tuple[Library, ...] = (
    _framework("celery", ">=5.3,<6", "5.3.0 is run by the test command"),
    _framework("rq", ">=1.16,<4", "1.16.0 is run by the test command"),
    _framework("dramatiq", ">=1.16,<3"),
    _framework("arq", ">=0.25,<1"),
    _framework("huey", ">=2.5,<4"),
    _framework("apscheduler", ">=3.10,<4", "4.x has another API, not hooked"),
    _outbound(
        "httpx", ">=0.23,<1", "checked in httpcore's ConnectionPool (httpcore 0.15 and later)"
    ),
    _outbound("requests", ">=2.30,<3", "2.30: the first on urllib3 2"),
    _outbound("urllib3", ">=2,<3", "urllib3 2's Timeout.DEFAULT_TIMEOUT"),
    _outbound("urllib", None, module="urllib.request"),
    _outbound("aiohttp", ">=3.8,<4", _PRIVATE),
    _outbound("redis", ">=4.2,<9", _PRIVATE),
    _outbound("psycopg", ">=3.1,<4"),
)


def of_kind(kind: str) -> tuple[Library, ...]:
    """The libraries of one kind (:data:`FRAMEWORK` or :data:`OUTBOUND`), in table order."""
    return tuple(lib for lib in LIBRARIES if lib.kind == kind)


def installed_version(lib: Library) -> str | None:
    """The installed version of ``lib``'s distribution (None: not installed, or no metadata)."""
    if lib.distribution is None:
        return None
    # First from the name of its ``<name>-<version>.dist-info`` directory (what a wheel
    # install leaves): importlib.metadata parses the whole METADATA file of each distribution it
    # is asked about, 4 ms apiece here, and instrument() asks about every library installed.
    found = _dist_info_versions().get(_normalized(lib.distribution))
    if found is not None:
        return found
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(lib.distribution)
    except PackageNotFoundError:
        return None


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


_versions_seen: tuple[tuple[tuple[str, int], ...], dict[str, str]] | None = None


def _dist_info_versions() -> dict[str, str]:
    """``{normalized name: version}`` of the ``.dist-info`` directories on ``sys.path`` (the
    first on the path wins, as for importlib.metadata); read again when a directory changed."""
    global _versions_seen
    entries = []
    for entry in sys.path:
        try:
            entries.append((entry, os.stat(entry or ".").st_mtime_ns))
        except OSError:
            continue
    key = tuple(entries)
    if _versions_seen is not None and _versions_seen[0] == key:
        return _versions_seen[1]
    versions: dict[str, str] = {}
    for entry, _mtime in entries:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith(".dist-info"):
                dist, dash, found = name[: -len(".dist-info")].partition("-")
                if dash and found:
                    versions.setdefault(_normalized(dist), found)
    _versions_seen = (key, versions)
    return versions


def outside_range(lib: Library) -> str | None:
    """What is wrong when ``lib`` is installed outside its range (None: supported, or unknown).

    >>> outside_range(LIBRARIES[0]) is None  # the installed Celery is supported
    True
    """
    found = installed_version(lib)
    if found is None or not lib.versions:
        return None
    inside = _contains(lib.versions, found)
    if inside is None:  # a version or range the short reading below does not cover
        from packaging.specifiers import SpecifierSet

        inside = SpecifierSet(lib.versions).contains(found, prereleases=True)
    if inside:
        return None
    return (
        f"otel-jobs: {lib.distribution} {found} is outside the versions otel-jobs supports "
        f"({lib.requirement}); its {lib.kind} adapter is not installed, so its "
        f"{'runs' if lib.kind == FRAMEWORK else 'calls'} are not recorded. Install a supported "
        f"version, or leave {lib.name} out of {'frameworks' if lib.kind == FRAMEWORK else 'outbound'}= "
        "to silence this."
    )


_VERSION = re.compile(r"v?(\d+(?:\.\d+)*)((?:a|b|rc|alpha|beta|c|pre|preview|dev)\d*)?", re.I)


def _release(text: str) -> tuple[tuple[int, ...], bool] | None:
    """The release numbers of a PEP 440 version and whether it is a pre-release (None: not a
    version read here). ``.postN`` and ``+local`` do not change where it falls in a range."""
    matched = _VERSION.match(text.strip())
    if matched is None:
        return None
    release = tuple(int(part) for part in matched.group(1).split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    return release, matched.group(2) is not None


def _contains(versions: str, found: str) -> bool | None:
    """Whether ``found`` is in ``versions`` (only ``>=`` and ``<`` clauses: every range of the
    table), as packaging's ``SpecifierSet.contains(found, prereleases=True)`` says; None when
    either is not read here. Importing packaging costs a start-up about 10 ms."""
    version = _release(found)
    if version is None:
        return None
    numbers, pre = version
    for clause in versions.split(","):
        clause = clause.strip()
        op, bound = (
            (clause[:2], clause[2:]) if clause.startswith(">=") else (clause[:1], clause[1:])
        )
        limit = _release(bound)
        if op not in (">=", "<") or limit is None or limit[1]:
            return None
        if op == ">=" and not (numbers > limit[0] or (numbers == limit[0] and not pre)):
            return False  # (a pre-release of the bound comes before it)
        if op == "<" and not numbers < limit[0]:
            return False  # (a pre-release of the bound is excluded too, as PEP 440 says)
    return True


def requirements(installed_only: bool = True) -> list[str]:
    """The supported range of every library (only those installed, by default), as requirements.

    >>> "psycopg>=3.1,<4" in requirements(installed_only=False)
    True
    """
    return [
        lib.requirement
        for lib in LIBRARIES
        if lib.distribution and (not installed_only or installed_version(lib) is not None)
    ]


def oldest(name: str, extras: str = "") -> str:
    """The lowest version of ``name``'s range as a pip requirement (``.ci/test.sh`` installs
    it in ``.venv-oldest``).

    >>> oldest("celery", "[redis]")
    'celery[redis]==5.3'
    """
    (lib,) = [lib for lib in LIBRARIES if lib.name == name]
    (floor,) = [spec[2:] for spec in lib.versions.split(",") if spec.startswith(">=")]
    return f"{lib.distribution}{extras}=={floor}"


def markdown_table() -> str:
    """The table of ``docs/supported-versions.md`` (between its ``support-table`` markers)."""
    lines = [
        "| name | kind | PyPI distribution | supported versions | note |",
        "|---|---|---|---|---|",
    ]
    for lib in LIBRARIES:
        distribution = f"`{lib.distribution}`" if lib.distribution else "(standard library)"
        versions = f"`{lib.versions}`" if lib.versions else "every Python otel-jobs runs on"
        lines.append(f"| `{lib.name}` | {lib.kind} | {distribution} | {versions} | {lib.note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
