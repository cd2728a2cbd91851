"""The ``otel-jobs`` command (also ``python -m otel_jobs``).

Subcommands, each in its own module exposing ``add_arguments(parser)`` and ``run(args)``:

* ``otel-jobs demo``: an in-process worker running sample jobs, healthy and stuck, with a live table;
* ``otel-jobs rules``: render the Prometheus alert rules with your selectors and thresholds;
* ``otel-jobs doctor``: check a Celery or RQ configuration for known queue mistakes;
* ``otel-jobs monitor``: a long-running process that watches the queues on the brokers.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence

COMMANDS = {
    "demo": ("otel_jobs.demo", "run sample jobs, healthy and stuck, and watch them live"),
    "rules": ("otel_jobs.rules", "render the Prometheus alert rules"),
    "doctor": ("otel_jobs.doctor", "check a Celery or RQ configuration for known queue mistakes"),
    "monitor": (
        "otel_jobs.monitor.command",
        "watch the queues on the brokers: backlog and oldest job",
    ),
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="otel-jobs", description="Make stuck background jobs impossible to miss."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    modules = {}
    for name, (module_name, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        command = sub.add_parser(
            name, help=help_text, description=(module.__doc__ or help_text).strip().splitlines()[0]
        )
        module.add_arguments(command)
        modules[name] = module
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(modules[args.command].run(args) or 0)
