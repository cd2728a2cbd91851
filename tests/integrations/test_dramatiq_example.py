"""examples/dramatiq/ does what its README says: its launcher and two worker processes on the real
Redis, its enqueue script, the stuck actor seen stalled on /metrics and its diagnosis logged."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from tests.integrations.examples import forked_example, wait_for_reports_and_stall
from tests.integrations.workers import purge_dramatiq, wait_for

pytest.importorskip("dramatiq")

pytestmark = pytest.mark.broker

REDIS_URL = "redis://127.0.0.1:6379/12"


def test_the_example_shows_its_stuck_actor(tmp_path: Path) -> None:
    queue = f"otel-jobs-test-dq-example-{uuid.uuid4().hex[:8]}"
    argv = [sys.executable, "run_worker.py", "tasks", "--processes", "2", "--threads", "2"]
    with forked_example(
        "dramatiq", argv, tmp_path, REDIS_URL, queue, purge_dramatiq, DRAMATIQ_QUEUE=queue
    ) as example:
        stuck = {"job_name": "wait_for_approval", "queue": queue}
        healthy = {"job_name": "send_report", "queue": queue}
        s = wait_for_reports_and_stall(example, healthy, stuck)
        assert s.value("otel_jobs_runs_started_total", **healthy) == 3
        assert s.value("otel_jobs_runs_in_progress", **stuck) == 1
        assert s.value("otel_jobs_stalls_detected_total", reason="no_heartbeat", **stuck) == 1
        assert s.value("otel_jobs_run_max_duration_seconds", **stuck) == 30
        assert s.value("otel_jobs_run_max_duration_seconds", **healthy) == 600
        log = example.log
        wait_for("the diagnosis in the log", lambda: "stalled" in log.read_text(), log=log)
        logged = log.read_text()
        assert "of wait_for_approval" in logged and "in wait_for_approval" in logged
        assert "BLPOP" in logged  # the outbound call without a timeout it is stuck in
