"""The ``exit`` policy: a real worker process ends only after its telemetry left it.

The worker is a real subprocess exporting over OTLP/HTTP to a real local receiver (an HTTP
server decoding the OTLP protobuf requests). Its batch span processor and metric reader are
set to export only every ten minutes, so whatever the receiver gets came from the flush the
watchdog does before ending the process. A second test forks a child the way prefork pools do
and reads the stall from the parent's ``/metrics`` after the child is gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import pytest

from otel_jobs.core.watchdog import EXIT_STATUS
from tests.otlp_receiver import OtlpReceiver
from tests.support import scrape
from tests.support.processes import piped
from tests.support.series import runs_finished, stalls_detected

DEADLINE = 90.0


def _span(receiver: OtlpReceiver, name: str) -> dict[str, Any]:
    found = [s.attributes for s in receiver.spans() if s.name == name]
    assert len(found) == 1, (
        f"expected one span {name!r}, received {[s.name for s in receiver.spans()]}"
    )
    return found[0]


def _points(receiver: OtlpReceiver, name: str) -> list[tuple[dict[str, Any], float]]:
    """The points of metric ``name`` in the order they arrived (the last of a series is its value)."""
    return [p for m in receiver.metrics() if m.name == name for p in m.points]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as server:
        yield server


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "CI_"))}
    env.update(extra)
    return env


WORKER = textwrap.dedent(
    """
    import threading, time
    import otel_jobs

    otel_jobs.instrument(prometheus=False, watchdog_interval=0.1)

    @otel_jobs.job(name="exit.bystander", queue="exit")
    def bystander():
        threading.Event().wait()

    @otel_jobs.job(name="exit.stuck", queue="exit", heartbeat_timeout=0.5, on_stall="exit")
    def stuck():
        while True:
            time.sleep(0.05)  # never heartbeats

    threading.Thread(target=bystander, daemon=True).start()
    print("started", flush=True)
    stuck()
    print("not reached", flush=True)
    """
)


def test_exit_ends_the_worker_after_its_telemetry_reached_the_receiver(
    receiver: OtlpReceiver,
) -> None:
    env = _env(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_SERVICE_NAME="exit-test-worker",
        # Nothing is exported on a schedule during the test: only the watchdog's flush sends.
        OTEL_BSP_SCHEDULE_DELAY="600000",
        OTEL_METRIC_EXPORT_INTERVAL="600000",
    )
    proc = subprocess.run(
        [sys.executable, "-c", WORKER], env=env, capture_output=True, text=True, timeout=DEADLINE
    )
    assert proc.returncode == EXIT_STATUS, proc.stderr
    assert "started" in proc.stdout and "not reached" not in proc.stdout
    assert "ending worker process" in proc.stderr and "policy exit" in proc.stderr

    stall = _span(receiver, "exit.stuck stalled")
    assert stall["otel_jobs.stall.policy"] == "exit"
    assert stall["otel_jobs.stall.reason"] == "no_heartbeat"
    assert stall["code.function"] == "stuck"
    stuck = _span(receiver, "exit.stuck")
    assert stuck["job.outcome"] == "timeout"
    assert _span(receiver, "exit.bystander")["job.outcome"] == "cancelled"

    # Cumulative sums: the last point of each series is its value.
    stalls = {
        tuple(sorted(attrs.items())): value
        for attrs, value in _points(receiver, "otel_jobs.stalls.detected")
    }
    assert stalls == {
        (("job_name", "exit.stuck"), ("queue", "exit"), ("reason", "no_heartbeat")): 1.0
    }
    finished = {
        (attrs["job_name"], attrs["outcome"]): value
        for attrs, value in _points(receiver, "otel_jobs.runs.finished")
    }
    assert finished == {("exit.stuck", "timeout"): 1.0, ("exit.bystander", "cancelled"): 1.0}


FORKING_WORKER = textwrap.dedent(
    """
    import os, sys, time
    import otel_jobs

    otel_jobs.instrument(prometheus_port=0, watchdog_interval=0.1)

    @otel_jobs.job(name="exit.forked", queue="exit", heartbeat_timeout=0.5, on_stall="exit")
    def stuck():
        while True:
            time.sleep(0.05)

    print(otel_jobs.metrics_url(), flush=True)
    pid = os.fork()
    if pid == 0:  # the pool child runs the job
        stuck()
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    print("child", os.waitstatus_to_exitcode(status), flush=True)
    sys.stdin.read()  # keep serving /metrics until the test is done
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_exit_in_a_forked_child_leaves_its_metrics_to_the_parent() -> None:
    with piped([sys.executable, "-c", FORKING_WORKER], _env()) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), proc.stderr.read() if proc.stderr else ""
        assert proc.stdout.readline().split() == ["child", str(EXIT_STATUS)]
        samples = scrape(url)
        assert stalls_detected(samples, "exit.forked", "no_heartbeat") == 1
        assert runs_finished(samples, "exit.forked", "timeout") == 1
        # The dead child's in-flight gauges went with it.
        assert samples.total("otel_jobs_runs_in_progress", job_name="exit.forked") == 0
        assert samples.total("otel_jobs_runs_stalled", job_name="exit.forked") == 0
        proc.stdin.close()
        assert proc.wait(timeout=DEADLINE) == 0
