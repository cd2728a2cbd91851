"""A ``/metrics`` scrape of a worker that has run 1,000 different jobs.

Each job has finished runs (so its counters and histograms have series) and a few are in
flight (so the derived gauges have values); then the real endpoint is fetched over HTTP on
127.0.0.1, several times, and the median is reported with the size of the exposition.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from typing import Any

from opentelemetry import trace

import otel_jobs
from otel_jobs.core import agent as agent_mod

from ._timing import row

TARGET = 0.050
JOB_NAMES = 1000


def _fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        body: bytes = response.read()
        return body


def run(quick: bool = False) -> list[dict[str, Any]]:
    names, reps = (50, 3) if quick else (JOB_NAMES, 15)
    otel_jobs.instrument(
        tracer_provider=trace.NoOpTracerProvider(), prometheus_port=0, watchdog=False,
        frameworks=[], outbound=[], max_job_names=max(names, 1000),
    )  # fmt: skip
    try:
        agent = agent_mod.current()
        assert agent is not None and agent.server is not None
        for i in range(names):
            agent.start_run(f"bench.job{i:04d}", queue="bench").finish("success")
        in_flight = [
            agent.start_run(f"bench.job{i:04d}", queue="bench") for i in range(0, names, 10)
        ]
        url = agent.server.url
        body = _fetch(url)  # warm
        durations = []
        for _ in range(reps):
            start = time.perf_counter()
            body = _fetch(url)
            durations.append(time.perf_counter() - start)
        for run_ in in_flight:
            run_.finish("success")
    finally:
        otel_jobs.uninstrument()
    scrape = statistics.median(durations)
    samples = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return [
        row(
            f"/metrics scrape, {names:,} job names",
            subject="GET /metrics",
            value=scrape * 1e3,
            unit="ms/scrape",
            target="" if quick else f"< {TARGET * 1e3:g} ms",
            met=None if quick else scrape < TARGET,
            note=f"{samples:,} samples, {len(body) / 1e6:.1f} MB",
        )  # fmt: skip
    ]
