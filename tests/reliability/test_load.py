"""Concurrency and load: every run counted exactly once while /metrics is scraped throughout.

1,000 threads run short jobs that heartbeat, then 10,000 asyncio runs are in flight at once in
one loop, with the watchdog ticking every 50 ms. Meanwhile a scraper reads ``/metrics`` at a
steady rate; every scrape must be answered and parse with prometheus-client's parser, and in
each one no job shows more runs in flight than started. Afterwards, for every job,
``started == finished + in progress`` exactly and equals the runs made, and each run has one
span. Sized to take seconds on two busy cores.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

import otel_jobs
from tests.support import Samples, scrape_text

THREADS, RUNS_PER_THREAD, THREAD_JOBS = 1_000, 5, 10
ASYNC_RUNS, ASYNC_JOBS = 10_000, 10


class Scraper:
    """Scrapes ``url`` every ``interval`` seconds in a thread; keeps what went wrong."""

    def __init__(self, url: str, interval: float = 0.05) -> None:
        self.url = url
        self.interval = interval
        self.answered = 0
        self.problems: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                text = scrape_text(self.url, timeout=30)
                families = list(text_string_to_metric_families(text))
                self.answered += 1
                self._check(Samples(text), len(families))
            except Exception as exc:  # every failure is a finding, reported by the test
                self.problems.append(repr(exc))
            self._stop.wait(self.interval)

    def _check(self, samples: Samples, families: int) -> None:
        if families < 10:
            self.problems.append(f"only {families} metric families")
        # One scrape reads the instruments one after the other while runs go on, so only what
        # the core orders holds within it: the runs in flight are derived first, and each had
        # its start counted before it was in flight.
        started: dict[tuple[str, str], float] = {}
        in_progress: dict[tuple[str, str], float] = {}
        for s in samples.samples:
            key = (s.labels.get("job_name", ""), s.labels.get("queue", ""))
            if s.name == "otel_jobs_runs_started_total":
                started[key] = s.value
            elif s.name == "otel_jobs_runs_in_progress":
                in_progress[key] = s.value
        for key, value in in_progress.items():
            if value > started.get(key, 0.0):
                self.problems.append(f"{key}: in progress {value} > started {started.get(key)}")

    @contextmanager
    def running(self) -> Iterator[Scraper]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(60)


def _assert_exact(samples: Samples, job: str, queue: str, runs: int) -> None:
    started = samples.value("otel_jobs_runs_started_total", job_name=job, queue=queue)
    finished = samples.total("otel_jobs_runs_finished_total", job_name=job, queue=queue)
    in_progress = samples.value("otel_jobs_runs_in_progress", job_name=job, queue=queue)
    assert started == finished + in_progress == runs, (job, started, finished, in_progress)
    assert in_progress == 0


def test_1000_threads_and_10000_asyncio_runs_are_each_counted_once(
    instrumented: Callable[..., Any],
    span_exporter: InMemorySpanExporter,
    record_property: Callable[[str, object], None],
) -> None:
    agent = instrumented(watchdog_interval=0.05)
    url = otel_jobs.metrics_url()
    assert url is not None
    failures: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def worker(n: int) -> None:
        try:
            start.wait(120)
            for i in range(RUNS_PER_THREAD):
                job = f"load.thread.{(n + i) % THREAD_JOBS}"
                with otel_jobs.job_run(job, queue="load", heartbeat_timeout=60):
                    otel_jobs.heartbeat(progress=0.5, item=i)
                    time.sleep(0.001)
                    otel_jobs.heartbeat(progress=1.0)
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    async def one(i: int, gate: asyncio.Event) -> int:
        async with otel_jobs.job_run(f"load.async.{i % ASYNC_JOBS}", queue="aload"):
            otel_jobs.heartbeat(progress=0.1)
            await gate.wait()  # all 10,000 in flight together
            await asyncio.sleep(0)
            otel_jobs.heartbeat(progress=1.0)
        return i

    async def all_async() -> list[int]:
        gate = asyncio.Event()
        tasks = [asyncio.create_task(one(i, gate)) for i in range(ASYNC_RUNS)]
        while len(agent.runs()) < ASYNC_RUNS:
            await asyncio.sleep(0.01)
        gate.set()
        return await asyncio.gather(*tasks)

    began = time.monotonic()
    with Scraper(url).running() as scraper:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads)
        done = asyncio.run(all_async())
    elapsed = time.monotonic() - began
    record_property("load_seconds", round(elapsed, 1))
    record_property("scrapes", scraper.answered)
    print(f"\nload: {elapsed:.1f}s, {scraper.answered} scrapes answered during it")

    assert failures == []
    assert sorted(done) == list(range(ASYNC_RUNS))
    assert scraper.problems == []
    assert scraper.answered >= 3  # scraped all along, not only before or after

    final = Samples(scrape_text(url))
    per_thread_job = THREADS * RUNS_PER_THREAD // THREAD_JOBS
    for j in range(THREAD_JOBS):
        _assert_exact(final, f"load.thread.{j}", "load", per_thread_job)
    for j in range(ASYNC_JOBS):
        _assert_exact(final, f"load.async.{j}", "aload", ASYNC_RUNS // ASYNC_JOBS)
    assert final.total("otel_jobs_runs_finished_total", outcome="success") == (
        THREADS * RUNS_PER_THREAD + ASYNC_RUNS
    )
    spans = span_exporter.get_finished_spans()
    assert len([s for s in spans if s.name.startswith("load.thread.")]) == THREADS * RUNS_PER_THREAD
    assert len([s for s in spans if s.name.startswith("load.async.")]) == ASYNC_RUNS
    assert len({s.context.span_id for s in spans}) == len(spans)
