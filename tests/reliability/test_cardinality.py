"""Cardinality: label values past their cap become ``__overflow__``, and nothing grows with them.

100,000 runs, each of a job with a name never seen before (what a job name built from an id
does), through the public ``job_run``: past ``max_job_names`` every run is counted under
``job_name="__overflow__"`` and in ``otel_jobs_label_overflow_total{label="job_name"}``; the
memory traced and the ``/metrics`` text are the same size after 10,000 such names as after
100,000. The same holds for the ``host`` and ``call_site`` labels of outbound calls.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from typing import Any

from opentelemetry.trace import NoOpTracerProvider

import otel_jobs
from otel_jobs.core.config import OVERFLOW_VALUE
from tests.support import Samples, scrape_text

NAMES = 100_000
CAP = 50


def _series(samples: Samples) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.name, tuple(sorted(s.labels.items()))) for s in samples.samples}


def test_100k_distinct_job_names_keep_memory_and_scrape_bounded(
    instrumented: Callable[..., Any], record_property: Callable[[str, object], None]
) -> None:
    # No spans: an exporter keeping 100,000 spans would be what the memory measures.
    agent = instrumented(
        max_job_names=CAP, max_queues=3, watchdog=False, tracer_provider=NoOpTracerProvider()
    )
    url = otel_jobs.metrics_url()
    assert url is not None

    def runs(start: int, stop: int) -> None:
        for i in range(start, stop):
            with otel_jobs.job_run(f"invoice.{i}", queue=f"q{i % 5}"):
                pass

    runs(0, 10_000)  # caps full, every series built
    text_before = scrape_text(url)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        runs(10_000, NAMES)
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    text_after = scrape_text(url)
    record_property("memory_growth_bytes", growth)
    record_property("scrape_bytes", len(text_after))
    print(
        f"\n90,000 more names: memory +{growth} B, scrape {len(text_before)} -> {len(text_after)} B"
    )

    after = Samples(text_after)
    # The same series before and after: only their values moved.
    assert _series(Samples(text_before)) == _series(after)
    names = {s.labels["job_name"] for s in after.samples if "job_name" in s.labels}
    assert len(names) == CAP + 1 and OVERFLOW_VALUE in names
    queues = {s.labels["queue"] for s in after.samples if "queue" in s.labels}
    assert len(queues) == 3 + 1 and OVERFLOW_VALUE in queues
    # Every run counted once, whatever label it ended up under.
    assert after.total("otel_jobs_runs_started_total") == NAMES
    assert after.total("otel_jobs_runs_finished_total") == NAMES
    assert after.value("otel_jobs_label_overflow_total", label="job_name") == NAMES - CAP
    assert after.total("otel_jobs_runs_started_total", job_name=OVERFLOW_VALUE) == NAMES - CAP
    # 90,000 names kept anywhere (a cache, a set) would take several MB; an overflowed run
    # leaves nothing behind.
    assert growth < 1_000_000, growth
    assert len(agent.telemetry.all_series()) <= (CAP + 1) * (3 + 1)


def test_hosts_and_call_sites_overflow_into_one_value(instrumented: Callable[..., Any]) -> None:
    agent = instrumented(max_hosts=10, max_call_sites=20, watchdog=False)
    for i in range(5_000):
        agent.telemetry.record_no_timeout("requests", f"h{i}.example", f"app.jobs:fetch:{i}")
    url = otel_jobs.metrics_url()
    assert url is not None
    samples = Samples(scrape_text(url))
    found = [
        s for s in samples.samples if s.name == "otel_jobs_outbound_calls_without_timeout_total"
    ]
    assert len({s.labels["host"] for s in found}) == 10 + 1
    assert len({s.labels["call_site"] for s in found}) <= 20 + 1
    assert sum(s.value for s in found) == 5_000
    assert samples.value("otel_jobs_label_overflow_total", label="host") == 5_000 - 10
    assert samples.value("otel_jobs_label_overflow_total", label="call_site") == 5_000 - 20
