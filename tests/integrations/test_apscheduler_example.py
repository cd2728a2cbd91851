"""examples/apscheduler/ does what its README says: run it, scrape it, stop it."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from tests.integrations.workers import start, stop, wait_for, worker_env
from tests.support import Samples, free_port, scrape

ROOT = Path(__file__).parents[2]


def test_the_example_shows_its_stuck_job_and_skipped_runs(tmp_path: Path) -> None:
    port = free_port()
    env = worker_env(OTEL_JOBS_PROMETHEUS_PORT=str(port), PYTHONPATH=str(ROOT))
    log = tmp_path / "example.log"
    proc = start([sys.executable, str(ROOT / "examples/apscheduler/scheduler.py")], log, env)
    url = f"http://127.0.0.1:{port}/metrics"
    try:

        def shown() -> Samples | None:
            s = scrape(url)
            job = {"job_name": "sync_inventory", "queue": "default"}
            ready = (
                s.total(
                    "otel_jobs_runs_finished_total", job_name="refresh_cache", outcome="success"
                )
                >= 1
                and s.total("otel_jobs_runs_stalled", **job) == 1
                and s.total("otel_jobs_runs_skipped_total", reason="max_instances", **job) >= 1
            )
            return s if ready else None

        s = wait_for("the stuck job and its skipped runs on /metrics", shown)
        assert (
            s.value("otel_jobs_runs_in_progress", job_name="sync_inventory", queue="default") == 1
        )
        assert s.total("otel_jobs_outbound_calls_without_timeout_total", library="urllib") >= 1
        assert "in sync_inventory" in log.read_text()
    finally:
        code = stop(proc, signal.SIGINT)
    assert code == 0, log.read_text()
