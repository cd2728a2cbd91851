"""Check a Celery or RQ configuration for known queue mistakes, without starting a worker.

>>> otel-jobs doctor --celery-app proj.celery:app
>>> otel-jobs doctor --rq-redis-url redis://127.0.0.1:6379/0
>>> otel-jobs doctor --celery-app proj.celery:app --rq-redis-url redis://127.0.0.1:6379/0

Prints the same findings a worker reports at start-up (a WARNING each, and
``otel_jobs_config_finding{framework, finding}`` on ``/metrics``), one per line as
``framework  finding  message``:

* ``--celery-app module:attribute`` imports the module (and the app's task modules, as a worker
  does, from the current directory) and checks the app's configuration and registered tasks; it
  connects to no broker. The attribute may be omitted when the module has an ``app`` or
  ``celery`` attribute. If the module calls ``otel_jobs.instrument()``, doctor keeps it from
  serving ``/metrics`` and from starting a watchdog.
* ``--rq-redis-url URL`` connects to that Redis and checks the RQ queues and the jobs it holds.

Exit status: 0 when nothing was found, 1 when there are findings, 2 when a configuration could
not be read (a module that does not import, a Redis that does not answer) or nothing to check was
given. ``--json`` prints the findings as a JSON list instead.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any

from .integrations.base import Finding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``otel-jobs doctor``."""
    parser.add_argument(
        "--celery-app",
        metavar="MODULE:APP",
        help="the Celery app to check, as for `celery -A` (e.g. proj.celery:app)",
    )
    parser.add_argument(
        "--rq-redis-url",
        metavar="URL",
        help="the Redis holding the RQ queues to check (e.g. redis://127.0.0.1:6379/0)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")


def load_celery_app(spec: str) -> Any:
    """Import ``module:attribute`` (or ``module``, whose ``app``/``celery`` attribute is taken).

    >>> app = load_celery_app("proj.celery:app")
    """
    # `celery -A` finds modules relative to the current directory; so does doctor.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    # An app module that calls otel_jobs.instrument() must not serve /metrics (a running worker
    # may hold the port) or start a watchdog in this short-lived process.
    os.environ.setdefault("OTEL_JOBS_PROMETHEUS_ENABLED", "false")
    os.environ.setdefault("OTEL_JOBS_WATCHDOG_ENABLED", "false")
    module_name, _, attribute = spec.partition(":")
    module = importlib.import_module(module_name)
    if attribute:
        app: Any = module
        for part in attribute.split("."):
            app = getattr(app, part)
        return app
    for name in ("app", "celery"):
        found = getattr(module, name, None)
        if found is not None and hasattr(found, "conf") and hasattr(found, "tasks"):
            return found
    raise AttributeError(f"module {module_name} has no Celery app named `app` or `celery`")


def celery_findings(spec: str) -> list[Finding]:
    """The audit findings of the Celery app named by ``spec``."""
    from .integrations.celery import audit

    return audit(load_celery_app(spec))


def rq_findings(redis_url: str) -> list[Finding] | None:
    """The RQ audit's findings, or None when this installation has no RQ audit."""
    try:
        from .integrations import rq as rq_integration
    except ImportError:  # RQ (or its adapter) not installed
        return None
    audit = getattr(rq_integration, "audit", None)
    if audit is None:
        return None
    found: list[Finding] = audit(redis_url)
    return found


def run(args: argparse.Namespace) -> int:
    """Run the checks asked for; print the findings; return the exit status."""
    if not args.celery_app and not args.rq_redis_url:
        print(
            "otel-jobs doctor: nothing to check; give --celery-app MODULE:APP and/or "
            "--rq-redis-url URL",
            file=sys.stderr,
        )
        return 2
    findings: list[Finding] = []
    unreadable = False
    if args.celery_app:
        try:
            findings.extend(celery_findings(args.celery_app))
        except Exception as exc:
            print(
                f"otel-jobs doctor: cannot load the Celery app {args.celery_app!r}: "
                f"{type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            unreadable = True
    if args.rq_redis_url:
        try:
            found = rq_findings(args.rq_redis_url)
        except Exception as exc:
            print(
                f"otel-jobs doctor: cannot check RQ at {args.rq_redis_url}: "
                f"{type(exc).__name__}: {exc}",
                file=sys.stderr,
            )
            unreadable = True
        else:
            if found is None:
                print(
                    "otel-jobs doctor: the RQ check is not available here (install otel-jobs[rq])",
                    file=sys.stderr,
                )
                unreadable = True
            else:
                findings.extend(found)
    if args.json:
        print(json.dumps([f.__dict__ for f in findings], indent=2))
    else:
        for f in findings:
            print(f"{f.framework:<8} {f.finding:<40} {f.message}")
        if not findings and not unreadable:
            print("otel-jobs doctor: no known queue configuration mistake found")
    if unreadable:
        return 2
    return 1 if findings else 0
