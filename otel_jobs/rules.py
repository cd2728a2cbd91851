"""Render the Prometheus alert rules of otel-jobs (``otel-jobs rules``).

The files in ``alerts/`` are this module's default output; render your own copy when you need
other selectors, ``for`` durations or thresholds instead of editing YAML by hand::

    otel-jobs rules                                   # plain Prometheus rule file on stdout
    otel-jobs rules --selector 'namespace="billing"' --stall-for 2m -o billing.rules.yml
    otel-jobs rules --format operator --operator-label release=kube-prometheus-stack \\
        -o otel-jobs.prometheusrule.yaml              # a PrometheusRule manifest
    otel-jobs rules --for OtelJobsQueueWaitHigh=30m --queue-wait-p95 120

Every option is a field of :class:`RulesConfig` (``otel-jobs rules --help`` lists them with their
defaults, the README's table is :func:`options_table`); from Python,
``render(RulesConfig(selector='namespace="billing"'))`` returns the text. Selectors are PromQL
label matchers without braces (``namespace="billing", env!~"dev|test"``), inserted as they are:
check the result with ``promtool check rules``.

How the thresholds work:

* Per-run alerts take each job's own limits from the worker: a run is stalled when its stalest
  heartbeat is older than ``otel_jobs_run_heartbeat_timeout_seconds`` and overran when it started
  longer ago than ``otel_jobs_run_max_duration_seconds`` (the values the code declared with
  ``@job(...)``, ``instrument(jobs=...)``, the framework's limit or the global setting). When a
  job declares no limit (``+Inf``) the ceiling ``--heartbeat-timeout-default`` /
  ``--max-duration-default`` applies instead; ``none`` switches that ceiling off so that such
  jobs never alert.
* The two timestamp gauges have no series while no run of a job is in flight, so an idle job
  can never fire a per-run alert.
* Job-level alerts (durations, failure ratio, timeouts, queue wait, a job that stopped running)
  aggregate across workers by ``--group-by`` (``job,job_name,queue``): a job's runs land on any
  worker, and worker instances come and go.

Each alert carries one label, ``severity`` (``critical`` pages a person, ``warning`` goes to the
work queue, ``info`` helps diagnose), a fixed ``summary``, a ``description`` templated with the
job, queue, instance and measured value, a ``runbook_url`` (``--runbook-url``/<alert>.md) and a
``dashboard_url`` into the shipped Grafana dashboards under ``--grafana-url``: the job dashboard
(uid ``otel-jobs-job``) with the alert's job, queue and instance as dashboard variables, or the
overview (uid ``otel-jobs-overview``) for the worker and outbound alerts.

The output is YAML written without a YAML library (the package does not depend on one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_RUNBOOK_URL = "https://github.com/otel-jobs/otel-jobs/blob/main/docs/runbooks"
DEFAULT_GRAFANA_URL = "http://localhost:3000"
JOB_DASHBOARD = "otel-jobs-job"
OVERVIEW_DASHBOARD = "otel-jobs-overview"

_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")


def _duration(text: str) -> str:
    if not _DURATION.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a Prometheus duration (accepted: e.g. 30s, 5m, 1h30m, 1d, 1w)"
        )
    return text


def _seconds_or_none(text: str) -> float | None:
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


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"{text!r}: a positive finite number")
    return value


def _matchers(text: str) -> str:
    if "{" in text or "}" in text:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give the label matchers without braces, e.g. 'namespace=\"billing\"'"
        )
    return text.strip()


def _labels(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    for name in names:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            raise argparse.ArgumentTypeError(f"{name!r} is not a label name")
    if not names:
        raise argparse.ArgumentTypeError("at least one label name")
    return names


def _opt(default: Any, help: str, parse: Any = None, metavar: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "parse": parse, "metavar": metavar})


@dataclass(frozen=True)
class RulesConfig:
    """Everything the rules can be tuned by: selectors, thresholds, windows and ``for`` durations."""

    selector: str = _opt(
        "",
        "label matchers added to every otel-jobs selector, e.g. 'namespace=\"billing\"'",
        _matchers,
        "MATCHERS",
    )
    target_selector: str = _opt(
        'job="otel-jobs"',
        "matchers that pick the worker scrape targets in `up` (target down / absent alerts)",
        _matchers,
        "MATCHERS",
    )
    group_by: tuple[str, ...] = _opt(
        ("job", "job_name", "queue"),
        "labels that identify one job across its workers, for the job-level alerts",
        _labels,
        "LABELS",
    )
    heartbeat_timeout_default: float | None = _opt(
        3600.0,
        "seconds without a heartbeat that count as stalled for a job declaring no heartbeat "
        "timeout (+Inf); 'none': such jobs never alert",
        _seconds_or_none,
        "SECONDS",
    )
    max_duration_default: float | None = _opt(
        86400.0,
        "seconds after which a run of a job declaring no max duration (+Inf) has overrun; "
        "'none': such runs never alert",
        _seconds_or_none,
        "SECONDS",
    )
    duration_window: str = _opt("1h", "window of the p95 duration alerts", _duration, "DURATION")
    usual_offset: str = _opt(
        "1w", "how far back the 'usual' p95 duration is taken from", _duration, "DURATION"
    )
    usual_factor: float = _opt(
        3.0, "p95 duration this many times its usual one is far above usual", _positive, "FACTOR"
    )
    usual_min_seconds: float = _opt(
        60.0,
        "p95 durations below this many seconds never count as far above usual",
        _positive,
        "SECONDS",
    )
    failure_ratio: float = _opt(
        0.1, "share of finished runs ending in failure or timeout that is high", _positive, "RATIO"
    )
    failure_window: str = _opt("15m", "window of the failure ratio", _duration, "DURATION")
    failure_min_runs: float = _opt(
        5.0, "runs finished in the window before a failure ratio counts", _positive, "RUNS"
    )
    timeout_window: str = _opt(
        "15m", "window in which any run ending by timeout alerts", _duration, "DURATION"
    )
    queue_wait_p95: float = _opt(
        300.0, "p95 queue wait (seconds) that is high", _positive, "SECONDS"
    )
    queue_wait_window: str = _opt("10m", "window of the queue wait p95", _duration, "DURATION")
    outbound_window: str = _opt(
        "1h", "calls without a timeout within this window alert", _duration, "DURATION"
    )
    watchdog_stale_seconds: float = _opt(
        60.0, "seconds since the watchdog's last tick that mean it is frozen", _positive, "SECONDS"
    )
    not_running_window: str = _opt(
        "1h",
        "a job with no finished run in this window, that had runs in the same window one "
        "--not-running-offset earlier, has stopped running",
        _duration,
        "DURATION",
    )
    not_running_offset: str = _opt(
        "1d", "how far back 'it normally runs' is looked up", _duration, "DURATION"
    )
    runbook_url: str = _opt(
        DEFAULT_RUNBOOK_URL, "base URL of the runbooks (BASE/AlertName.md)", str, "URL"
    )
    grafana_url: str = _opt(
        DEFAULT_GRAFANA_URL,
        f"base URL of the Grafana holding the otel-jobs dashboards ({JOB_DASHBOARD}, "
        f"{OVERVIEW_DASHBOARD})",
        str,
        "URL",
    )
    for_durations: Mapping[str, str] = field(default_factory=dict)
    """``for`` per alert name, over :data:`DEFAULT_FOR`."""
    operator_labels: Mapping[str, str] = field(default_factory=dict)
    """Labels of the PrometheusRule object (the Operator's ``ruleSelector`` picks on them)."""
    operator_name: str = "otel-jobs"
    operator_namespace: str | None = None

    def for_of(self, alert: str) -> str:
        return self.for_durations.get(alert, DEFAULT_FOR[alert])


#: The alerts in the order they are rendered, with their ``for`` duration by default.
DEFAULT_FOR: dict[str, str] = {
    "OtelJobsRunStalled": "1m",
    "OtelJobsRunNotHeartbeating": "2m",
    "OtelJobsRunOverMaxDuration": "2m",
    "OtelJobsWatchdogNotTicking": "2m",
    "OtelJobsTargetDown": "5m",
    "OtelJobsTargetAbsent": "10m",
    "OtelJobsDurationAboveMaxDuration": "15m",
    "OtelJobsDurationAboveUsual": "30m",
    "OtelJobsFailureRatioHigh": "10m",
    "OtelJobsRunsTimingOut": "1m",
    "OtelJobsQueueWaitHigh": "10m",
    "OtelJobsJobStoppedRunning": "15m",
    "OtelJobsOutboundCallWithoutTimeout": "1m",
}

#: Alerts whose ``for`` ``--stall-for`` sets (the ones about one stuck run).
STALL_ALERTS = ("OtelJobsRunStalled", "OtelJobsRunNotHeartbeating")


# --- PromQL building blocks -----------------------------------------------------------------


def _sel(config: RulesConfig, name: str, extra: str = "", *, target: bool = False) -> str:
    matchers = [m for m in (config.target_selector if target else "", config.selector, extra) if m]
    return f"{name}{{{', '.join(matchers)}}}" if matchers else name


def _threshold(gauge: str, default: float | None, carrier: str) -> str:
    """The job's own threshold where finite, else ``default`` on every series of ``carrier``."""
    if default is None:
        return gauge
    # `0 * carrier + default` puts the default on exactly the label sets that need it; `or`
    # only adds the ones whose own gauge is missing or +Inf (+Inf * 0 would be NaN).
    return f"(\n  ({gauge} < +Inf)\n  or\n  ({carrier} * 0 + {_num(default)})\n)"


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


def _by(config: RulesConfig, *extra: str) -> str:
    return ", ".join((*config.group_by, *extra))


_JOB = "{{ $labels.job_name }} on queue {{ $labels.queue }}"
_WHERE = "{{ with $labels.instance }} on {{ . }}{{ end }}"
_RUN_VARS = ("job_name", "queue", "instance")


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    expr: str
    summary: str
    description: str
    #: The labels passed to the dashboard as variables: with job_name, the job dashboard.
    dashboard_vars: tuple[str, ...] = ("job_name", "queue")


def alerts(config: RulesConfig) -> dict[str, list[Alert]]:
    """The alert rules by group name, rendered for ``config``."""
    s = config
    hb = _sel(s, "otel_jobs_stalest_heartbeat_timestamp_seconds")
    oldest = _sel(s, "otel_jobs_oldest_run_start_timestamp_seconds")
    finished = _sel(s, "otel_jobs_runs_finished_total")
    bad_finished = _sel(s, "otel_jobs_runs_finished_total", 'outcome=~"failure|timeout"')
    timeouts = _sel(s, "otel_jobs_runs_finished_total", 'outcome="timeout"')
    duration_p95 = (
        f"histogram_quantile(0.95, sum by ({_by(s, 'le')}) "
        f"(rate({_sel(s, 'otel_jobs_run_duration_seconds_bucket')}[{s.duration_window}])))"
    )
    usual_p95 = (
        f"histogram_quantile(0.95, sum by ({_by(s, 'le')}) "
        f"(rate({_sel(s, 'otel_jobs_run_duration_seconds_bucket')}[{s.duration_window}] "
        f"offset {s.usual_offset})))"
    )
    no_timeout = _sel(s, "otel_jobs_outbound_calls_without_timeout_total")
    up = _sel(s, "up", target=True)

    runs = [
        Alert(
            "OtelJobsRunStalled",
            "critical",
            f"{_sel(s, 'otel_jobs_runs_stalled')} > 0",
            "The otel-jobs watchdog reports a stalled run.",
            f"{{{{ $value }}}} run(s) of {_JOB}{_WHERE} stalled, state {{{{ $labels.state }}}} "
            "(blocked: waiting without CPU on I/O or a lock; spinning: burning CPU in a loop; "
            "unknown: not diagnosed). The watchdog's WARNING log and the stall span carry the "
            "stack.",
            dashboard_vars=_RUN_VARS,
        ),
        Alert(
            "OtelJobsRunNotHeartbeating",
            "critical",
            f"(time() - {hb})\n> {_threshold(_sel(s, 'otel_jobs_run_heartbeat_timeout_seconds'), s.heartbeat_timeout_default, hb)}",
            "A job run has stopped heartbeating.",
            f"The stalest run of {_JOB}{_WHERE} last heartbeated "
            "{{ $value | humanizeDuration }} ago, longer than the job's heartbeat timeout.",
            dashboard_vars=_RUN_VARS,
        ),
        Alert(
            "OtelJobsRunOverMaxDuration",
            "warning",
            f"(time() - {oldest})\n> {_threshold(_sel(s, 'otel_jobs_run_max_duration_seconds'), s.max_duration_default, oldest)}",
            "A job run is running longer than its max duration.",
            f"The oldest run of {_JOB}{_WHERE} started {{{{ $value | humanizeDuration }}}} "
            "ago, longer than the job's max duration.",
            dashboard_vars=_RUN_VARS,
        ),
    ]
    workers = [
        Alert(
            "OtelJobsWatchdogNotTicking",
            "critical",
            f"time() - {_sel(s, 'otel_jobs_watchdog_last_tick_timestamp_seconds')} > "
            f"{_num(s.watchdog_stale_seconds)}",
            "The otel-jobs watchdog of a worker stopped ticking.",
            "The watchdog of {{ $labels.instance }} (scrape job {{ $labels.job }}) last ticked "
            "{{ $value | humanizeDuration }} ago: a worker process is frozen or its watchdog "
            "thread is gone, and its stuck runs go unreported.",
            dashboard_vars=("instance",),
        ),
        Alert(
            "OtelJobsTargetDown",
            "warning",
            f"{up} == 0",
            "A worker's otel-jobs metrics target is down.",
            "Prometheus cannot scrape {{ $labels.instance }} (scrape job {{ $labels.job }}): "
            "the worker is down or its /metrics endpoint unreachable, and its jobs are unwatched.",
            dashboard_vars=("instance",),
        ),
        Alert(
            "OtelJobsTargetAbsent",
            "warning",
            f"absent({up})",
            "No otel-jobs worker target is known to Prometheus.",
            f"Prometheus has no scrape target matching {{{_escape_template(_joined_matchers(s, True))}}}"
            ": no worker is being watched for stuck jobs.",
            dashboard_vars=(),
        ),
    ]
    jobs = [
        Alert(
            "OtelJobsDurationAboveMaxDuration",
            "warning",
            f"{duration_p95}\n> "
            + _threshold(
                f"max by ({_by(s)}) ({_sel(s, 'otel_jobs_run_max_duration_seconds')})",
                s.max_duration_default,
                duration_p95,
            ),
            "A job's p95 run duration is above its max duration.",
            f"p95 duration of {_JOB}{_WHERE} over {s.duration_window} is "
            "{{ $value | humanizeDuration }}, above the job's max duration.",
        ),
        Alert(
            "OtelJobsDurationAboveUsual",
            "info",
            f"{duration_p95}\n> {_num(s.usual_factor)} * {usual_p95}\nand\n{duration_p95}\n"
            f"> {_num(s.usual_min_seconds)}",
            "A job's p95 run duration is far above its usual.",
            f"p95 duration of {_JOB}{_WHERE} over {s.duration_window} is "
            f"{{{{ $value | humanizeDuration }}}}, more than {_num(s.usual_factor)} times its "
            f"p95 {s.usual_offset} earlier.",
        ),
        Alert(
            "OtelJobsFailureRatioHigh",
            "warning",
            f"sum by ({_by(s)}) (rate({bad_finished}[{s.failure_window}]))\n"
            f"/\nsum by ({_by(s)}) (rate({finished}[{s.failure_window}]))\n> {_num(s.failure_ratio)}\n"
            f"and\nsum by ({_by(s)}) (increase({finished}[{s.failure_window}])) >= "
            f"{_num(s.failure_min_runs)}",
            "Many runs of a job are failing.",
            f"{{{{ $value | humanizePercentage }}}} of the runs of {_JOB}{_WHERE} that "
            f"finished in the last {s.failure_window} ended in failure or timeout.",
        ),
        Alert(
            "OtelJobsRunsTimingOut",
            "warning",
            f"sum by ({_by(s)}) (increase({timeouts}[{s.timeout_window}])) > 0",
            "Runs of a job are ending by timeout.",
            f"About {{{{ $value | humanize }}}} run(s) of {_JOB}{_WHERE} ended by timeout in "
            f"the last {s.timeout_window}.",
        ),
        Alert(
            "OtelJobsQueueWaitHigh",
            "warning",
            f"histogram_quantile(0.95, sum by ({_by(s, 'le')}) "
            f"(rate({_sel(s, 'otel_jobs_queue_wait_seconds_bucket')}[{s.queue_wait_window}])))\n"
            f"> {_num(s.queue_wait_p95)}",
            "Runs of a job wait long in their queue before they start.",
            f"p95 queue wait of {_JOB}{_WHERE} over {s.queue_wait_window} is "
            "{{ $value | humanizeDuration }}: the queue is backed up, often behind stuck runs.",
        ),
        Alert(
            "OtelJobsJobStoppedRunning",
            "warning",
            f"sum by ({_by(s)}) (increase({finished}[{s.not_running_window}] offset "
            f"{s.not_running_offset})) > 0\nunless\n"
            f"sum by ({_by(s)}) (increase({finished}[{s.not_running_window}])) > 0",
            "A job that normally runs has finished no run for a long time.",
            f"{_JOB}{_WHERE} finished no run in the last {s.not_running_window}; in the same "
            f"window {s.not_running_offset} earlier it finished about "
            "{{ $value | humanize }}.",
        ),
    ]
    outbound = [
        Alert(
            "OtelJobsOutboundCallWithoutTimeout",
            "warning",
            # A call site's counter appears at its first call: `unless ... offset` catches
            # series that are new in the window, which increase() alone would miss.
            f"increase({no_timeout}[{s.outbound_window}]) > 0\nor\n"
            f"({no_timeout} unless {no_timeout} offset {s.outbound_window})",
            "Outbound calls were made without a timeout.",
            "{{ $labels.library }} calls to {{ $labels.host }} from {{ $labels.call_site }}"
            f"{_WHERE} had no timeout ({{{{ $value | humanize }}}} in the last "
            f"{s.outbound_window}); one unanswered call hangs its job for ever.",
            dashboard_vars=("instance",),
        ),
    ]
    return {
        "otel-jobs.runs": runs,
        "otel-jobs.workers": workers,
        "otel-jobs.jobs": jobs,
        "otel-jobs.outbound": outbound,
    }


def _joined_matchers(config: RulesConfig, target: bool) -> str:
    return ", ".join(m for m in (config.target_selector if target else "", config.selector) if m)


def _escape_template(text: str) -> str:
    # Prometheus expands annotations as Go templates: keep matcher text literal.
    return text.replace("{{", "{{`{{`}}")


def groups(config: RulesConfig) -> list[dict[str, Any]]:
    """The rule groups as plain data (what a rule file's ``groups:`` holds)."""
    out = []
    for group, rules in alerts(config).items():
        items = []
        for alert in rules:
            uid = JOB_DASHBOARD if "job_name" in alert.dashboard_vars else OVERVIEW_DASHBOARD
            dashboard = f"{config.grafana_url.rstrip('/')}/d/{uid}"
            if alert.dashboard_vars:
                dashboard += "?" + "&".join(
                    f"var-{v}={{{{ $labels.{v} }}}}" for v in alert.dashboard_vars
                )
            items.append(
                {
                    "alert": alert.name,
                    "expr": alert.expr,
                    "for": config.for_of(alert.name),
                    "labels": {"severity": alert.severity},
                    "annotations": {
                        "summary": alert.summary,
                        "description": alert.description,
                        "runbook_url": f"{config.runbook_url.rstrip('/')}/{alert.name}.md",
                        "dashboard_url": dashboard,
                    },
                }
            )
        out.append({"name": group, "rules": items})
    return out


def document(config: RulesConfig, fmt: str = "prometheus") -> dict[str, Any]:
    """The whole file as plain data: a rule file, or a PrometheusRule manifest (``operator``)."""
    if fmt == "prometheus":
        return {"groups": groups(config)}
    if fmt == "operator":
        metadata: dict[str, Any] = {"name": config.operator_name}
        if config.operator_namespace:
            metadata["namespace"] = config.operator_namespace
        metadata["labels"] = {"app.kubernetes.io/name": "otel-jobs", **config.operator_labels}
        return {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": metadata,
            "spec": {"groups": groups(config)},
        }
    raise ValueError(f"format {fmt!r}: accepted prometheus, operator")


HEADER = (
    "# Generated by `otel-jobs rules` (otel_jobs/rules.py). Render your own copy with other\n"
    "# selectors, thresholds and `for` durations instead of editing this file by hand.\n"
)


def render(config: RulesConfig | None = None, fmt: str = "prometheus") -> str:
    """The rule file (``fmt="operator"``: a PrometheusRule manifest) as YAML text.

    >>> text = render(RulesConfig(selector='namespace="billing"'), fmt="operator")
    """
    return HEADER + dump_yaml(document(config or RulesConfig(), fmt))


#: The committed files and the format each is rendered in.
DEFAULT_FILES = {
    "alerts/otel-jobs.rules.yml": "prometheus",
    "alerts/otel-jobs.prometheusrule.yaml": "operator",
}


def default_files() -> dict[str, str]:
    """The text of every committed rule file, as the generator renders it by default."""
    return {path: render(RulesConfig(), fmt) for path, fmt in DEFAULT_FILES.items()}


# --- YAML without a YAML library ------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z_/][A-Za-z0-9_./-]*$")
_RESERVED = {"true", "false", "yes", "no", "on", "off", "null", "y", "n", "~"}


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return _num(float(value)) if isinstance(value, float) else str(value)
    text = str(value)
    if (_PLAIN.match(text) or _DURATION.match(text)) and text.lower() not in _RESERVED:
        return text
    # A JSON string is a valid YAML double-quoted scalar.
    return json.dumps(text, ensure_ascii=False)


def _lines(value: Any, indent: int) -> Iterator[str]:
    pad = "  " * indent
    if isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(item, (Mapping, list)) and item:
                yield f"{pad}{key}:"
                yield from _lines(item, indent + 1)
            elif isinstance(item, str) and "\n" in item or key == "expr":
                yield f"{pad}{key}: |-"
                for line in str(item).splitlines():
                    yield f"{pad}  {line}" if line else ""
            elif isinstance(item, Mapping):
                yield f"{pad}{key}: {{}}"
            elif isinstance(item, list):
                yield f"{pad}{key}: []"
            else:
                yield f"{pad}{key}: {_scalar(item)}"
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping) and item:
                sub = list(_lines(item, indent + 1))
                sub[0] = f"{pad}- {sub[0][len(pad) + 2 :]}"
                yield from sub
            else:
                yield f"{pad}- {_scalar(item)}"
    else:
        yield f"{pad}{_scalar(value)}"


