"""Render the Prometheus alert rules of otel-jobs (``otel-jobs rules``).

``render(RulesConfig(selector='namespace="billing"'))`` returns a rule file; the files in
``alerts/`` are the default output, byte for byte (a test). The user's guide to the rules and
their options is the docs' alerts page; this docstring is for changing the code.

Layout:

* :mod:`.config`: :class:`RulesConfig` (selectors, the built-in thresholds and windows, URLs,
  ``for`` overrides) and the value parsers; :class:`Option` for a group's own thresholds.
* :mod:`.alert_groups`: one module per rule group, each declaring ``GROUP = Group(...)``: its alerts
  (a function of the config), their default ``for`` and its own options.
* :mod:`.promql`: :class:`Alert`, :class:`Group`, :class:`Record` and the PromQL text helpers
  groups build with.
* :mod:`.fleet`: the recording rules of a counter across every worker: one read per evaluation,
  the longer windows summed from it (what keeps rule evaluation cheap at fleet scale).
* :mod:`.catalog`: finds the groups, derives :data:`DEFAULT_FOR` and the options from them.
* :mod:`.render`: plain data, then YAML (no YAML library), for Prometheus or the Operator.
* :mod:`.cli`: the command's options and the options table, generated from the settings.

Adding an alert group is one new file, ``otel_jobs/rules/alert_groups/<topic>.py``::

    from ..config import Option, RulesConfig, positive
    from ..promql import Alert, Group, sel

    BACKLOG_AGE = Option("backlog_age_seconds", 600.0, "oldest wait that is old", positive,
                         "SECONDS")

    def alerts(s: RulesConfig) -> list[Alert]:
        age = s.option(BACKLOG_AGE)
        return [Alert("OtelJobsQueueBacklogOld", "warning", f"{sel(s, 'otel_jobs_...')} > {age}",
                      "fixed summary", "templated description with {{ $value }}")]

    GROUP = Group("otel-jobs.queues", order=50, default_for={"OtelJobsQueueBacklogOld": "10m"},
                  alerts=alerts, options=(BACKLOG_AGE,))

It is then rendered after the groups of lower ``order``, its option is ``--backlog-age-seconds``
and a row of :func:`options_table`, its alerts are in :data:`DEFAULT_FOR` (``--for``). Besides
the code, an alert needs a runbook (``docs/runbooks/<Alert>.md`` and the index), promtool unit
tests in ``alerts/tests/`` firing and quiet, and the regenerated ``alerts/*`` files; the tests
check all three.

Invariants: alert names are ``OtelJobs`` + PascalCase, named after the symptom; the only label is
``severity``; ``summary`` is fixed text; a name or option is declared once across all groups
(checked when the groups are found).
"""

from __future__ import annotations

from typing import Any

from .catalog import alerts, records
from .cli import STALL_ALERTS, add_arguments, config_from_args, options_table, run
from .config import (
    DEFAULT_GRAFANA_URL,
    DEFAULT_RUNBOOK_URL,
    JOB_DASHBOARD,
    OVERVIEW_DASHBOARD,
    Option,
    RulesConfig,
)
from .promql import Alert, Group, Record
from .render import (
    DEFAULT_FILES,
    HEADER,
    PARTS,
    RECORD_FILES,
    RECORDS_GROUP,
    default_files,
    document,
    dump_yaml,
    groups,
    render,
)

__all__ = [
    "DEFAULT_FILES",
    "DEFAULT_FOR",
    "DEFAULT_GRAFANA_URL",
    "DEFAULT_RUNBOOK_URL",
    "HEADER",
    "JOB_DASHBOARD",
    "OVERVIEW_DASHBOARD",
    "PARTS",
    "RECORDS_GROUP",
    "RECORD_FILES",
    "STALL_ALERTS",
    "Alert",
    "Group",
    "Option",
    "Record",
    "RulesConfig",
    "add_arguments",
    "alerts",
    "config_from_args",
    "default_files",
    "document",
    "dump_yaml",
    "groups",
    "options_table",
    "records",
    "render",
    "run",
]


def __getattr__(name: str) -> Any:
    # DEFAULT_FOR (every alert in rendering order, with its default ``for``) is derived from the
    # groups, which are found on first use.
    if name == "DEFAULT_FOR":
        from .catalog import default_for

        return default_for()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
