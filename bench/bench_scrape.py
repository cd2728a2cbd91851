"""A ``/metrics`` scrape of a worker that has run 1,000 different jobs.

Each job has finished runs (so its counters and histograms have series) and a few are in
flight (so the derived gauges have values); then the real endpoint is fetched over HTTP on
127.0.0.1, several times, and the median is reported with the size of the exposition. Two
requests: a plain GET (the text format, as curl gets it), and the one Prometheus makes
(OpenMetrics first in ``Accept``, gzip). The baseline is prometheus-client's own exposition of
the same registry, served the same way on a second port (what the endpoint served before
otel-jobs wrote its families itself: ``otel_jobs/core/textformat.py``); the two servers are
fetched in turns.
"""

from __future__ import annotations

import statistics
import time
import urllib.request
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry

import otel_jobs
from otel_jobs.core import agent as agent_mod
from otel_jobs.core.exposition import serve
from otel_jobs.core.multiprocess import MergedCollector

from ._timing import row

TARGET = 0.050
JOB_NAMES = 1000


# What Prometheus 2.x sends (scrape_protocols by default), and curl.
PROMETHEUS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
    "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
}
PLAIN: dict[str, str] = {}


def _fetch(url: str, headers: dict[str, str]) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
        body: bytes = resp.read()
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
        # prometheus-client's exposition of the same registry, served the same way.
        before = CollectorRegistry(auto_describe=False)
        before.register(MergedCollector(agent.share, agent.telemetry.registry))
        reference = serve(before, "127.0.0.1", 0)
        urls = {"otel-jobs": agent.server.url, "prometheus-client": reference.url}
        durations: dict[tuple[str, str], list[float]] = {}
        bodies: dict[str, bytes] = {}
        try:
            for i in range(reps + 1):
                for request, headers in (("plain", PLAIN), ("prometheus", PROMETHEUS)):
                    order = list(urls.items()) if i % 2 else list(reversed(urls.items()))
                    for who, url in order:
                        start = time.perf_counter()
                        body = _fetch(url, headers)
                        if i:  # the first round warms up
                            durations.setdefault((who, request), []).append(
                                time.perf_counter() - start
                            )
                        bodies[request] = body if who == "otel-jobs" else bodies.get(request, body)
        finally:
            reference.stop()
        for run_ in in_flight:
            run_.finish("success")
    finally:
        otel_jobs.uninstrument()
    plain = bodies["plain"]
    samples = sum(1 for line in plain.splitlines() if line and not line.startswith(b"#"))
    rows = []
    for request, subject, note in (
        ("plain", "GET /metrics (text format)", f"{samples:,} samples, {len(plain) / 1e6:.1f} MB"),
        ("prometheus", "GET /metrics as Prometheus asks (OpenMetrics, gzip)",
         f"{len(bodies['prometheus']) / 1e3:.0f} KB gzipped"),
    ):  # fmt: skip
        ours = durations[("otel-jobs", request)]
        theirs = durations[("prometheus-client", request)]
        scrape = statistics.median(ours)
        rows.append(
            row(
                f"/metrics scrape, {names:,} job names",
                subject=subject,
                value=scrape * 1e3,
                unit="ms/scrape",
                baseline="prometheus-client's exposition, same registry",
                baseline_value=statistics.median(theirs) * 1e3,
                ratio=statistics.median(a / b for a, b in zip(ours, theirs, strict=True)),
                target="" if quick else f"< {TARGET * 1e3:g} ms",
                met=None if quick else scrape < TARGET,
                note=note,
            )
        )
    return rows
