"""examples/arq/ does what its README says: its worker on the real Redis, its enqueue script,
the stuck job seen on /metrics, then arq's timeout ending it."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from tests.integrations.examples import example_running, wait_for_reports_and_stall
from tests.integrations.workers import stop, wait_for
from tests.support import require_redis, scrape

pytestmark = pytest.mark.broker


def test_the_example_shows_its_stuck_job_then_its_timeout(tmp_path: Path) -> None:
    require_redis()
    queue = f"otel-jobs-test-arq-example-{uuid.uuid4().hex[:8]}"
    try:
        with example_running(
            "arq",
            [sys.executable, "-m", "arq", "worker.WorkerSettings"],
            tmp_path / "worker.log",
            stop,
            REDIS_URL="redis://127.0.0.1:6379/14",
            ARQ_QUEUE=queue,
        ) as example:
            stuck = {"job_name": "wait_for_approval", "queue": queue}
            s = wait_for_reports_and_stall(example, {"job_name": "send_report"}, stuck)
            assert s.value("otel_jobs_runs_in_progress", **stuck) == 1
            assert s.value("otel_jobs_run_max_duration_seconds", **stuck) == 30
            assert (
                s.value("otel_jobs_run_max_duration_seconds", job_name="send_report", queue=queue)
                == 120
            )
            assert "in wait_for_approval" in example.log.read_text()
            # arq's own timeout (30 s) ends it.
            wait_for(
                "the timeout",
                lambda: (
                    scrape(example.url).value(
                        "otel_jobs_runs_finished_total", outcome="timeout", **stuck
                    )
                    == 1
                ),
            )
    finally:
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=14)
        client.delete(queue)
        client.close()
