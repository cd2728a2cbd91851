"""Run the otel-jobs benchmark suite and print one table of figures measured in this run.

    .venv/bin/python -m bench            # full counts (a few minutes)
    .venv/bin/python -m bench --quick    # smoke mode: small counts, seconds
    .venv/bin/python -m bench --only core,httpx --json results.json

Every benchmark module exposes ``run(quick: bool) -> list[dict]`` (rows built with
:func:`bench._timing.row`). Baselines and subjects are measured side by side in the same run,
so the ratio column comes first: on a noisy, shared machine the ratios hold better than the
absolute figures. Method, machine and the latest figures: ``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from importlib import metadata
from typing import Any

# Run order: the cheap in-process ones first, the worker processes after.
BENCHMARKS = (
    "core",
    "otlp",
    "httpx",
    "celery",
    "rq",
    "watchdog",
    "loop",
    "scrape",
    "series",
    "lease",
    "monitor",
    "fleet",
    "startup",
)
PACKAGES = (
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-httpx",
    "opentelemetry-instrumentation-celery",
    "prometheus-client",
    "celery",
    "rq",
    "httpx",
)


def machine() -> dict[str, Any]:
    """The machine and software the figures were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
    }


def celery_comparison(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Celery target: otel-jobs' per-task overhead no larger than the contrib instrumentation's."""

    out = []
    for pool in ("solo", "prefork"):
        by_mode = {
            r["subject"]: r
            for r in rows
            if r["benchmark"].startswith(f"Celery worker, {pool}") and "CPU time" in r["benchmark"]
        }
        out.extend(_against_contrib(by_mode, pool))
    return out


def _against_contrib(by_mode: dict[str, dict[str, Any]], pool: str) -> list[dict[str, Any]]:
    from ._timing import row

    contrib = by_mode.get("contrib")
    out = []
    for mode, target in (("otel-jobs", 1.0), ("otel-jobs (default)", 1.2)):
        ours = by_mode.get(mode)
        if contrib is None or ours is None or contrib["ratio"] is None or ours["ratio"] is None:
            continue
        # Extra time per task from the per-round ratios (robust to rounds of different speeds).
        ours_extra = (ours["ratio"] - 1) * ours["baseline_value"]
        contrib_extra = (contrib["ratio"] - 1) * contrib["baseline_value"]
        overhead = (ours["ratio"] - 1) / (contrib["ratio"] - 1) if contrib["ratio"] > 1 else None
        out.append(
            row(
                f"Celery per-task overhead in CPU time ({pool} pool), otel-jobs vs contrib",
                subject=mode,
                value=ours_extra,
                unit="us/task over none",
                baseline="opentelemetry-instrumentation-celery",
                baseline_value=contrib_extra,
                ratio=overhead,
                target=f"<= {target:g}x contrib's",
                met=None if overhead is None else overhead <= target,
                note=f"per-task ratio to none: {ours['ratio']:.3f}x vs {contrib['ratio']:.3f}x",
            )  # fmt: skip
        )
    return out


def run_all(names: tuple[str, ...], quick: bool) -> tuple[list[dict[str, Any]], list[str]]:
    """Run the named benchmarks; returns their rows and the names of those that failed."""
    rows: list[dict[str, Any]] = []
    failed = []
    for name in names:
        started = time.monotonic()
        print(f"running {name}...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"bench.bench_{name}")
            produced = module.run(quick=quick)
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        for r in produced:
            r.setdefault("module", name)
        rows.extend(produced)
        if name == "celery":
            rows.extend(celery_comparison(produced))
        print(f"  {name}: {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return rows, failed


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, ratio first."""
    lines = [
        "| ratio | target | met | benchmark | subject | figure | baseline | note |",
        "|---:|---|---|---|---|---:|---|---|",
    ]
    for r in rows:
        ratio = f"{r['ratio']:.3f}x" if r.get("ratio") is not None else "-"
        met = {True: "yes", False: "**no**", None: "-"}[r.get("met")]
        baseline = (
            f"{r['baseline']} ({_fmt(r.get('baseline_value'))})" if r.get("baseline") else "-"
        )
        lines.append(
            f"| {ratio} | {r.get('target') or '-'} | {met} | {r['benchmark']} | {r['subject']} "
            f"| {_fmt(r['value'])} {r['unit']} | {baseline} | {r.get('note') or ''} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: small counts")
    parser.add_argument(
        "--only", default=",".join(BENCHMARKS), help=f"comma-separated, from {','.join(BENCHMARKS)}"
    )
    parser.add_argument(
        "--json", metavar="PATH", help="also write the rows and the machine as JSON"
    )
    args = parser.parse_args(argv)
    names = tuple(n.strip() for n in args.only.split(",") if n.strip())
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    info = machine()
    rows, failed = run_all(names, args.quick)
    print(
        f"otel-jobs benchmarks{' (quick: smoke counts, not figures)' if args.quick else ''}: "
        f"{info['cpus']} x {info['cpu']}, Python {info['python']}"
    )
    print(table(rows))
    if failed:
        print(f"FAILED: {', '.join(failed)} (traceback above)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(
                {"quick": args.quick, "machine": info, "rows": rows, "failed": failed}, f, indent=1
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
