"""Smoke test of the benchmark suite: every benchmark runs in quick mode and reports figures.

Never a timed assertion: the figures themselves are checked for being figures (finite,
positive), not for their size. The full suite is ``python -m bench`` (docs/performance.md).
"""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bench.run import BENCHMARKS, celery_comparison, table
from tests.support import require_redis

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_runs_and_reports_figures(
    name: str, span_exporter: InMemorySpanExporter
) -> None:
    # span_exporter: the suite's global SDK pipeline is set before the httpx benchmark looks
    # for one, so that the benchmark never installs its own global provider in this process.
    if name in ("celery", "rq", "lease"):
        require_redis()
    if name == "monitor":  # a redis-server of its own, loaded with its queues
        from tests.monitor.support import require_binary

        require_binary("redis-server", "redis-server")
    module = importlib.import_module(f"bench.bench_{name}")
    rows = module.run(quick=True)
    assert rows, f"bench_{name} reported nothing"
    for row in rows:
        assert row["benchmark"] and row["subject"] and row["unit"], row
        assert isinstance(row["value"], float) and math.isfinite(row["value"]), row
        assert row["value"] > 0, row
        if row["baseline"] is not None:
            assert row["baseline_value"] is not None and row["baseline_value"] > 0, row
        if row["ratio"] is not None:
            assert math.isfinite(row["ratio"]) and row["ratio"] > 0, row
    rendered = table(rows)
    assert all(row["benchmark"] in rendered for row in rows)
    if name == "celery":
        compared = celery_comparison(rows)
        assert {r["subject"] for r in compared} == {"otel-jobs", "otel-jobs (default)"}


def test_the_command_prints_one_table() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "core"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("otel-jobs benchmarks")
    assert lines[1].startswith("| ratio | target | met |")
    assert any("@job run, empty function" in line for line in lines[3:])
    assert any("heartbeat() inside a run" in line for line in lines[3:])


def test_an_unknown_benchmark_is_refused() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "nope"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown benchmark(s) nope" in done.stderr


def test_the_series_budget_holds() -> None:
    """A job whose runs all succeed costs at most 30 series per worker (counts, not timings)."""
    from bench import bench_series

    found = bench_series.measure(runs=2)
    assert found["success"] <= bench_series.BUDGET
    assert found["success_no_wait"] < found["success"]
    assert set(found["forked"].values()) == {found["success"]}
    # Each further outcome adds its duration histogram (and retry/cancelled their counter).
    assert found["further"]["failure"] == found["further"]["timeout"]
    assert found["further"]["retry"] == found["further"]["failure"] + 1
    assert found["further"]["stall verdict"] == 3
