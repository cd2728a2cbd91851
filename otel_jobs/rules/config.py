"""The settings of the rule generator: :class:`RulesConfig` and the parsers of its values.

Every field with a ``help`` in its metadata is a command-line option (``--field-name``) and a row
of the options table; a group's own thresholds are :class:`Option` objects declared in its module
and held in ``RulesConfig.options``. Parsers raise ``argparse.ArgumentTypeError`` naming the value
and what is accepted; argparse turns that into a usage error.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

DEFAULT_GRAFANA_URL = "http://localhost:3000"
JOB_DASHBOARD = "otel-jobs-job"
OVERVIEW_DASHBOARD = "otel-jobs-overview"
#: A placeholder (RFC 2606 reserves ``.invalid``): the runbooks are ``docs/runbooks/`` of the
#: source, served wherever the user publishes them, which only ``--runbook-url`` can say.
DEFAULT_RUNBOOK_URL = "https://runbook-url-not-set.invalid"

DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")


def duration(text: str) -> str:
    """A Prometheus duration (``30s``, ``1h30m``), as given."""
    if not DURATION.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Prometheus duration (accepted: e.g. 30s, 5m, 1h30m, 1d, 1w)"
        )
    return text


def seconds_or_none(text: str) -> float | None:
    """A positive finite number of seconds, or ``none``/``off`` for no ceiling."""
    if text.lower() in ("none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds (or 'none')"
        ) from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r}: a positive finite number of seconds")
    return value


def positive(text: str) -> float:
    """A positive finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r}: a positive finite number")
    return value


def matchers(text: str) -> str:
    """PromQL label matchers without braces."""
    if "{" in text or "}" in text:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give the label matchers without braces, e.g. 'namespace=\"billing\"'"
        )
    return text.strip()


def on_off(text: str) -> bool:
    """``on`` or ``off`` (also true/false, yes/no, 1/0)."""
    value = text.strip().lower()
    if value in ("on", "true", "yes", "1"):
        return True
    if value in ("off", "false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r}: accepted on or off")