def dump_yaml(data: Any) -> str:
    """``data`` (mappings, lists, strings, numbers) as block-style YAML."""
    return "\n".join(_lines(data, 0)) + "\n"


# --- the command ----------------------------------------------------------------------------


def options_table() -> str:
    """The README table of the generator's options (a test keeps the two equal)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for f in fields(RulesConfig):
        if "help" not in f.metadata:
            continue
        default = f.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        if shown is None or shown == "":
            shown = "(none)"
        elif isinstance(shown, float):
            shown = f"`{_num(shown)}`"
        else:
            shown = f"`{shown}`"
        rows.append(f"| `{_flag(f.name)}` | {shown} | {f.metadata['help']} |")
    return "\n".join(rows)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``otel-jobs rules``: one per :class:`RulesConfig` field."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument(
        "--format",
        choices=("prometheus", "operator"),
        default="prometheus",
        help="a rule file for `rule_files:`, or a PrometheusRule manifest for the Operator",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write here instead of stdout ('-': stdout)"
    )
    for f in fields(RulesConfig):
        if "help" not in f.metadata:
            continue
        default = f.default
        shown = ",".join(default) if isinstance(default, tuple) else default
        parser.add_argument(
            _flag(f.name),
            dest=f.name,
            type=f.metadata["parse"],
            default=default,
            metavar=f.metadata["metavar"],
            help=f.metadata["help"] + ("" if shown is not None else " (default: none)"),
        )
    parser.add_argument(
        "--stall-for",
        type=_duration,
        metavar="DURATION",
        help=f"`for` of the stuck-run alerts ({', '.join(STALL_ALERTS)})",
    )
    parser.add_argument(
        "--for",
        dest="for_",
        action="append",
        default=[],
        metavar="ALERT=DURATION",
        help="`for` of one alert (repeatable); alerts: " + ", ".join(DEFAULT_FOR),
    )
    parser.add_argument(
        "--operator-label",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="label of the PrometheusRule object, e.g. release=kube-prometheus-stack (repeatable)",
    )
    parser.add_argument("--operator-name", default="otel-jobs", help="PrometheusRule name")
    parser.add_argument("--operator-namespace", help="PrometheusRule namespace")


def _pairs(items: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise ValueError(f"{item!r}: expected {what}")
        out[key.strip()] = value.strip()
    return out


def config_from_args(args: argparse.Namespace) -> RulesConfig:
    """The :class:`RulesConfig` the parsed command line asks for."""
    values = {f.name: getattr(args, f.name) for f in fields(RulesConfig) if "help" in f.metadata}
    durations: dict[str, str] = {}
    if args.stall_for:
        durations.update(dict.fromkeys(STALL_ALERTS, args.stall_for))
    for alert, value in _pairs(args.for_, "ALERT=DURATION").items():
        if alert not in DEFAULT_FOR:
            raise ValueError(f"--for {alert}: unknown alert; known: {', '.join(DEFAULT_FOR)}")
        durations[alert] = _duration(value)
    return dataclasses.replace(
        RulesConfig(**values),
        for_durations=durations,
        operator_labels=_pairs(args.operator_label, "NAME=VALUE"),
        operator_name=args.operator_name,
        operator_namespace=args.operator_namespace,
    )


def run(args: argparse.Namespace) -> int:
    """Render the rules as the command line asks; 2 on a bad option."""
    try:
        config = config_from_args(args)
    except (ValueError, argparse.ArgumentTypeError) as exc:
        print(f"otel-jobs rules: {exc}", file=sys.stderr)
        return 2
    text = render(config, args.format)
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0
