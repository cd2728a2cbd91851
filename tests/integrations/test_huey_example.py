"""examples/huey/ does what its README says: its consumer (two forked workers) on the real Redis,
its enqueue script, the stuck task seen stalled on /metrics, then Huey's timeout ending it."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from tests.integrations.examples import forked_example, wait_for_reports_and_stall
from tests.integrations.workers import purge_huey, wait_for
from tests.support import scrape

pytest.importorskip("huey")

pytestmark = pytest.mark.broker

REDIS_URL = "redis://127.0.0.1:6379/13"


def test_the_example_shows_its_stuck_task_then_its_timeout(tmp_path: Path) -> None:
    name = f"otel-jobs-test-huey-example-{uuid.uuid4().hex[:8]}"
    consumer_bin = str(Path(sys.executable).parent / "huey_consumer")
    argv = [sys.executable, consumer_bin, "worker.huey", "-k", "process", "-w", "2"]
    with forked_example(
        "huey",
        argv,
        tmp_path,
        REDIS_URL,
        name,
        purge_huey,
        HUEY_NAME=name,
        APPROVAL_TIMEOUT="8",  # the README's 30 s, shortened; still after the 5 s stall
    ) as example:
        stuck = {"job_name": "tasks.wait_for_approval", "queue": name}
        healthy = {"job_name": "tasks.send_report", "queue": name}
        s = wait_for_reports_and_stall(example, healthy, stuck)
        assert s.value("otel_jobs_runs_in_progress", **stuck) == 1
        assert s.value("otel_jobs_stalls_detected_total", reason="no_heartbeat", **stuck) == 1
        assert s.value("otel_jobs_run_max_duration_seconds", **stuck) == 8
        assert s.value("otel_jobs_run_max_duration_seconds", **healthy) == 3600
        logged = example.log.read_text()
        assert "of tasks.wait_for_approval" in logged and "BLPOP" in logged
        # Huey's own timeout (SIGALRM in the worker process) ends it.
        s = wait_for(
            "the timeout",
            lambda: (
                (s := scrape(example.url)).total(
                    "otel_jobs_runs_finished_total", outcome="timeout", **stuck
                )
                == 1
                and s
            ),
            log=example.log,
        )
        assert s.value("otel_jobs_runs_in_progress", **stuck) == 0
        assert s.total("otel_jobs_runs_started_total", **stuck) == 1