def labels(text: str) -> tuple[str, ...]:
    """A comma-separated list of label names."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise argparse.ArgumentTypeError(f"{name!r} is not a label name")
    if not names:
        raise argparse.ArgumentTypeError("at least one label name")
    return names


@dataclass(frozen=True)
class Option(Generic[T]):
    """A threshold a group declares in its own module: ``--<name>`` and a row of the table.

    >>> BACKLOG_AGE = Option("backlog_age_seconds", 600.0, "oldest wait that is old", positive)
    >>> RulesConfig(options={"backlog_age_seconds": 60.0}).option(BACKLOG_AGE)
    60.0
    """

    name: str
    default: T
    help: str
    parse: Callable[[str], T]
    metavar: str = "VALUE"


#: The metavar of a setting read by each parser, unless the setting names its own.
METAVARS: dict[Callable[[str], Any], str] = {
    duration: "DURATION",
    seconds_or_none: "SECONDS",
    matchers: "MATCHERS",
    labels: "LABELS",
    on_off: "on|off",
}


def _opt(default: Any, help: str, parse: Any, metavar: str | None = None) -> Any:
    metavar = metavar or METAVARS.get(parse)
    return field(default=default, metadata={"help": help, "parse": parse, "metavar": metavar})


@dataclass(frozen=True)
class RulesConfig:
    """Everything the rules can be tuned by: selectors, thresholds, windows and ``for`` durations."""

    selector: str = _opt(
        "",
        "label matchers added to every otel-jobs selector, e.g. 'namespace=\"billing\"'",
        matchers,
    )
    target_selector: str = _opt(
        'job="otel-jobs"',
        "matchers that pick the worker scrape targets in `up` (target down / absent alerts)",
        matchers,
    )
    group_by: tuple[str, ...] = _opt(
        ("job", "job_name", "queue"),
        "labels that identify one job across its workers, for the job-level alerts",
        labels,
    )
    recording_rules: bool = _opt(
        True,
        "the job-level alerts and OtelJobsQueueBacklogGrowing read the recording rules "
        "(otel-jobs rules --part records, loaded beside the alerts) instead of every worker's raw "
        "series; 'off': self-contained alerts",
        on_off,
    )
    heartbeat_timeout_default: float | None = _opt(
        3600.0,
        "seconds without a heartbeat that count as stalled for a job declaring no heartbeat "
        "timeout (+Inf); 'none': such jobs never alert",
        seconds_or_none,
    )
    max_duration_default: float | None = _opt(
        86400.0,
        "seconds after which a run of a job declaring no max duration (+Inf) has overrun; "
        "'none': such runs never alert",
        seconds_or_none,
    )
    duration_window: str = _opt("1h", "window of the p95 duration alerts", duration)
    usual_offset: str = _opt("1w", "how far back the 'usual' p95 duration is taken from", duration)
    usual_factor: float = _opt(
        3.0, "p95 duration this many times its usual one is far above usual", positive, "FACTOR"
    )
    usual_min_seconds: float = _opt(
        60.0,
        "p95 durations below this many seconds never count as far above usual",
        positive,
        "SECONDS",
    )
    failure_ratio: float = _opt(
        0.1, "share of finished runs ending in failure or timeout that is high", positive, "RATIO"
    )
    failure_window: str = _opt("15m", "window of the failure ratio", duration)
    failure_min_runs: float = _opt(
        5.0, "runs finished in the window before a failure ratio counts", positive, "RUNS"
    )
    timeout_window: str = _opt("15m", "window in which any run ending by timeout alerts", duration)
    queue_wait_p95: float = _opt(
        300.0, "p95 queue wait (seconds) that is high", positive, "SECONDS"
    )
    queue_wait_window: str = _opt("10m", "window of the queue wait p95", duration)
    outbound_window: str = _opt("1h", "calls without a timeout within this window alert", duration)
    watchdog_stale_seconds: float = _opt(
        60.0, "seconds since the watchdog's last tick that mean it is frozen", positive, "SECONDS"
    )
    not_running_window: str = _opt(
        "1h",
        "a job with no finished run in this window, that had runs in the same window one "
        "--not-running-offset earlier, has stopped running",
        duration,
    )
    not_running_offset: str = _opt("1d", "how far back 'it normally runs' is looked up", duration)
    runbook_url: str = _opt(
        DEFAULT_RUNBOOK_URL,
        "base URL where you publish the runbooks of docs/runbooks/ (BASE/AlertName.md); set it "
        "once: the default is a placeholder",
        str,
        "URL",
    )
    grafana_url: str = _opt(
        DEFAULT_GRAFANA_URL,
        f"base URL of the Grafana holding the otel-jobs dashboards ({JOB_DASHBOARD}, "
        f"{OVERVIEW_DASHBOARD})",
        str,
        "URL",
    )
    for_durations: Mapping[str, str] = field(default_factory=dict)
    """``for`` per alert name, over the defaults (``DEFAULT_FOR``)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Values of the :class:`Option` s declared by the groups, by name, over their defaults."""
    operator_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels of the PrometheusRule object (the Operator's ``ruleSelector`` picks on them)."""
    operator_name: str = "otel-jobs"
    operator_namespace: str | None = None

    def __post_init__(self) -> None:
        from .catalog import default_for, options

        unknown = set(self.options) - set(options())
        if unknown:
            raise ValueError(
                f"RulesConfig options {sorted(unknown)}: unknown; known: {', '.join(options())}"
            )
        unknown = set(self.for_durations) - set(default_for())
        if unknown:
            raise ValueError(
                f"RulesConfig for_durations {sorted(unknown)}: unknown alert; "
                f"known: {', '.join(default_for())}"
            )

    def for_of(self, alert: str) -> str:
        """The ``for`` of ``alert``: the configured one, else its group's default."""
        from .catalog import default_for

        return self.for_durations.get(alert, default_for()[alert])

    def option(self, option: Option[T]) -> T:
        """The value of a group's ``option``: the configured one, else its default."""
        value: T = self.options.get(option.name, option.default)
        return value
