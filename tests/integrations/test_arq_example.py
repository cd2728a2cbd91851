"""examples/arq/ does what its README says: its worker on the real Redis, its enqueue script,
the stuck job seen on /metrics, then arq's timeout ending it."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.integrations.workers import start, stop, wait_for, worker_env
from tests.support import Samples, free_port, require_redis, scrape

pytestmark = pytest.mark.broker

ROOT = Path(__file__).parents[2]
EXAMPLE = ROOT / "examples/arq"


def test_the_example_shows_its_stuck_job_then_its_timeout(tmp_path: Path) -> None:
    require_redis()
    port = free_port()
    queue = f"otel-jobs-test-arq-example-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        OTEL_JOBS_PROMETHEUS_PORT=str(port),
        REDIS_URL="redis://127.0.0.1:6379/14",
        ARQ_QUEUE=queue,
        PYTHONPATH=os.pathsep.join([str(EXAMPLE), str(ROOT)]),
    )
    log = tmp_path / "worker.log"
    url = f"http://127.0.0.1:{port}/metrics"
    worker = start([sys.executable, "-m", "arq", "worker.WorkerSettings"], log, env, EXAMPLE)
    try:
        wait_for("the worker's /metrics", lambda: worker.poll() is None and scrape(url))
        subprocess.run([sys.executable, "enqueue.py"], cwd=EXAMPLE, env=env, check=True, timeout=60)
        stuck = {"job_name": "wait_for_approval", "queue": queue}

        def stalled() -> Samples | None:
            s = scrape(url)
            ready = (
                s.total("otel_jobs_runs_finished_total", job_name="send_report", outcome="success")
                == 3
                and s.total("otel_jobs_runs_stalled", **stuck) == 1
            )
            return s if ready else None

        s = wait_for("3 reports and the stalled verdict", stalled)
        assert s.value("otel_jobs_runs_in_progress", **stuck) == 1
        assert s.value("otel_jobs_run_max_duration_seconds", **stuck) == 30
        assert (
            s.value("otel_jobs_run_max_duration_seconds", job_name="send_report", queue=queue)
            == 120
        )
        assert "in wait_for_approval" in log.read_text()
        # arq's own timeout (30 s) ends it.
        wait_for(
            "the timeout",
            lambda: (
                scrape(url).value("otel_jobs_runs_finished_total", outcome="timeout", **stuck) == 1
            ),
        )
    finally:
        stop(worker)
        import redis

        client = redis.Redis(host="127.0.0.1", port=6379, db=14)
        client.delete(queue)
        client.close()
