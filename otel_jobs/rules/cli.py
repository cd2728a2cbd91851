"""``otel-jobs rules``: one option per setting, and the options table of the docs.

The options come from the :class:`RulesConfig` fields that carry a ``help`` and from the groups'
own :class:`Option` s, so a new setting needs no change here.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .catalog import default_for, options
from .config import DEFAULT_RUNBOOK_URL, RulesConfig, duration
from .promql import num
from .render import render

#: Alerts whose ``for`` ``--stall-for`` sets (the ones about one stuck run).
STALL_ALERTS = ("OtelJobsRunStalled", "OtelJobsRunNotHeartbeating")


def _settings() -> Iterator[tuple[str, Any, str, Any, str | None]]:
    """(name, default, help, parse, metavar) of every option, in the table's order."""
    for f in dataclasses.fields(RulesConfig):
        if "help" in f.metadata:
            m = f.metadata
            yield f.name, f.default, m["help"], m["parse"], m["metavar"]
    for o in options().values():
        yield o.name, o.default, o.help, o.parse, o.metavar


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def options_table() -> str:
    """The docs' table of the generator's options (a test keeps the two equal)."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for name, default, help_text, _, _ in _settings():
        shown = ",".join(default) if isinstance(default, tuple) else default
        if isinstance(shown, bool):
            shown = f"`{'on' if shown else 'off'}`"
        elif shown is None or shown == "":
            shown = "(none)"
        elif isinstance(shown, float):
            shown = f"`{num(shown)}`"
        else:
            shown = f"`{shown}`"
        rows.append(f"| `{_flag(name)}` | {shown} | {help_text} |")
    return "\n".join(rows)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``otel-jobs rules``: one per setting."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    parser.add_argument(
        "--format",
        choices=("prometheus", "operator"),
        default="prometheus",
        help="a rule file for `rule_files:`, or a PrometheusRule manifest for the Operator",
    )
    parser.add_argument(
        "--part",
        choices=("alerts", "records", "all"),
        default="alerts",
        help="the alerts, the recording rules they and the dashboards read (a file to load "
        "beside the alerts), or both in one file",
    )
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write here instead of stdout ('-': stdout)"
    )
    for name, default, help_text, parse, metavar in _settings():
        parser.add_argument(
            _flag(name),
            dest=name,
            type=parse,
            default=default,
            metavar=metavar,
            help=help_text + ("" if default is not None else " (default: none)"),
        )
    parser.add_argument(
        "--stall-for",
        type=duration,
        metavar="DURATION",
        help=f"`for` of the stuck-run alerts ({', '.join(STALL_ALERTS)})",
    )
    parser.add_argument(
        "--for",
        dest="for_",
        action="append",
        default=[],
        metavar="ALERT=DURATION",
        help="`for` of one alert (repeatable); alerts: " + ", ".join(default_for()),
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
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(RulesConfig)
        if "help" in f.metadata
    }
    durations: dict[str, str] = {}
    if args.stall_for:
        durations.update(dict.fromkeys(STALL_ALERTS, args.stall_for))
    for alert, value in _pairs(args.for_, "ALERT=DURATION").items():
        if alert not in default_for():
            raise ValueError(f"--for {alert}: unknown alert; known: {', '.join(default_for())}")
        durations[alert] = duration(value)
    return dataclasses.replace(
        RulesConfig(**values),
        for_durations=durations,
        options={name: getattr(args, name) for name in options()},
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
    text = render(config, args.format, args.part)
    if args.part != "records" and config.runbook_url == DEFAULT_RUNBOOK_URL:
        print(
            f"otel-jobs rules: runbook_url is a placeholder ({DEFAULT_RUNBOOK_URL}/<Alert>.md); "
            "pass --runbook-url BASE, where you publish docs/runbooks/",
            file=sys.stderr,
        )
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0
