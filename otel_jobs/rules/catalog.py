"""The groups found in :mod:`otel_jobs.rules.alert_groups`, and what is derived from them.

Found once, on first use (not at import, so that a test can extend the groups package's path
first). A malformed group module is a programming error of otel-jobs: it raises at once with the
module's name rather than rendering a partial rule file.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import fields
from typing import Any

from . import alert_groups as _groups_package
from .config import Option, RulesConfig
from .promql import Alert, Group, Record


@functools.cache
def found() -> tuple[Group, ...]:
    """Every ``GROUP`` of the groups package, in rendering order."""
    out = []
    for info in pkgutil.iter_modules(_groups_package.__path__):
        module = importlib.import_module(f"{_groups_package.__name__}.{info.name}")
        group = getattr(module, "GROUP", None)
        if not isinstance(group, Group):
            raise TypeError(f"{module.__name__} declares no GROUP = Group(...)")
        out.append(group)
    out.sort(key=lambda g: (g.order, g.name))
    _check(out)
    return tuple(out)


def _check(found: list[Group]) -> None:
    seen: dict[str, str] = {}
    settings = {f.name for f in fields(RulesConfig)}
    for group in found:
        for name in [*group.default_for, *(o.name for o in group.options)]:
            if name in seen or name in settings:
                raise ValueError(
                    f"rule group {group.name}: {name!r} is already declared "
                    f"({seen.get(name, 'RulesConfig')})"
                )
            seen[name] = group.name


@functools.cache
def default_for() -> dict[str, str]:
    """Every alert in rendering order, with its ``for`` by default."""
    return {alert: d for group in found() for alert, d in group.default_for.items()}


@functools.cache
def options() -> dict[str, Option[Any]]:
    """The groups' own options by name, in rendering order."""
    return {o.name: o for group in found() for o in group.options}


def alerts(config: RulesConfig) -> dict[str, list[Alert]]:
    """The alert rules by group name, rendered for ``config``."""
    out = {}
    for group in found():
        built = group.alerts(config)
        names = [a.name for a in built]
        if names != list(group.default_for):
            raise ValueError(
                f"rule group {group.name} built {names}, its default_for lists "
                f"{list(group.default_for)}: the two must match, in order"
            )
        out[group.name] = built
    return out


def records(config: RulesConfig) -> list[Record]:
    """Every group's recording rules, in rendering order, each name once.

    Two groups (or two windows of one) may ask for the same record: it is rendered once. The
    same name with another expression in the same records group is a programming error of
    otel-jobs; in two records groups it is a record written in shares (``fleet.windowed``'s
    shards), each group selecting its own series.
    """
    out: dict[tuple[str, str], Record] = {}
    for group in found():
        for record in group.records(config):
            kept = out.setdefault((record.record, record.group), record)
            if kept != record:
                raise ValueError(
                    f"rule group {group.name}: record {record.record} is already declared "
                    f"in {record.group} with another expression"
                )
    return list(out.values())
