"""The series budget: how many Prometheus series one worker exposes per ``(job_name, queue)``.

What a fleet costs Prometheus is the number of series it stores: workers x job names x the
series each worker exposes per job. This benchmark counts them on the real ``/metrics``
endpoint (parsed with prometheus-client's parser), with the default settings, for:

* a job whose runs all succeed, with and without a queue wait (the budget: at most 30);
* each further outcome (failure, timeout, retry, cancelled) and a stall verdict: the series
  the first such run adds;
* a worker whose runs happen in 1, 2 or 4 forked children (a prefork pool): the parent's one
  endpoint serves the children's series merged, so the count per worker must not grow.

Series, not timings: the quick mode only runs fewer jobs; every figure is exact.
"""

from __future__ import annotations

import multiprocessing
import time
import urllib.request
from typing import Any

from opentelemetry import trace
from prometheus_client.parser import text_string_to_metric_families

import otel_jobs
from otel_jobs.core import agent as agent_mod

from ._timing import row

BUDGET = 30
QUEUE = "bench"
_fork = multiprocessing.get_context("fork")


def series_by_job(url: str) -> dict[tuple[str, str], int]:
    """Series (samples) of the scrape at ``url``, per ``(job_name, queue)``."""
    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode("utf-8")
    counts: dict[tuple[str, str], int] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if "job_name" in labels and "queue" in labels:
                key = (labels["job_name"], labels["queue"])
                counts[key] = counts.get(key, 0) + 1
    return counts


def _run(name: str, outcome: str = "success", *, waited: bool = True) -> None:
    agent = agent_mod.current()
    assert agent is not None
    enqueued_at = time.time() - 0.5 if waited else None
    agent.start_run(name, queue=QUEUE, enqueued_at=enqueued_at).finish(outcome)


def _children_run(name: str, runs: int, release: Any) -> None:
    # Like a prefork pool's child: it stays alive (its gauges are served) until released.
    for _ in range(runs):
        _run(name)
    release.wait(60)


def _started(url: str, name: str) -> float:
    with urllib.request.urlopen(url, timeout=30) as resp:
        text = resp.read().decode("utf-8")
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "otel_jobs_runs_started_total" and s.labels.get("job_name") == name
    )


def _stall(name: str) -> None:
    """One run that stops heartbeating until the watchdog gives it a verdict, then ends."""
    agent = agent_mod.current()
    assert agent is not None and agent.watchdog is not None
    run = agent.start_run(name, queue=QUEUE, heartbeat_timeout=0.05)
    deadline = time.monotonic() + 30
    while run.verdict is None:
        if time.monotonic() > deadline:
            raise RuntimeError("the watchdog gave no stall verdict within 30 s")
        time.sleep(0.02)
    run.finish("success")


def measure(runs: int) -> dict[str, Any]:
    """Every count of the module docstring, on one instrumented process (and its children)."""
    otel_jobs.instrument(
        tracer_provider=trace.NoOpTracerProvider(), prometheus_port=0, watchdog_interval=0.02,
        frameworks=[], outbound=[],
    )  # fmt: skip
    try:
        url = otel_jobs.metrics_url()
        assert url is not None
        out: dict[str, Any] = {}
        for _ in range(runs):
            _run("bench.success")
            _run("bench.success_no_wait", waited=False)
        counts = series_by_job(url)
        out["success"] = counts[("bench.success", QUEUE)]
        out["success_no_wait"] = counts[("bench.success_no_wait", QUEUE)]
        further: dict[str, int] = {}
        for outcome in ("failure", "timeout", "retry", "cancelled"):
            name = f"bench.then_{outcome}"
            for _ in range(runs):
                _run(name)
            before = series_by_job(url)[(name, QUEUE)]
            _run(name, outcome)
            further[outcome] = series_by_job(url)[(name, QUEUE)] - before
        name = "bench.then_stall"
        _run(name)
        before = series_by_job(url)[(name, QUEUE)]
        _stall(name)
        further["stall verdict"] = series_by_job(url)[(name, QUEUE)] - before
        out["further"] = further
        forked: dict[int, int] = {}
        for processes in (1, 2, 4):
            name = f"bench.forked_{processes}"
            release = _fork.Event()
            children = [
                _fork.Process(target=_children_run, args=(name, runs, release))
                for _ in range(processes)
            ]
            for child in children:
                child.start()
            try:
                # The children's snapshots reach the endpoint on their next watchdog tick.
                deadline = time.monotonic() + 60
                while _started(url, name) < processes * runs:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the children's runs never reached the endpoint")
                    time.sleep(0.05)
                forked[processes] = series_by_job(url)[(name, QUEUE)]
            finally:
                release.set()
                for child in children:
                    child.join(60)
            if any(child.exitcode != 0 for child in children):
                raise RuntimeError("a forked child failed")
        out["forked"] = forked
        return out
    finally:
        otel_jobs.uninstrument()


def run(quick: bool = False) -> list[dict[str, Any]]:
    found = measure(runs=3 if quick else 50)
    title = "Series per (job_name, queue) per worker"
    rows = [
        row(
            title, subject="runs all succeed, with a queue wait", value=float(found["success"]),
            unit="series", target=f"<= {BUDGET}", met=found["success"] <= BUDGET,
            note="default settings: 8 duration and 4 queue-wait buckets",
        ),
        row(
            title, subject="runs all succeed, no queue wait",
            value=float(found["success_no_wait"]), unit="series", target=f"<= {BUDGET}",
            met=found["success_no_wait"] <= BUDGET,
        ),
    ]  # fmt: skip
    for what, added in found["further"].items():
        rows.append(
            row(
                "Series added by a job's first run of another kind",
                subject=what,
                value=float(added),
                unit="series",
                note="over the all-success job",
            )
        )
    for processes, count in found["forked"].items():
        rows.append(
            row(
                title,
                subject=f"runs all succeed, in {processes} forked child(ren)",
                value=float(count),
                unit="series",
                target=f"= {found['success']} (one process)",
                met=count == found["success"],
                note="merged by the parent's endpoint",
            )
        )
    return rows
