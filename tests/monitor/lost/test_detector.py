"""The lease and the detector on a real Redis, with real processes killed by SIGKILL.

A plain ``otel_jobs.job_run`` in a subprocess (framework ``otel_jobs``) keeps its lease through
its watchdog; killed, its lease expires and the detector finds its run: counted once on the
monitor's real ``/metrics``, one ``<job> lost`` span (real SDK, in-memory exporter), one
WARNING; two monitors at once count it once; a renewed lease is never counted; the job's next
run reads what the lost one reached as ``previous_attempt``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import otel_jobs
from otel_jobs.core.lease import KEY_LEASE, KEY_LEASES
from otel_jobs.monitor.lost import Detector, Watched
from otel_jobs.monitor.memory import MemoryCollector

from ..support import Polled, wait_for

REDIS_DB = 8

WORKER = textwrap.dedent(
    """
    import os, sys, time
    import otel_jobs

    otel_jobs.instrument(
        lease_url=os.environ["LEASE_URL"], lease_ttl=2, prometheus=False, frameworks=[],
    )
    with otel_jobs.job_run("reports.build", queue="reports", job_id=sys.argv[1]):
        otel_jobs.heartbeat(progress=0.4, page=7)
        print("running", flush=True)
        time.sleep(3600)
    """
)


# A run tracked as the framework integrations track theirs, started right after a watchdog tick
# (2 s apart) in a process whose lease thread runs: it prints the ticks seen at its start and
# once the lease lists it, then waits to be killed.
EARLY_WORKER = textwrap.dedent(
    """
    import os, sys, time
    import otel_jobs
    from otel_jobs.core import agent as agent_mod

    otel_jobs.instrument(
        lease_url=os.environ["LEASE_URL"], lease_ttl=4, watchdog_interval=2, prometheus=False,
        frameworks=[],
    )
    agent = agent_mod.current()

    def tracked(job_id):
        run = otel_jobs.job_run("reports.build", queue="reports", job_id=job_id)
        agent.lease.track(run.__enter__())
        return run

    def wait(check):
        while not check():
            time.sleep(0.005)

    first = tracked("warm-" + sys.argv[1])  # the lease thread starts at the tick that sees it
    wait(lambda: agent.lease.written)
    first.__exit__(None, None, None)
    wait(lambda: not agent.lease.written)  # taken back: the lease thread has nothing due
    ticks = agent.watchdog.ticks
    wait(lambda: agent.watchdog.ticks > ticks)
    ticks = agent.watchdog.ticks
    run = tracked(sys.argv[1])
    key = otel_jobs.current_run().key
    wait(lambda: key in agent.lease.written)
    print("running", ticks, agent.watchdog.ticks, flush=True)
    time.sleep(3600)
    """
)


class PlainDetector(Detector):
    """The detector of ``@otel_jobs.job`` / ``job_run`` runs (framework ``otel_jobs``)."""

    framework = "otel_jobs"


@pytest.fixture
def spans() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def detector(url: str, spans: InMemorySpanExporter) -> PlainDetector:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return PlainDetector(redis.Redis.from_url(url), tracer=provider.get_tracer("test"))


def leases(url: str) -> dict[str, dict[str, Any]]:
    client: Any = redis.Redis.from_url(url, decode_responses=True)
    found = {}
    for lease in client.zrange(KEY_LEASES, 0, -1):
        found[lease] = {k: json.loads(v) for k, v in client.hgetall(KEY_LEASE + lease).items()}
    client.close()
    return found


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[Any]:
    started: list[subprocess.Popen[bytes]] = []

    def start(job_id: str) -> subprocess.Popen[bytes]:
        script = tmp_path / "worker.py"
        script.write_text(WORKER)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["LEASE_URL"] = redis_url
        proc = subprocess.Popen(
            [sys.executable, str(script), job_id],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        started.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"running\n"
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def listed(url: str, job_id: str) -> dict[str, Any] | None:
    for content in leases(url).values():
        for name, entry in content.items():
            if name.startswith("run:") and entry["job_id"] == job_id:
                return entry
    return None


def test_a_run_in_flight_is_in_its_lease_and_taken_out_when_it_ends(
    instrumented: Any, redis_url: str
) -> None:
    agent = instrumented(lease_url=redis_url, lease_ttl=2, frameworks=[])
    with otel_jobs.job_run("reports.build", queue="reports", job_id="in-flight-1"):
        otel_jobs.heartbeat(progress=0.25, page=3)
        entry = wait_for("the run in the lease", lambda: listed(redis_url, "in-flight-1"))
        assert entry["name"] == "reports.build" and entry["queue"] == "reports"
        assert entry["pid"] == os.getpid() and entry["framework"] == "otel_jobs"
        assert entry["checkpoint"]["progress"] == 0.25
        assert entry["checkpoint"]["details"] == {"page": 3}
        otel_jobs.heartbeat(progress=0.5, page=4)
        wait_for(
            "the new checkpoint",
            lambda: (
                (listed(redis_url, "in-flight-1") or {})["checkpoint"]["details"] == {"page": 4}
            ),
        )
    wait_for("the lease taken back once no run is in flight", lambda: leases(redis_url) == {})
    assert agent.lease.writes >= 3


def test_checkpoint_details_past_the_cap_are_left_out_and_the_progress_kept(
    instrumented: Any, redis_url: str
) -> None:
    instrumented(lease_url=redis_url, lease_ttl=2, frameworks=[])
    with otel_jobs.job_run("big.details", job_id="big-1"):
        otel_jobs.heartbeat(progress=0.9, blob="x" * 5000)
        entry = wait_for("the run in the lease", lambda: listed(redis_url, "big-1"))
    assert entry["checkpoint"]["progress"] == 0.9
    assert "details" not in entry["checkpoint"]
    assert entry["checkpoint"]["details_left_out"] > 5000


def test_a_killed_worker_s_run_is_counted_lost_once_with_a_span_and_a_warning(
    redis_url: str,
    worker: Any,
    spans: InMemorySpanExporter,
    caplog: pytest.LogCaptureFixture,
    instrumented: Any,
) -> None:
    proc = worker("lost-1")
    entry = wait_for("the worker's lease", lambda: listed(redis_url, "lost-1"))
    found = detector(redis_url, spans)
    with Polled([Watched(MemoryCollector({}, framework="otel_jobs"), found)]) as monitor:
        samples = monitor.poll()  # the worker renews its lease: nothing lost
        assert samples.find("otel_jobs_runs_lost_total") == []
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        with caplog.at_level(logging.WARNING, logger="otel_jobs.monitor"):
            wait_for(
                "the run counted lost",
                lambda: (
                    monitor.poll().find(
                        "otel_jobs_runs_lost_total",
                        framework="otel_jobs",
                        job_name="reports.build",
                        queue="reports",
                    )
                    == [1.0]
                ),
            )
            for _ in range(3):  # later polls never count it again
                assert monitor.poll().total("otel_jobs_runs_lost_total") == 1.0
    lost = [s for s in spans.get_finished_spans() if s.name == "reports.build lost"]
    assert len(lost) == 1
    attrs = lost[0].attributes or {}
    assert attrs["job.id"] == "lost-1" and attrs["otel_jobs.worker.pid"] == proc.pid
    assert attrs["job.progress"] == 0.4
    assert json.loads(str(attrs["otel_jobs.checkpoint.details"])) == {"page": 7}
    assert attrs["otel_jobs.lost.action"] == "counted"
    assert lost[0].start_time == int(entry["started"] * 1e9)
    records = [r for r in caplog.records if getattr(r, "job_id", None) == "lost-1"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "page" in records[0].getMessage() and str(proc.pid) in records[0].getMessage()
    assert leases(redis_url) == {}  # the lease is gone once its run is handled

    # The job's next run reads what the lost one reached.
    instrumented(lease_url=redis_url, frameworks=[])
    with otel_jobs.job_run("reports.build", queue="reports", job_id="lost-1") as run:
        previous = run.previous_attempt  # type: ignore[union-attr]
    assert previous is not None
    assert previous.progress == 0.4 and previous.details == {"page": 7}
    assert previous.pid == proc.pid and previous.lost == 1
    with otel_jobs.job_run("reports.build", job_id="never-lost") as run:
        assert run.previous_attempt is None  # type: ignore[union-attr]


def test_a_run_killed_right_after_its_start_is_in_its_lease_and_counted_lost(
    redis_url: str, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """An integration's ``track()`` wakes the lease thread: a run that starts right after a
    watchdog tick is in its lease before the next tick (2 s later), so killed then it is found."""
    script = tmp_path / "early.py"
    script.write_text(EARLY_WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["LEASE_URL"] = redis_url
    proc = subprocess.Popen(
        [sys.executable, str(script), "early-1"], env=env, stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        word, at_start, when_listed = proc.stdout.readline().split()
        assert word == b"running"
        assert when_listed == at_start  # written at its start, not at the next tick
        assert listed(redis_url, "early-1") is not None
    finally:
        proc.kill()
        proc.wait(timeout=30)
    found = detector(redis_url, spans)
    with Polled([Watched(MemoryCollector({}, framework="otel_jobs"), found)]) as monitor:
        wait_for(
            "the run counted lost",
            lambda: (
                monitor.poll().total("otel_jobs_runs_lost_total", job_name="reports.build") == 1.0
            ),
        )
    (lost,) = [s for s in spans.get_finished_spans() if s.name == "reports.build lost"]
    assert (lost.attributes or {})["job.id"] == "early-1"


def test_two_monitors_at_once_count_a_lost_run_once(
    redis_url: str, worker: Any, spans: InMemorySpanExporter
) -> None:
    procs = [worker(f"twice-{i}") for i in range(4)]
    for i in range(4):  # killed before its first lease, a run would not be seen (module docs)
        wait_for("the worker's lease", functools.partial(listed, redis_url, f"twice-{i}"))
    for proc in procs:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    first, second = detector(redis_url, spans), detector(redis_url, spans)
    with Polled([Watched(MemoryCollector({}, framework="otel_jobs"), first)]) as one:
        with Polled([Watched(MemoryCollector({}, framework="otel_jobs"), second)]) as two:

            def both() -> float:
                threads = [threading.Thread(target=m.poll) for m in (one, two)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                return one.scrape().total("otel_jobs_runs_lost_total") + two.scrape().total(
                    "otel_jobs_runs_lost_total"
                )

            wait_for("four runs counted lost", lambda: both() >= 4)
            assert both() == 4
    assert len([s for s in spans.get_finished_spans() if s.name == "reports.build lost"]) == 4


def test_a_renewed_lease_is_never_counted(instrumented: Any, redis_url: str) -> None:
    instrumented(lease_url=redis_url, lease_ttl=2, frameworks=[])
    spans = InMemorySpanExporter()
    found = detector(redis_url, spans)
    with Polled([Watched(MemoryCollector({}, framework="otel_jobs"), found)]) as monitor:
        with otel_jobs.job_run("reports.build", job_id="alive-1"):
            wait_for("the run in the lease", lambda: listed(redis_url, "alive-1"))
            client = redis.Redis.from_url(redis_url)
            scores = {client.zscore(KEY_LEASES, next(iter(leases(redis_url))))}

            def renewed_three_times() -> bool:  # each a third of the TTL; polled all along
                assert monitor.poll().find("otel_jobs_runs_lost_total") == []
                scores.add(client.zscore(KEY_LEASES, next(iter(leases(redis_url)))))
                return len(scores) > 3

            wait_for("three renewals", renewed_three_times)
            client.close()
    assert spans.get_finished_spans() == ()


def test_no_lease_with_the_lease_disabled(instrumented: Any, redis_url: str) -> None:
    agent = instrumented(lease_url=redis_url, lease=False, lease_ttl=2, frameworks=[])
    with otel_jobs.job_run("reports.build", job_id="off-1"):
        start = agent.watchdog.ticks
        wait_for("three ticks", lambda: agent.watchdog.ticks >= start + 3)
    assert leases(redis_url) == {} and agent.lease.writes == 0
