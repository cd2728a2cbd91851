"""What a group module builds with: :class:`Alert`, :class:`Group` and the PromQL helpers.

The helpers only assemble text; nothing here checks PromQL (``promtool check rules`` in the
tests does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .config import Option, RulesConfig

#: ``job_name on queue q`` in an annotation.
JOB = "{{ $labels.job_name }} on queue {{ $labels.queue }}"
#: `` on <instance>`` in an annotation, when the series has an instance.
WHERE = "{{ with $labels.instance }} on {{ . }}{{ end }}"
#: Dashboard variables of an alert about one run on one worker.
RUN_VARS = ("job_name", "queue", "instance")


@dataclass(frozen=True)
class Alert:
    """One alerting rule; its ``for`` comes from its group's ``default_for`` or the config."""

    name: str
    severity: str
    expr: str
    summary: str
    description: str
    #: The labels passed to the dashboard as variables: with job_name, the job dashboard.
    dashboard_vars: tuple[str, ...] = ("job_name", "queue")


@dataclass(frozen=True)
class Record:
    """One recording rule: ``record`` is ``otel_jobs:<metric>:<operation><window>``.

    Records aggregate a job across its workers (by ``--group-by``): alerts and the dashboards'
    fleet panels read them instead of every worker's raw series on every evaluation. ``group``
    is the rule group it is evaluated in, after the records listed before it in that group.
    """

    record: str
    expr: str
    group: str = "otel-jobs.records"
    #: Static labels: the shard of a record written in shares by several groups.
    labels: Mapping[str, str] = field(default_factory=dict)


#: The first records group (runs finished, in flight, stalled); the others follow it.
RECORDS_GROUP = "otel-jobs.records"
#: The window of the records the dashboards' fleet panels read (``...:rate5m``).
FLEET_WINDOW = "5m"


@dataclass(frozen=True)
class Group:
    """One rule group: what a module of :mod:`otel_jobs.rules.alert_groups` declares as ``GROUP``.

    ``default_for`` lists the group's alerts in the order ``alerts(config)`` returns them, with
    their ``for`` by default; ``order`` places the group in the rendered file (built-in groups
    use 10-40); ``options`` are the group's own thresholds (``--<name>`` options); ``records``
    are the recording rules its alerts (and the dashboards) read, rendered into the records
    file (``otel-jobs rules --part records``) in the groups each record names.
    """

    name: str
    order: int
    default_for: Mapping[str, str]
    alerts: Callable[[RulesConfig], list[Alert]]
    options: tuple[Option[Any], ...] = field(default=())
    records: Callable[[RulesConfig], list[Record]] = field(default=lambda _config: [])


def sel(config: RulesConfig, name: str, extra: str = "", *, target: bool = False) -> str:
    """``name{matchers}``: the configured selector (and the target selector for ``up``)."""
    found = [m for m in (config.target_selector if target else "", config.selector, extra) if m]
    return f"{name}{{{', '.join(found)}}}" if found else name


def threshold(gauge: str, default: float | None, carrier: str) -> str:
    """The job's own threshold where finite, else ``default`` on every series of ``carrier``."""
    if default is None:
        return gauge
    # `0 * carrier + default` puts the default on exactly the label sets that need it; `or`
    # only adds the ones whose own gauge is missing or +Inf (+Inf * 0 would be NaN).
    return f"(\n  ({gauge} < +Inf)\n  or\n  ({carrier} * 0 + {num(default)})\n)"


def num(value: float) -> str:
    """A number as PromQL and YAML show it: ``3600``, ``0.1``."""
    return str(int(value)) if float(value).is_integer() else repr(value)


def by(config: RulesConfig, *extra: str) -> str:
    """The job-level aggregation labels (``--group-by``) and ``extra``."""
    return ", ".join((*config.group_by, *extra))


def joined_matchers(config: RulesConfig, target: bool) -> str:
    return ", ".join(m for m in (config.target_selector if target else "", config.selector) if m)


def escape_template(text: str) -> str:
    """``text`` kept literal in an annotation (Prometheus expands them as Go templates)."""
    return text.replace("{{", "{{`{{`}}")
